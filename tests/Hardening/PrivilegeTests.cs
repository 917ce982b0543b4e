using System.Globalization;
using Vhostfsd.FusePassthrough.Protocol;
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
}
