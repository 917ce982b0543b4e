using System.Diagnostics;

namespace Vhostfsd.FuseMount.Tests;

/// <summary>An unprivileged host user (nobody, uid/gid 65534) writing through an allow_other mount
/// loses the set-id bits as a local write would.</summary>
public sealed class KillSuidgidTests
{
    private const int Nobody = 65534;

    /// <summary>A member of a file's group who may write a setuid-root executable must not be able to
    /// replace its contents and keep it setuid (a local write by a caller without CAP_FSETID clears
    /// S_ISUID). With direct I/O (--cache never or metadata) the host kernel does not clear it
    /// itself: it marks each WRITE FUSE_WRITE_KILL_SUIDGID. When the daemon honoured the flag only
    /// with --killpriv-v2, it wrote as root (CAP_FSETID) and the bit stayed; the mount is nosuid, but
    /// the share is a host directory, where the file was then a setuid-root binary with the
    /// attacker's contents.</summary>
    [Theory]
    [InlineData("never")]
    [InlineData("metadata")]
    public void A_group_member_overwriting_a_setuid_root_file_through_the_mount_clears_setuid(string cache)
    {
        using var m = MountedShare.Start(["--fuse-options", "allow_other", "--cache", cache], share =>
        {
            string tool = Path.Combine(share, "tool");
            File.WriteAllText(tool, "#!/bin/sh\necho original\n");
            Assert.Equal(0, Run("chown", "0:" + Nobody, tool).Code);
            File.SetUnixFileMode(tool, (UnixFileMode)Convert.ToInt32("4775", 8));
        });

        var (code, output) = AsNobody("sh", "-c", "printf 'attacker payload\\n' > " + m.InMount("tool"));
        Assert.True(code == 0, output);
        Assert.Equal("attacker payload\n", File.ReadAllText(m.InShare("tool")));
        // A local write by the same user would have cleared it.
        Assert.True((File.GetUnixFileMode(m.InShare("tool")) & UnixFileMode.SetUser) == 0,
            "S_ISUID kept on a root-owned file whose contents user nobody replaced: " + File.GetUnixFileMode(m.InShare("tool")));
    }

    private static (int Code, string Output) AsNobody(params string[] command) =>
        Run(["setpriv", "--reuid", "65534", "--regid", "65534", "--clear-groups", .. command]);

    private static (int Code, string Output) Run(params string[] command)
    {
        var start = new ProcessStartInfo(command[0]) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (string arg in command[1..])
        {
            start.ArgumentList.Add(arg);
        }
        using var process = Process.Start(start)!;
        var stderr = process.StandardError.ReadToEndAsync();
        string output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        return (process.ExitCode, output + stderr.Result);
    }
}
