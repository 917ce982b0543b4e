using System.Globalization;
using Vhostfsd.FuseProtocol;
using Vhostfsd.GuestKernelShim;
using Vhostfsd.Hardening.Support;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Xunit;

namespace Vhostfsd.Hardening;

/// <summary>A guest must gain no privilege on the host: each test starts a real daemon the way an
/// operator might (from a shell that holds supplementary groups, say), sends what a hostile guest
/// sends, and checks the host's state.</summary>
[Trait("Category", "Hardening")]
public sealed class PrivilegeTests : IDisposable
{
    private readonly string _share;

    public PrivilegeTests()
    {
        _share = Directory.CreateTempSubdirectory("vhostfsd-privilege-").FullName;
    }

    public void Dispose() => Directory.Delete(_share, recursive: true);

    private static uint[] Groups(string statusPath)
    {
        string line = File.ReadAllLines(statusPath).First(l => l.StartsWith("Groups:", StringComparison.Ordinal));
        return line["Groups:".Length..].Split([' ', '\t'], StringSplitOptions.RemoveEmptyEntries)
            .Select(g => uint.Parse(g, CultureInfo.InvariantCulture)).ToArray();
    }

    /// <summary>CVE-2022-0358's class, end to end: started with supplementary group 0 (setpriv
    /// --groups 0, as a root login or sudo would leave it), the daemon must not let guest uid/gid 1000
    /// create a setgid-root file in a root:root 2777 directory, in any sandbox mode; and no thread of
    /// any of its processes holds a supplementary group.</summary>
    [Theory]
    [InlineData("none")]
    [InlineData("chroot")]
    [InlineData("namespace")]
    public void StartedInGroupZeroTheDaemonGrantsNoSetgidRootFile(string sandbox)
    {
        Assert.Equal(0u, Libc.GetEuid());
        string dir = Path.Combine(_share, "sgid");
        Directory.CreateDirectory(dir);
        HostOps.Chmod(dir, 0x5FF); // 02777 root:root
        using var daemon = DaemonProcess.StartVhostfsdUnder(["/usr/bin/setpriv", "--groups", "0,4242", "--"], _share,
            "--sandbox=" + sandbox, "--log-level=warn");
        using FuseFs fs = Observe.Mount(daemon);
        var raw = new RawFuse(fs.Conn) { Caller = new FuseCaller(1000, 1000) };
        Assert.Equal(Errno.OK, raw.Lookup(FuseConstants.RootId, "sgid", out FuseEntryOut parent));
        Assert.Equal(Errno.OK, raw.Create(parent.NodeId, "created", Libc.O_RDWR | Libc.O_CREAT | Libc.O_EXCL, 0x5ED, out _, out ulong fh));
        Assert.Equal(Errno.OK, raw.Mknod(parent.NodeId, "made", Libc.S_IFREG | 0x5ED, 0, out _));
        foreach (string name in new[] { "created", "made" })
        {
            Statx st = HostOps.Stat(Path.Combine(dir, name));
            Assert.Equal(1000u, st.Uid);
            Assert.True((st.Mode & Libc.S_ISGID) == 0 || st.Gid != 0,
                $"{sandbox}: {name} is setgid group {st.Gid} and owned by guest uid 1000 (mode {Convert.ToString(st.Mode & 0xFFF, 8)})");
        }
        int serving = Observe.ServingPid(daemon);
        foreach (int pid in new[] { daemon.Pid, serving }.Distinct())
        {
            foreach (string task in Directory.GetDirectories($"/proc/{pid}/task"))
            {
                Assert.True(Groups(Path.Combine(task, "status")).Length == 0, $"{sandbox}: {task} holds supplementary groups {string.Join(',', Groups(Path.Combine(task, "status")))}");
            }
        }
        raw.Release(FuseConstants.RootId, fh);
    }

    /// <summary>Kernels before 6.13 have no *xattrat calls: the attributes of symlinks and special files
    /// are reached by path through /proc/self/fd. Inside a sandbox an absolute /proc/self/fd/N is
    /// resolved in the share, where a guest can plant proc/self/fd/N as a symlink to a file of its
    /// choosing. Forced onto those paths (the test switch), the daemon must set the attribute on the
    /// node the guest named, not on the decoy's target, and not fail for lack of /proc.</summary>
    [Theory]
    [InlineData("chroot")]
    [InlineData("namespace")]
    public void XattrsOfSpecialFilesNeverGoThroughAProcPathInTheShare(string sandbox)
    {
        File.WriteAllText(Path.Combine(_share, "victim"), "v");
        string decoys = Path.Combine(_share, "proc", "self", "fd");
        Directory.CreateDirectory(decoys);
        for (int fd = 0; fd < 1024; fd++)
        {
            File.CreateSymbolicLink(Path.Combine(decoys, fd.ToString(CultureInfo.InvariantCulture)), "/victim");
        }
        File.CreateSymbolicLink(Path.Combine(_share, "link"), "victim");
        using var daemon = DaemonProcess.StartVhostfsdUnder(["/usr/bin/env", "VHOSTFSD_TEST_NO_XATTRAT=1"], _share,
            "--sandbox=" + sandbox, "--xattr", "--modcaps=+sys_admin", "--log-level=info");
        using FuseFs fs = Observe.Mount(daemon);
        Assert.True(SpinWait.SpinUntil(() => daemon.Output.Contains("xattrs of special files through the /proc/self/fd directory", StringComparison.Ordinal), TimeSpan.FromSeconds(10)), daemon.Output);
        Assert.Equal(Errno.OK, fs.Lookup(fs.Root, "link", out FuseNode? link));
        Assert.Equal(Errno.OK, fs.Mknod(fs.Root, "fifo", Libc.S_IFIFO | 0x1A4, 0, out FuseNode? fifo));
        Span<byte> value = stackalloc byte[16];
        // trusted.* (like security.* without an LSM that claims the name) needs CAP_SYS_ADMIN, kept here
        // with --modcaps; user.* is not allowed on symlinks and FIFOs.
        foreach (var (node, name) in new[] { (link!, "link"), (fifo!, "fifo") })
        {
            Assert.Equal(Errno.OK, fs.SetXattr(node, "trusted.mark", "m"u8));
            Assert.Equal(Errno.OK, fs.GetXattr(node, "trusted.mark", value, out int size));
            Assert.Equal("m", System.Text.Encoding.ASCII.GetString(value[..size]));
            Assert.Equal("m", HostOps.GetXattr(Path.Combine(_share, name), "trusted.mark"));
        }
        Assert.Null(HostOps.GetXattr(Path.Combine(_share, "victim"), "trusted.mark"));
    }

    /// <summary>With --killpriv-v2, a WRITE the guest marks KILL_SUIDGID (its caller lacks CAP_FSETID)
    /// runs without CAP_FSETID on the daemon's thread, so the kernel clears the setuid/setgid bits as
    /// part of the write — through the real daemon, under its default seccomp filter (the thread's
    /// capability change is a call the filter must allow), in every sandbox mode.</summary>
    [Theory]
    [InlineData("none")]
    [InlineData("chroot")]
    [InlineData("namespace")]
    public void AKillSuidgidWriteClearsSetuidOnTheHost(string sandbox)
    {
        string path = Path.Combine(_share, "tool");
        File.WriteAllText(path, "#!/bin/sh\n");
        HostOps.Chmod(path, 0xDED); // 06755 root:root
        using var daemon = DaemonProcess.StartVhostfsd(_share, "--sandbox=" + sandbox, "--killpriv-v2", "--log-level=warn");
        using FuseFs fs = Observe.Mount(daemon);
        Assert.True(fs.Conn.Has(FuseInitFlags.HandleKillprivV2), "the shim offers HANDLE_KILLPRIV_V2 and the daemon grants it with --killpriv-v2");
        var raw = new RawFuse(fs.Conn);
        Assert.Equal(Errno.OK, raw.Lookup(FuseConstants.RootId, "tool", out FuseEntryOut entry));
        Assert.Equal(Errno.OK, raw.Open(entry.NodeId, Libc.O_RDWR, out ulong fh));
        Assert.Equal(Errno.OK, raw.Write(entry.NodeId, fh, 0, "#"u8, out _));
        Assert.Equal(0xDEDu, HostOps.Stat(path).Mode & 0xFFFu);
        Assert.Equal(Errno.OK, raw.Write(entry.NodeId, fh, 0, "#"u8, out _, FuseWriteFlags.KillSuidgid));
        Assert.Equal(0x1EDu, HostOps.Stat(path).Mode & 0xFFFu);
        Assert.Equal(Errno.OK, raw.Release(entry.NodeId, fh));
        Assert.False(daemon.HasExited, daemon.Output);
    }

    /// <summary>Lock forwarding as the managers ask for it, on the command lines they write: libvirt's
    /// &lt;lock posix='on' flock='on'/&gt; (C dialect: -o ...,posix_lock,flock) starts a daemon whose
    /// guest locks conflict with a host program's; Kata's -o no_posix_lock (and no option at all)
    /// keeps them in the guest: the daemon does not offer them.</summary>
    [Theory]
    [InlineData("posix_lock,flock", true)]
    [InlineData("no_posix_lock", false)]
    [InlineData("", false)]
    public unsafe void LockForwardingFollowsTheCommandLine(string lockOptions, bool forwarded)
    {
        string path = Path.Combine(_share, "locked");
        File.WriteAllText(path, "data");
        string compat = "source=" + _share + ",cache=none,sandbox=namespace,xattr" + (lockOptions.Length > 0 ? "," + lockOptions : "");
        using var daemon = DaemonProcess.Start("vhostfsd", NativeExecutable.Find(), null, (socket, _) =>
            ["--socket-path", socket, "-o", compat, "--log-level=warn"]);
        using FuseFs fs = Observe.Mount(daemon);
        Assert.Equal(forwarded, fs.Conn.Has(FuseInitFlags.PosixLocks));
        Assert.Equal(forwarded, fs.Conn.Has(FuseInitFlags.FlockLocks));
        if (!forwarded)
        {
            return;
        }
        var raw = new RawFuse(fs.Conn);
        Assert.Equal(Errno.OK, raw.Lookup(FuseConstants.RootId, "locked", out FuseEntryOut entry));
        Assert.Equal(Errno.OK, raw.Open(entry.NodeId, Libc.O_RDWR, out ulong fh));
        Assert.Equal(Errno.OK, raw.Lock(entry.NodeId, fh, owner: 1, Libc.F_WRLCK, wait: false));
        // A host program's POSIX lock on the same file now conflicts.
        fixed (byte* p = System.Text.Encoding.UTF8.GetBytes(path + "\0"))
        {
            int hostFd = Libc.OpenAt(Libc.AT_FDCWD, p, Libc.O_RDWR | Libc.O_CLOEXEC, 0);
            Assert.True(hostFd >= 0);
            var lk = new FileLock { Type = Libc.F_WRLCK, Whence = Libc.SEEK_SET };
            Assert.Equal(-1, Libc.FcntlLock(hostFd, Libc.F_SETLK, &lk));
            Libc.Close(hostFd);
        }
        Assert.Equal(Errno.OK, raw.Release(entry.NodeId, fh));
    }
}
