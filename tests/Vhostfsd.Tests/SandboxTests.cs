using System.Globalization;
using System.Text.RegularExpressions;
using Vhostfsd.Hosting;
using Vhostfsd.Posix;
using Vhostfsd.FusePassthrough;

namespace Vhostfsd.Tests;

/// <summary>What each --sandbox mode leaves reachable, shown by the daemon itself through its
/// VHOSTFSD_TEST_PROBE hook (it tries to open the given paths after its set-up and logs the
/// outcome), plus what the host sees of the sandboxed process.</summary>
public class SandboxTests
{
    private static DaemonProcess StartProbing(TempTree tree, string sandbox, params string[] extra)
    {
        string probes = string.Join(';', tree.Outside, Path.Combine(tree.Share, "inside.txt"), "/inside.txt", "/etc/hostname", "/proc/1/root");
        var daemon = DaemonProcess.Start(
            ["--socket-path", tree.Socket, "--shared-dir", tree.Share, "--sandbox=" + sandbox, "--log-level=debug", .. extra],
            new Dictionary<string, string?> { [TestProbe.Environment] = probes });
        daemon.WaitForLine("waiting for the vhost-user front-end");
        return daemon;
    }

    private static bool Reachable(DaemonProcess daemon, string path)
    {
        string line = daemon.WaitForLine($"test-probe: path {path} ");
        Assert.True(line.Contains(" reachable") || line.Contains(" unreachable"), line);
        return !line.Contains("unreachable");
    }

    private static Match ProbeSummary(DaemonProcess daemon)
    {
        Assert.Contains("test-probe: reopen through ProcSelfFd ok", daemon.Stderr);
        Assert.Contains("test-probe: runtime services ok", daemon.Stderr);
        var match = Regex.Match(daemon.Stderr, @"test-probe: pid (\d+) euid (\d+) effective-caps 0x([0-9a-f]+) bounding-caps 0x([0-9a-f]+) rlimit-nofile (\d+) shared-root (\S+)");
        Assert.True(match.Success, daemon.Stderr);
        return match;
    }

    private static ulong Hex(Group group) => ulong.Parse(group.Value, NumberStyles.HexNumber, CultureInfo.InvariantCulture);

    private static void Stop(DaemonProcess daemon, TempTree tree)
    {
        daemon.Signal(Libc.SIGTERM);
        Assert.Equal(0, daemon.WaitForExit());
        Assert.False(File.Exists(tree.Socket));
        Assert.DoesNotContain("ERR]", daemon.Stderr);
    }

    /// <summary>Reads every thread's capability sets from the host's /proc: the main thread must
    /// hold exactly <paramref name="main"/>, every other thread at most <paramref name="others"/>.</summary>
    private static void AssertThreadCapabilities(string pid, ulong main, ulong others)
    {
        string[] threads = Directory.GetDirectories($"/proc/{pid}/task");
        Assert.True(threads.Length > 1, "a .NET process has several threads");
        foreach (string thread in threads)
        {
            string status = File.ReadAllText(Path.Combine(thread, "status"));
            bool isMain = Path.GetFileName(thread) == pid;
            foreach (string set in new[] { "CapEff", "CapPrm", "CapBnd" })
            {
                var value = Regex.Match(status, set + @":\s+([0-9a-f]+)");
                Assert.True(value.Success);
                ulong mask = Hex(value.Groups[1]);
                Assert.True(isMain ? mask == main : (mask & ~others) == 0, $"{thread} {set} {value.Groups[1].Value}");
            }
        }
    }

    private static readonly ulong DefaultKept = Capabilities.KeptMask(InodeFileHandles.Prefer, null);

    [Fact]
    public void Namespace_sandbox_hides_everything_outside_the_share()
    {
        using var tree = new TempTree();
        var hostMounts = MountsTheSandboxCouldTouch(tree);
        using var daemon = StartProbing(tree, "namespace");

        Assert.False(Reachable(daemon, tree.Outside));
        Assert.False(Reachable(daemon, Path.Combine(tree.Share, "inside.txt")));
        Assert.False(Reachable(daemon, "/etc/hostname"));
        Assert.False(Reachable(daemon, "/proc/1/root"));
        Assert.True(Reachable(daemon, "/inside.txt"));
        var summary = ProbeSummary(daemon);
        Assert.Equal("1", summary.Groups[1].Value); // pid 1 of its own pid namespace
        Assert.Equal("/", summary.Groups[6].Value);
        Assert.Equal(DefaultKept, Hex(summary.Groups[3]));
        Assert.Equal(DefaultKept, Hex(summary.Groups[4]));

        // From the host: the serving process's root is the share, its namespaces are new, and
        // every one of its threads — the runtime's own included — holds only the kept capabilities.
        Assert.Contains("in new mount, pid and network namespaces", daemon.Stderr);
        string pid = daemon.ServingPid().ToString(CultureInfo.InvariantCulture);
        Assert.Equal("inside\n", File.ReadAllText($"/proc/{pid}/root/inside.txt"));
        Assert.False(Directory.Exists($"/proc/{pid}/root/etc"));
        foreach (string ns in new[] { "mnt", "pid", "net" })
        {
            Assert.NotEqual(new FileInfo($"/proc/self/ns/{ns}").LinkTarget, new FileInfo($"/proc/{pid}/ns/{ns}").LinkTarget);
        }
        AssertThreadCapabilities(pid, DefaultKept, DefaultKept);
        // Nothing the sandbox mounted (the share bound onto itself, /proc, the pivoted root) shows up
        // on the host, and nothing of the host's there was unmounted.
        Assert.Equal(hostMounts, MountsTheSandboxCouldTouch(tree));
        Stop(daemon, tree);
    }

    /// <summary>The host's mount table lines whose mount point is /, /proc or inside the test's tree:
    /// the only places the namespace sandbox mounts, binds or pivots. Other lines are left out
    /// because test classes running meanwhile (in this process or another) mount and unmount
    /// their own directories.</summary>
    private static List<string> MountsTheSandboxCouldTouch(TempTree tree) =>
        File.ReadAllLines("/proc/self/mountinfo")
            .Where(line =>
            {
                string mountPoint = line.Split(' ')[4];
                return mountPoint is "/" or "/proc" || mountPoint == tree.Root || mountPoint.StartsWith(tree.Root + "/", StringComparison.Ordinal);
            })
            .ToList();

    [Fact]
    public void Chroot_sandbox_hides_everything_outside_the_share()
    {
        using var tree = new TempTree();
        using var daemon = StartProbing(tree, "chroot");
        Assert.False(Reachable(daemon, tree.Outside));
        Assert.False(Reachable(daemon, Path.Combine(tree.Share, "inside.txt")));
        Assert.False(Reachable(daemon, "/etc/hostname"));
        Assert.True(Reachable(daemon, "/inside.txt"));
        var summary = ProbeSummary(daemon);
        string pid = daemon.ServingPid().ToString(CultureInfo.InvariantCulture);
        Assert.Equal(pid, summary.Groups[1].Value);
        Assert.NotEqual(daemon.Pid.ToString(CultureInfo.InvariantCulture), pid);
        Assert.Equal("/", summary.Groups[6].Value);
        Assert.Equal(DefaultKept, Hex(summary.Groups[3]));
        Assert.Equal(DefaultKept, Hex(summary.Groups[4]));
        Assert.Equal(tree.Share, new DirectoryInfo($"/proc/{pid}/root").LinkTarget);
        // The copy was spawned with CAP_SYS_CHROOT and CAP_SETPCAP for its chroot and dropped
        // them on its main thread; threads the runtime started before keep at most those two.
        AssertThreadCapabilities(pid, DefaultKept, DefaultKept | (1UL << Capabilities.SysChroot) | (1UL << Capabilities.Setpcap));
        Stop(daemon, tree);
    }

    [Fact]
    public void No_sandbox_isolates_nothing_but_still_reopens_through_proc()
    {
        using var tree = new TempTree();
        using var daemon = StartProbing(tree, "none");
        // Without a sandbox the host is visible; the file system's own *at() walking is the only fence.
        Assert.True(Reachable(daemon, tree.Outside));
        Assert.True(Reachable(daemon, Path.Combine(tree.Share, "inside.txt")));
        Assert.False(Reachable(daemon, "/inside.txt"));
        var summary = ProbeSummary(daemon);
        Assert.Equal(tree.Share, summary.Groups[6].Value);
        Assert.Equal(DefaultKept, Hex(summary.Groups[3]));
        string pid = daemon.ServingPid().ToString(CultureInfo.InvariantCulture);
        Assert.Equal(pid, summary.Groups[1].Value);
        AssertThreadCapabilities(pid, DefaultKept, DefaultKept);
        Stop(daemon, tree);
    }

    [Fact]
    public void Modcaps_and_inode_file_handles_shape_the_kept_set()
    {
        using var tree = new TempTree();
        using var daemon = StartProbing(tree, "namespace", "--inode-file-handles=never", "--modcaps=-mknod:+sys_nice");
        ulong expected = Capabilities.KeptMask(InodeFileHandles.Never, "-mknod:+sys_nice");
        Assert.Equal(0UL, expected & (1UL << Capabilities.Mknod));
        Assert.Equal(0UL, expected & (1UL << Capabilities.DacReadSearch));
        var summary = ProbeSummary(daemon);
        Assert.Equal(expected, Hex(summary.Groups[3]));
        Assert.Equal(expected, Hex(summary.Groups[4]));
        Stop(daemon, tree);
    }

    [Fact]
    public void Rlimit_nofile_is_applied()
    {
        using var tree = new TempTree();
        using var daemon = StartProbing(tree, "none", "--rlimit-nofile=4096");
        Assert.Equal("4096", ProbeSummary(daemon).Groups[5].Value);
        Stop(daemon, tree);
    }

    [Fact]
    public void A_namespace_sandbox_on_a_missing_share_fails_with_one_line()
    {
        using var tree = new TempTree();
        var (code, _, stderr) = DaemonProcess.Run(["--socket-path", tree.Socket, "--shared-dir", tree.Share + "/missing"]);
        Assert.Equal(1, code);
        Assert.Contains("does not exist", stderr);
        Assert.False(File.Exists(tree.Socket));
        Assert.False(File.Exists(tree.PidFile));
    }
}
