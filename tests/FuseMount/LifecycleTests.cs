using System.Diagnostics;
using Vhostfsd.Posix;

namespace Vhostfsd.FuseMount.Tests;

/// <summary>How a --fuse-mount daemon ends: on a signal it unmounts and exits 0; when the mount is
/// removed from outside it sees that and exits 0; in every sandbox mode.</summary>
public sealed class LifecycleTests
{
    [Theory]
    [InlineData("namespace")]
    [InlineData("chroot")]
    [InlineData("none")]
    public void Sigterm_unmounts_and_exits_zero_in_every_sandbox_mode(string sandbox)
    {
        using var m = MountedShare.Start(["--sandbox", sandbox], share => File.WriteAllText(Path.Combine(share, "inside.txt"), "inside\n"));
        Assert.True(m.IsMounted);
        Assert.Equal("inside\n", File.ReadAllText(m.InMount("inside.txt")));
        File.WriteAllText(m.InMount("written.txt"), sandbox);
        Assert.Equal(sandbox, File.ReadAllText(m.InShare("written.txt")));
        // The process that reads the host's requests has the default system-call filter on every thread.
        int serving = ServingPid(m.Daemon.Pid);
        foreach (string task in Directory.GetDirectories($"/proc/{serving}/task"))
        {
            Assert.Contains("Seccomp:\t2", File.ReadAllText(Path.Combine(task, "status")));
        }

        Assert.Equal(0, m.Stop());
        Assert.False(m.IsMounted);
        Assert.Contains("Unmounted " + m.MountPoint + " on SIGTERM", m.Daemon.Stderr);
        Assert.DoesNotContain("ERR]", m.Daemon.Stderr);
    }

    [Fact]
    public void Fusermount_u_from_outside_ends_the_daemon_with_zero()
    {
        using var m = MountedShare.Start([]);
        Run("fusermount3", "-u", m.MountPoint);
        Assert.Equal(0, m.Daemon.WaitForExit());
        Assert.False(m.IsMounted);
        Assert.Contains("The file system was unmounted", m.Daemon.Stderr);
    }

    [Fact]
    public void Sigterm_while_a_file_is_open_on_the_mount_still_exits_and_the_file_fails_with_ENOTCONN()
    {
        using var m = MountedShare.Start([], share => File.WriteAllText(Path.Combine(share, "held.txt"), "held"));
        using var held = new FileStream(m.InMount("held.txt"), FileMode.Open, FileAccess.Read);
        var started = Stopwatch.StartNew();
        Assert.Equal(0, m.Stop());
        Assert.True(started.Elapsed < TimeSpan.FromSeconds(15), $"took {started.Elapsed}");
        Assert.False(m.IsMounted);
        // The detached mount stays only for this open file, and its connection is gone.
        var error = Assert.ThrowsAny<IOException>(() => held.ReadByte());
        Assert.Contains("not connected", error.Message, StringComparison.OrdinalIgnoreCase);
    }

    [Fact]
    public void Readers_allocate_nothing_per_request_once_warmed_up()
    {
        using var m = MountedShare.Start(["--cache", "never"], share =>
        {
            for (int i = 0; i < 100; i++)
            {
                File.WriteAllText(Path.Combine(share, $"f{i}"), "content");
            }
        });
        // LOOKUP + GETATTR per stat (no cache), and OPEN, READ, FLUSH, RELEASE, CREATE, WRITE, UNLINK.
        for (int round = 0; round < 60; round++)
        {
            for (int i = 0; i < 100; i++)
            {
                Assert.True(File.Exists(m.InMount($"f{i}")));
            }
            Assert.Equal("content", File.ReadAllText(m.InMount($"f{round}")));
            File.WriteAllText(m.InMount($"new{round}"), "new");
            File.Delete(m.InMount($"new{round}"));
        }
        Assert.Equal(0, m.Stop());
        var counts = System.Text.RegularExpressions.Regex.Match(m.Daemon.Stderr, @"Readers allocated (\d+) bytes over (\d+) requests");
        Assert.True(counts.Success, m.Daemon.Stderr);
        long bytes = long.Parse(counts.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
        long requests = long.Parse(counts.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture);
        Assert.True(requests > 5000, $"only {requests} requests after the warm-up");
        // A spare reader started late costs its thread once; nothing grows with the requests.
        Assert.True(bytes < 16 * 1024, $"{bytes} bytes allocated over {requests} requests");
    }

    [Fact]
    public void Readonly_mounts_read_only_and_refuses_changes()
    {
        using var m = MountedShare.Start(["--readonly"], share => File.WriteAllText(Path.Combine(share, "kept.txt"), "kept"));
        Assert.Equal("kept", File.ReadAllText(m.InMount("kept.txt")));
        var error = Assert.ThrowsAny<IOException>(() => File.WriteAllText(m.InMount("new.txt"), "no"));
        Assert.Contains("read-only", error.Message, StringComparison.OrdinalIgnoreCase);
        Assert.False(File.Exists(m.InShare("new.txt")));
    }

    [Fact]
    public void Without_allow_other_only_the_mounting_user_gets_in()
    {
        using (var m = MountedShare.Start([]))
        {
            var (code, output) = RunAsNobody("stat", m.MountPoint);
            Assert.NotEqual(0, code);
            Assert.Contains("Permission denied", output);
        }
        using (var m = MountedShare.Start(["--fuse-options", "allow_other,default_permissions"]))
        {
            var (code, output) = RunAsNobody("stat", "-c", "%F", m.MountPoint);
            Assert.True(code == 0, output);
            Assert.Contains("directory", output);
        }
    }

    /// <summary>The daemon acts with the caller's ids only where it creates an entry; every other
    /// call (open, write, chmod, chown, unlink, rename, setxattr) runs with the daemon's own
    /// rights, as in the virtio mode, where the guest kernel checks permissions first. On a mount
    /// that other users may enter, the host kernel must therefore check them too: with
    /// allow_other alone, user nobody read a root-only file, wrote a root-owned 0644 file, made it
    /// setuid and removed a file from a root-owned 0755 directory.</summary>
    [Fact]
    public void With_allow_other_other_users_are_held_to_the_file_modes()
    {
        using var m = MountedShare.Start(["--fuse-options", "allow_other"], share =>
        {
            File.WriteAllText(Path.Combine(share, "secret"), "secret\n");
            File.SetUnixFileMode(Path.Combine(share, "secret"), UnixFileMode.UserRead | UnixFileMode.UserWrite);
            File.WriteAllText(Path.Combine(share, "public"), "public\n");
            File.SetUnixFileMode(Path.Combine(share, "public"), (UnixFileMode)0x1A4);
            Directory.CreateDirectory(Path.Combine(share, "rootdir"));
            File.SetUnixFileMode(Path.Combine(share, "rootdir"), (UnixFileMode)0x1ED);
            File.WriteAllText(Path.Combine(share, "rootdir", "keep"), "keep\n");
        });

        var (code, output) = RunAsNobody("cat", m.InMount("secret"));
        Assert.True(code != 0 && !output.StartsWith("secret", StringComparison.Ordinal), output);
        (code, output) = RunAsNobody("sh", "-c", "echo owned >> " + m.InMount("public"));
        Assert.True(code != 0, output);
        (code, output) = RunAsNobody("chmod", "4777", m.InMount("public"));
        Assert.True(code != 0, output);
        (code, output) = RunAsNobody("rm", "-f", m.InMount("rootdir/keep"));
        Assert.True(code != 0, output);

        Assert.Equal("public\n", File.ReadAllText(m.InShare("public")));
        Assert.Equal((UnixFileMode)0x1A4, File.GetUnixFileMode(m.InShare("public")));
        Assert.True(File.Exists(m.InShare("rootdir/keep")));
        // What the mount is for still works: nobody reads what is readable.
        (code, output) = RunAsNobody("cat", m.InMount("public"));
        Assert.True(code == 0 && output == "public\n", output);
        Assert.Contains("default_permissions", File.ReadAllText("/proc/self/mountinfo").Split('\n').Single(l => l.Contains(" " + m.MountPoint + " ")));
    }

    /// <summary>default_permissions alone checks the mode bits: without POSIX ACLs granted at INIT
    /// the kernel sees no ACL, so a user an ACL entry shuts out of a 0644 file read it through the
    /// mount (the daemon reads as root). allow_other therefore also turns ACL support on.</summary>
    [Fact]
    public void With_allow_other_an_acl_that_shuts_a_user_out_holds_on_the_mount()
    {
        using var m = MountedShare.Start(["--fuse-options", "allow_other"], share =>
        {
            string file = Path.Combine(share, "not-for-nobody");
            File.WriteAllText(file, "kept from nobody\n");
            File.SetUnixFileMode(file, (UnixFileMode)0x1A4);
            Run("setfacl", "-m", "u:nobody:---", file);
            File.WriteAllText(Path.Combine(share, "for-all"), "readable\n");
            File.SetUnixFileMode(Path.Combine(share, "for-all"), (UnixFileMode)0x1A4);
        });

        var (code, output) = RunAsNobody("cat", m.InMount("not-for-nobody"));
        Assert.True(code != 0 && output.Contains("Permission denied", StringComparison.Ordinal), output);
        (code, output) = RunAsNobody("cat", m.InMount("for-all"));
        Assert.True(code == 0 && output == "readable\n", output);
    }

    private static (int Code, string Output) RunAsNobody(params string[] command)
    {
        var start = new ProcessStartInfo("setpriv") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string arg in (string[])["--reuid", "65534", "--regid", "65534", "--clear-groups", .. command])
        {
            start.ArgumentList.Add(arg);
        }
        using var process = Process.Start(start)!;
        string output = process.StandardOutput.ReadToEnd() + process.StandardError.ReadToEnd();
        process.WaitForExit();
        return (process.ExitCode, output);
    }

    internal static void Run(string file, params string[] args)
    {
        var start = new ProcessStartInfo(file) { RedirectStandardError = true, UseShellExecute = false };
        foreach (string arg in args)
        {
            start.ArgumentList.Add(arg);
        }
        using var process = Process.Start(start)!;
        string error = process.StandardError.ReadToEnd();
        process.WaitForExit();
        Assert.True(process.ExitCode == 0, $"{file} {string.Join(' ', args)} failed ({process.ExitCode}): {error}");
    }

    /// <summary>The process the supervisor spawned (a child of one of its threads).</summary>
    private static int ServingPid(int supervisor)
    {
        foreach (string task in Directory.GetDirectories($"/proc/{supervisor}/task"))
        {
            string children = File.ReadAllText(Path.Combine(task, "children")).Trim();
            if (children.Length > 0)
            {
                return int.Parse(children.Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture);
            }
        }
        throw new InvalidOperationException($"vhostfsd {supervisor} has no serving process");
    }
}
