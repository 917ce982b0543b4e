using Vhostfsd.Tests;

namespace Vhostfsd.FuseMount.Tests;

/// <summary>Option combinations --fuse-mount refuses: one line on stderr, exit status 2, nothing mounted.</summary>
public sealed class CommandLineTests
{
    public static TheoryData<string[], string> Refused => new()
    {
        { ["--socket-path", "/tmp/vfm-x.sock"], "--socket-path is a vhost-user option; it does not apply with --fuse-mount" },
        { ["--fd", "3"], "--fd is a vhost-user option" },
        { ["--socket-group", "kvm"], "--socket-group is a vhost-user option" },
        { ["--tag", "share"], "--tag is a vhost-user option" },
        { ["--thread-pool-size", "4"], "--thread-pool-size is a vhost-user option" },
        { ["--poll-max-us", "10"], "--poll-max-us is a vhost-user option" },
        { ["--fuse-options", "allow_root"], "unknown --fuse-options word 'allow_root' (expected allow_other, default_permissions)" },
    };

    [Theory]
    [MemberData(nameof(Refused))]
    public void Vhost_user_options_and_unknown_fuse_options_are_refused(string[] extra, string message)
    {
        using var tree = new TempTree();
        string mountPoint = Path.Combine(tree.Root, "mnt");
        Directory.CreateDirectory(mountPoint);
        var (code, _, stderr) = DaemonProcess.Run(["--shared-dir", tree.Share, "--fuse-mount", mountPoint, .. extra]);
        Assert.Equal(2, code);
        Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Contains(message, stderr);
        Assert.False(MountedShare.IsFuseMount(mountPoint));
    }

    [Fact]
    public void Fuse_options_without_fuse_mount_are_refused()
    {
        using var tree = new TempTree();
        var (code, _, stderr) = DaemonProcess.Run(["--shared-dir", tree.Share, "--socket-path", tree.Socket, "--fuse-options", "allow_other"]);
        Assert.Equal(2, code);
        Assert.Contains("--fuse-options applies only with --fuse-mount MOUNTPOINT", stderr);
    }

    [Fact]
    public void A_mount_point_inside_the_share_or_above_it_is_refused()
    {
        using var tree = new TempTree();
        string inside = Path.Combine(tree.Share, "mnt");
        Directory.CreateDirectory(inside);
        foreach (var (mountPoint, message) in new[] { (inside, "is inside the shared directory"), (tree.Share, "is inside the shared directory"), (tree.Root, "the mount would hide the directory it serves") })
        {
            var (code, _, stderr) = DaemonProcess.Run(["--shared-dir", tree.Share, "--fuse-mount", mountPoint]);
            Assert.Equal(2, code);
            Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
            Assert.Contains(message, stderr);
            Assert.False(MountedShare.IsFuseMount(mountPoint));
        }
    }

    [Fact]
    public void A_mount_point_that_is_not_a_directory_fails_start_up_with_one_line()
    {
        using var tree = new TempTree();
        var (code, _, stderr) = DaemonProcess.Run(["--shared-dir", tree.Share, "--fuse-mount", tree.Outside]);
        Assert.Equal(1, code);
        Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.Contains($"--fuse-mount {tree.Outside} is not a directory", stderr);
    }
}
