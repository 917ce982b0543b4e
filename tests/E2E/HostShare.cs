using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;

namespace Vhostfsd.E2E;

/// <summary>The host side of the suite: the files scripts/e2e/guest/suite.sh expects to
/// find, and the checks of what it leaves behind.</summary>
public static class HostShare
{
    public const string HelloText = "hello from the host\n";
    public const string NestedText = "nested file\n";
    public const int RandomFileSize = 256 * 1024;

    /// <summary>Fills an empty directory with the files the guest suite reads.</summary>
    public static void Prepare(string dir)
    {
        var hello = Path.Combine(dir, "hello.txt");
        File.WriteAllText(hello, HelloText);
        File.SetUnixFileMode(hello, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.GroupRead);
        Directory.CreateDirectory(Path.Combine(dir, "sub", "dir"));
        File.WriteAllText(Path.Combine(dir, "sub", "dir", "nested.txt"), NestedText);
        var random = new byte[RandomFileSize];
        RandomNumberGenerator.Fill(random);
        File.WriteAllBytes(Path.Combine(dir, "random.bin"), random);

        var manifest = new StringBuilder();
        foreach (var name in new[] { "hello.txt", "sub/dir/nested.txt", "random.bin" })
        {
            manifest.Append(Md5Of(Path.Combine(dir, name))).Append("  ").Append(name).Append('\n');
        }
        File.WriteAllText(Path.Combine(dir, "manifest.md5"), manifest.ToString());

        // Read by the guest in the xattr step; harmless when xattrs are off.
        RunTool("setfattr", "-n", "user.host", "-v", "host-value", hello);
    }

    /// <summary>Everything that differs from what a successful suite leaves on the host;
    /// empty when the share is as expected.</summary>
    public static List<string> CheckAfterSuite(string dir, GuestConsole console, bool xattr)
    {
        var problems = new List<string>();
        void Expect(bool ok, string problem)
        {
            if (!ok)
            {
                problems.Add(problem);
            }
        }
        string P(string relative) => Path.Combine(dir, relative);
        string? Text(string relative) => File.Exists(P(relative)) ? File.ReadAllText(P(relative)) : null;

        Expect(Text("hello.txt") == HelloText, "hello.txt changed on the host");
        Expect(Text("from-guest.txt") == "written by the guest\nappended line\n",
            $"from-guest.txt on the host holds {Quote(Text("from-guest.txt"))}");

        var big = P("big.bin");
        if (!File.Exists(big))
        {
            problems.Add("big.bin is missing on the host");
        }
        else
        {
            Expect(new FileInfo(big).Length == 16 << 20, $"big.bin is {new FileInfo(big).Length} bytes on the host, not 16 MiB");
            var hostSum = Md5Of(big);
            Expect(console.Md5.TryGetValue("big.bin", out var guestSum) && guestSum == hostSum,
                $"big.bin md5 differs: host {hostSum}, guest {(guestSum ?? "(not reported)")}");
        }

        Expect(Text("kept/moved.txt") == "move me\n", $"kept/moved.txt holds {Quote(Text("kept/moved.txt"))}");
        Expect(Text("kept/renamed-dir/inner.txt") == "inner\n", "kept/renamed-dir/inner.txt is missing or wrong");
        Expect(Directory.Exists(P("kept/renamed-dir/c")), "kept/renamed-dir/c is missing");
        Expect(Text("kept/target.txt") == "new\n", $"kept/target.txt holds {Quote(Text("kept/target.txt"))}");
        Expect(!File.Exists(P("kept/source.txt")), "kept/source.txt survived the rename over target.txt");
        Expect(!Path.Exists(P("kept/a")), "kept/a survived rm -r");
        Expect(!Path.Exists(P("doomed")), "doomed/ survived rm -r");
        Expect(!Path.Exists(P("many")), "many/ survived the create + delete of 1,000 files");

        var link = new FileInfo(P("kept/link"));
        Expect(link.LinkTarget == "../hello.txt", $"kept/link points at {Quote(link.LinkTarget)}");
        Expect(new FileInfo(P("kept/dangling")).LinkTarget == "/nonexistent/target", "kept/dangling is not the symlink the guest made");

        if (File.Exists(P("kept/mode-751")))
        {
            var mode = File.GetUnixFileMode(P("kept/mode-751"));
            Expect(mode == (UnixFileMode)0b111_101_001, $"kept/mode-751 has mode {Convert.ToString((int)mode, 8)} on the host");
        }
        else
        {
            problems.Add("kept/mode-751 is missing");
        }

        Expect(Text("kept/truncated") == "abc", $"kept/truncated holds {Quote(Text("kept/truncated"))}");
        Expect(File.Exists(P("kept/extended")) && new FileInfo(P("kept/extended")).Length == 1 << 20,
            "kept/extended is not 1 MiB on the host");

        if (xattr)
        {
            var value = RunTool("getfattr", "--only-values", "-n", "user.e2e", P("kept/xattr.txt"));
            Expect(value == "guest-value", $"user.e2e of kept/xattr.txt on the host is {Quote(value)}");
        }
        return problems;
    }

    private static string Md5Of(string path)
    {
        using var stream = File.OpenRead(path);
        return Convert.ToHexStringLower(MD5.HashData(stream));
    }

    private static string Quote(string? s) => s is null ? "(missing)" : "\"" + s.Replace("\n", "\\n") + "\"";

    /// <summary>Runs a host tool (package attr) and returns its stdout; throws with its
    /// stderr when it fails.</summary>
    private static string RunTool(string tool, params string[] args)
    {
        var psi = new ProcessStartInfo(tool) { RedirectStandardOutput = true, RedirectStandardError = true };
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }
        using var p = Process.Start(psi) ?? throw new InvalidOperationException($"cannot start {tool}");
        var stderr = p.StandardError.ReadToEndAsync();
        var stdout = p.StandardOutput.ReadToEnd();
        if (!p.WaitForExit(30_000))
        {
            p.Kill();
            throw new TimeoutException($"{tool} did not finish in 30 s");
        }
        if (p.ExitCode != 0)
        {
            throw new InvalidOperationException($"{tool} {string.Join(' ', args)} failed ({p.ExitCode}): {stderr.Result.Trim()} (package attr installed? scripts/install-deps.sh)");
        }
        return stdout;
    }
}
