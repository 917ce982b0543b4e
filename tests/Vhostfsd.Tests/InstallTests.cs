using System.Diagnostics;
using System.Text.Json;
using Vhostfsd.Posix;

namespace Vhostfsd.Tests;

/// <summary>"make install" into a scratch prefix, then the installed executable runs; the Debian
/// package, unpacked into a scratch root, holds the same files and its executable runs too.</summary>
public class InstallTests
{
    private static string RepositoryRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir != null && !File.Exists(Path.Combine(dir.FullName, "vhostfsd.sln")))
        {
            dir = dir.Parent;
        }
        Assert.True(dir != null, "vhostfsd.sln not found above " + AppContext.BaseDirectory);
        return dir!.FullName;
    }

    /// <summary>Release or Debug: the configuration this test assembly was built in.</summary>
    private static string Configuration() =>
        new DirectoryInfo(Path.TrimEndingDirectorySeparator(AppContext.BaseDirectory)).Parent!.Name;

    private static (int Code, string Output) Run(string file, string workingDirectory, params string[] args)
    {
        var start = new ProcessStartInfo(file, args)
        {
            WorkingDirectory = workingDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        using var process = Process.Start(start)!;
        var stderr = process.StandardError.ReadToEndAsync();
        string stdout = process.StandardOutput.ReadToEnd();
        Assert.True(process.WaitForExit(120_000), "timed out: " + file);
        return (process.ExitCode, stdout + stderr.Result);
    }

    /// <summary>The executable that ships is position-independent (ELF type ET_DYN), so ASLR moves
    /// its code: the daemon parses what a hostile guest sends. `make build FIXED_ADDRESS=1` trades
    /// that for memory on purpose (docs/performance.md); the default build must not.</summary>
    [Fact]
    public void The_shipped_executable_is_position_independent()
    {
        string path = Vhostfsd.Testing.NativeExecutable.Find();
        Span<byte> header = stackalloc byte[18];
        using (var file = File.OpenRead(path))
        {
            file.ReadExactly(header);
        }
        Assert.True(header[..4].SequenceEqual("\u007fELF"u8), path + " is not an ELF file");
        const ushort EtDyn = 3;
        Assert.Equal(EtDyn, System.Buffers.Binary.BinaryPrimitives.ReadUInt16LittleEndian(header[16..]));
    }

    [Fact]
    public void Make_install_puts_the_executable_the_descriptor_and_the_units_in_place()
    {
        using var tree = new TempTree();
        string prefix = Path.Combine(tree.Root, "usr");
        string descriptors = Path.Combine(tree.Root, "vhost-user");
        string units = Path.Combine(tree.Root, "systemd");
        // -o build -o restore: the solution is already built (this test runs from its output).
        var (code, output) = Run("make", RepositoryRoot(), "-o", "build", "-o", "restore", "install",
            "CONFIG=" + Configuration(), "PREFIX=" + prefix, "VHOST_USER_DIR=" + descriptors, "SYSTEMD_UNIT_DIR=" + units);
        Assert.True(code == 0, output);

        string launcher = Path.Combine(prefix, "bin", "vhostfsd");
        AssertNativeExecutable(launcher);
        // Only the executable: no runtime, no assemblies beside it.
        Assert.Equal(new[] { "bin" }, Directory.GetFileSystemEntries(prefix).Select(e => Path.GetFileName(e)!).ToArray());
        Assert.Equal(new[] { "vhostfsd" }, Directory.GetFileSystemEntries(Path.Combine(prefix, "bin")).Select(e => Path.GetFileName(e)!).ToArray());

        using var descriptor = JsonDocument.Parse(File.ReadAllText(Path.Combine(descriptors, "50-vhostfsd.json")));
        Assert.Equal("fs", descriptor.RootElement.GetProperty("type").GetString());
        Assert.Equal(launcher, descriptor.RootElement.GetProperty("binary").GetString());
        Assert.False(string.IsNullOrWhiteSpace(descriptor.RootElement.GetProperty("description").GetString()));

        string service = File.ReadAllText(Path.Combine(units, "vhostfsd@.service"));
        Assert.Contains($"ExecStart={launcher} --fd=3 ", service);
        Assert.Contains("ListenStream=/run/vhostfsd/%i.sock", File.ReadAllText(Path.Combine(units, "vhostfsd@.socket")));

        // The installed executable works with an empty environment (libvirt gives a minimal one).
        var capabilities = Run("/usr/bin/env", tree.Root, "-i", launcher, "--print-capabilities");
        Assert.True(capabilities.Code == 0, capabilities.Output);
        using var json = JsonDocument.Parse(capabilities.Output);
        Assert.Equal("fs", json.RootElement.GetProperty("type").GetString());

        // And it serves from the namespace sandbox, which re-runs the installed program.
        var start = new ProcessStartInfo(launcher, ["--socket-path", tree.Socket, "--shared-dir", tree.Share])
        {
            RedirectStandardError = true,
        };
        using var daemon = Process.Start(start)!;
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        string log = "";
        var reader = daemon.StandardError;
        while (!log.Contains("waiting for the vhost-user front-end") && DateTime.UtcNow < deadline)
        {
            string? line = reader.ReadLine();
            if (line == null)
            {
                break;
            }
            log += line + "\n";
        }
        Assert.Contains("sandbox namespace", log);
        Assert.Equal(0, Libc.Kill(daemon.Id, Libc.SIGTERM));
        Assert.True(daemon.WaitForExit(30_000));
        Assert.Equal(0, daemon.ExitCode);
    }

    [Fact]
    public void The_debian_package_installs_a_working_daemon_into_a_scratch_root()
    {
        using var tree = new TempTree();
        string debs = Path.Combine(tree.Root, "debs");
        var (code, output) = Run("/usr/bin/env", RepositoryRoot(), "CONFIG=" + Configuration(), "packaging/deb.sh", debs);
        Assert.True(code == 0, output);
        string deb = output.Trim().Split('\n')[^1];
        Assert.True(File.Exists(deb), output);

        var fields = Run("dpkg-deb", tree.Root, "--field", deb, "Package", "Version", "Depends");
        Assert.True(fields.Code == 0, fields.Output);
        Assert.Contains("Package: vhostfsd", fields.Output);
        // No .NET runtime among the dependencies: the executable needs only the C library.
        Assert.Contains("Depends: libc6", fields.Output);
        Assert.DoesNotContain("dotnet", fields.Output);

        string root = Path.Combine(tree.Root, "root");
        var unpack = Run("dpkg-deb", tree.Root, "--extract", deb, root);
        Assert.True(unpack.Code == 0, unpack.Output);
        string executable = Path.Combine(root, "usr", "bin", "vhostfsd");
        AssertNativeExecutable(executable);

        using var descriptor = JsonDocument.Parse(File.ReadAllText(Path.Combine(root, "usr", "share", "qemu", "vhost-user", "50-vhostfsd.json")));
        Assert.Equal("/usr/bin/vhostfsd", descriptor.RootElement.GetProperty("binary").GetString());
        string units = Path.Combine(root, "usr", "lib", "systemd", "system");
        Assert.Contains("ExecStart=/usr/bin/vhostfsd --fd=3 ", File.ReadAllText(Path.Combine(units, "vhostfsd@.service")));
        Assert.True(File.Exists(Path.Combine(units, "vhostfsd@.socket")));
        Assert.True(new FileInfo(Path.Combine(root, "usr", "share", "man", "man1", "vhostfsd.1.gz")).Length > 500);

        var version = Run("/usr/bin/env", tree.Root, "-i", executable, "--version");
        Assert.True(version.Code == 0, version.Output);
        Assert.Matches(@"^vhostfsd \d+\.\d+\.\d+", version.Output);
        Assert.Contains(version.Output.Split(' ')[1].Trim(), fields.Output);

        var capabilities = Run("/usr/bin/env", tree.Root, "-i", executable, "--print-capabilities");
        Assert.True(capabilities.Code == 0, capabilities.Output);
        using var json = JsonDocument.Parse(capabilities.Output);
        Assert.Equal("fs", json.RootElement.GetProperty("type").GetString());
    }

    /// <summary>An ELF executable (not a script that starts a runtime).</summary>
    private static void AssertNativeExecutable(string path)
    {
        Assert.True(File.Exists(path), path + " is missing");
        Assert.True((File.GetUnixFileMode(path) & UnixFileMode.UserExecute) != 0, path + " is not executable");
        byte[] magic = new byte[4];
        using (var stream = File.OpenRead(path))
        {
            stream.ReadExactly(magic);
        }
        Assert.Equal("\u007fELF"u8.ToArray(), magic);
    }
}
