using System.Diagnostics;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Xunit;

namespace Vhostfsd.FusePassthrough.Tests;

/// <summary>Requests are executed with the requester's file-system credentials for creation
/// (setfsuid/setfsgid on the worker thread, restored afterwards). The tests run as root.</summary>
public class CredentialTests
{
    private const ulong Root = FuseConstants.RootId;

    private static void RequireRoot() => Assert.True(Libc.GetEuid() == 0, "these tests exercise setfsuid and must run as root (they do in CI)");

    /// <summary>The fsuid/fsgid of the calling thread, from /proc/thread-self/status.</summary>
    private static (uint Uid, uint Gid) ThreadFsIds()
    {
        string[] lines = File.ReadAllLines("/proc/thread-self/status");
        uint Field(string key) => uint.Parse(lines.First(l => l.StartsWith(key)).Split('\t', StringSplitOptions.RemoveEmptyEntries)[4]);
        return (Field("Uid:"), Field("Gid:"));
    }

    /// <summary>Clears <paramref name="cap"/> from the calling thread's effective set (it stays
    /// permitted, so <see cref="RaiseEffective"/> can put it back).</summary>
    private static unsafe void LowerEffective(int cap)
    {
        var header = new CapUserHeader { Version = Libc._LINUX_CAPABILITY_VERSION_3 };
        CapUserData* data = stackalloc CapUserData[2];
        Assert.Equal(0, Libc.Capget(&header, data));
        data[0].Effective &= ~(1u << cap);
        Assert.Equal(0, Libc.Capset(&header, data));
    }

    private static unsafe void RaiseEffective(int cap)
    {
        var header = new CapUserHeader { Version = Libc._LINUX_CAPABILITY_VERSION_3 };
        CapUserData* data = stackalloc CapUserData[2];
        Assert.Equal(0, Libc.Capget(&header, data));
        data[0].Effective |= 1u << cap;
        Assert.Equal(0, Libc.Capset(&header, data));
    }

    /// <summary>setfsuid/setfsgid report no error: without CAP_SETUID (--modcaps=-setuid) or
    /// CAP_SETGID the call leaves the thread as it was. A create the guest asked for as uid 1000
    /// then ran as root: a setuid-root file made by a guest user. The switch is checked; a
    /// request whose ids the thread cannot take fails with EPERM and creates nothing.</summary>
    [Theory]
    [InlineData(7)] // CAP_SETUID
    [InlineData(6)] // CAP_SETGID
    public void ACreateWhoseIdsTheThreadCannotTakeIsRefused(int cap)
    {
        RequireRoot();
        using var f = new ShareFixture();
        Directory.CreateDirectory(f.HostPath("open"));
        ShareFixture.Chmod(f.HostPath("open"), 0x1FF);
        FuseEntryOut open = f.Client.LookupOk(Root, "open");
        // One create as root first, so that the thread has dropped its groups already.
        f.Client.CreateOk(open.NodeId, "warm");
        f.Client.Uid = 1000;
        f.Client.Gid = 1000;
        LowerEffective(cap);
        try
        {
            FuseReply created = f.Client.Create(open.NodeId, "suid", 0x42 /* O_RDWR|O_CREAT */, mode: 0xDED);
            FuseReply dir = f.Client.Mkdir(open.NodeId, "dir", mode: 0xDED);
            FuseReply node = f.Client.Mknod(open.NodeId, "node", Libc.S_IFREG | 0xDED);
            Assert.Equal(Errno.EPERM, created.Errno);
            Assert.Equal(Errno.EPERM, dir.Errno);
            Assert.Equal(Errno.EPERM, node.Errno);
        }
        finally
        {
            RaiseEffective(cap);
        }
        Assert.False(File.Exists(f.HostPath("open/suid")));
        Assert.False(Directory.Exists(f.HostPath("open/dir")));
        Assert.False(File.Exists(f.HostPath("open/node")));
        Assert.Equal((0u, 0u), ThreadFsIds());
    }

    [Fact]
    public void FilesAreCreatedAsTheRequester()
    {
        RequireRoot();
        using var f = new ShareFixture();
        Directory.CreateDirectory(f.HostPath("open"));
        ShareFixture.Chmod(f.HostPath("open"), 0x1FF);
        FuseEntryOut open = f.Client.LookupOk(Root, "open");
        f.Client.Uid = 1000;
        f.Client.Gid = 1001;
        f.Client.CreateOk(open.NodeId, "file");
        f.Client.Mkdir(open.NodeId, "dir").Ok();
        f.Client.Symlink(open.NodeId, "sym", "file").Ok();
        f.Client.Mknod(open.NodeId, "fifo", Libc.S_IFIFO | 0x1A4).Ok();
        foreach (string name in new[] { "file", "dir", "sym", "fifo" })
        {
            Statx st = ShareFixture.HostStat(f.HostPath("open/" + name));
            Assert.Equal((1000u, 1001u), (st.Uid, st.Gid));
        }
        // The worker thread is back to the daemon's credentials.
        Assert.Equal((0u, 0u), ThreadFsIds());
        f.Client.Uid = 0;
        f.Client.Gid = 0;
        f.Client.CreateOk(open.NodeId, "rootfile");
        Assert.Equal(0u, ShareFixture.HostStat(f.HostPath("open/rootfile")).Uid);
    }

    [Fact]
    public void NonRootCallersGetEaccesWhereTheHostSaysSo()
    {
        RequireRoot();
        using var f = new ShareFixture();
        Directory.CreateDirectory(f.HostPath("private"));
        ShareFixture.Chmod(f.HostPath("private"), 0x1ED); // 0755 root:root
        FuseEntryOut dir = f.Client.LookupOk(Root, "private");
        f.Client.Uid = 1000;
        f.Client.Gid = 1000;
        Assert.Equal(Errno.EACCES, f.Client.Create(dir.NodeId, "x", Libc.O_RDWR | Libc.O_CREAT).Errno);
        Assert.Equal(Errno.EACCES, f.Client.Mkdir(dir.NodeId, "x").Errno);
        Assert.Equal(Errno.EACCES, f.Client.Symlink(dir.NodeId, "x", "t").Errno);
        Assert.Equal(Errno.EACCES, f.Client.Mknod(dir.NodeId, "x", Libc.S_IFIFO | 0x1A4).Errno);
        Assert.Empty(Directory.GetFileSystemEntries(f.HostPath("private")));
        Assert.Equal((0u, 0u), ThreadFsIds());
    }

    [Fact]
    public void SupplementaryGroupExtensionGrantsGroupAccess()
    {
        RequireRoot();
        using var f = new ShareFixture();
        Directory.CreateDirectory(f.HostPath("team"));
        ShareFixture.Chown(f.HostPath("team"), 0, 3000);
        ShareFixture.Chmod(f.HostPath("team"), 0x1F8); // 0770
        FuseEntryOut dir = f.Client.LookupOk(Root, "team");
        Assert.True(FuseConstants.JoinInitFlags(f.Init.Flags, f.Init.Flags2).HasFlag(FuseInitFlags.CreateSuppGroup));
        f.Client.Uid = 1000;
        f.Client.Gid = 1000;
        Assert.Equal(Errno.EACCES, f.Client.Create(dir.NodeId, "a", Libc.O_RDWR | Libc.O_CREAT).Errno);
        // fuse_ext_header { size 16, type FUSE_EXT_GROUPS } + fuse_supp_groups { 1 } + gid 3000 (16 bytes, already 8-aligned).
        var ext = new FuseArgs().Add(new FuseExtHeader { Length = 16, Type = (uint)FuseExtType.Groups }).Add(new FuseSuppGroups { NrGroups = 1 }).Add(3000u);
        f.Client.TotalExtLen = 2;
        long malformed = f.Server.Stats.Malformed;
        FuseReply ok = f.Client.Create(dir.NodeId, "a", Libc.O_RDWR | Libc.O_CREAT, extensions: ext);
        Assert.Equal(malformed, f.Server.Stats.Malformed);
        f.Client.TotalExtLen = 0;
        Assert.Equal(0, ok.Error);
        Assert.Equal((1000u, 1000u), (ShareFixture.HostStat(f.HostPath("team/a")).Uid, ShareFixture.HostStat(f.HostPath("team/a")).Gid));
        Assert.Equal((0u, 0u), ThreadFsIds());
        // A broken extension is refused.
        var bad = new FuseArgs().Add(new FuseExtHeader { Length = 64, Type = (uint)FuseExtType.Groups }).Add(new FuseSuppGroups { NrGroups = 1 }).Add(3000u);
        f.Client.TotalExtLen = 2;
        Assert.Equal(Errno.EINVAL, f.Client.Create(dir.NodeId, "b", Libc.O_RDWR | Libc.O_CREAT, extensions: bad).Errno);
        f.Client.TotalExtLen = 200;
        Assert.Equal(Errno.EINVAL, f.Client.Create(dir.NodeId, "c", Libc.O_RDWR | Libc.O_CREAT, extensions: ext).Errno);
        f.Client.TotalExtLen = 0;
    }

    /// <summary>The supplementary groups of the calling thread, from /proc/thread-self/status.</summary>
    private static uint[] ThreadGroups()
    {
        string line = File.ReadAllLines("/proc/thread-self/status").First(l => l.StartsWith("Groups:", StringComparison.Ordinal));
        return line["Groups:".Length..].Split([' ', '\t'], StringSplitOptions.RemoveEmptyEntries).Select(uint.Parse).ToArray();
    }

    /// <summary>CVE-2022-0358's class: a daemon thread still in group 0 (root login, sudo, setpriv
    /// --groups 0) that creates a file for guest uid/gid 1000 in a root:root 2777 directory lets the
    /// kernel keep S_ISGID — a setgid-root file owned by the guest user. The requests run on a thread
    /// that holds group 0 (set with the thread-only setgroups, as the daemon's threads would have
    /// inherited it); the new entries must not be setgid and the thread must hold no group afterwards.</summary>
    [Fact]
    public void AGuestUserCannotKeepSetgidOfAGroupTheDaemonThreadHeld()
    {
        RequireRoot();
        using var f = new ShareFixture();
        Directory.CreateDirectory(f.HostPath("sgid"));
        ShareFixture.Chmod(f.HostPath("sgid"), 0x5FF); // 02777 root:root
        FuseEntryOut dir = f.Client.LookupOk(Root, "sgid");
        Exception? failure = null;
        uint[] groupsAfter = [];
        var worker = new Thread(() =>
        {
            try
            {
                unsafe
                {
                    uint zero = 0;
                    Assert.Equal(0, Libc.SetGroupsThread(1, &zero));
                }
                Assert.Equal([0u], ThreadGroups());
                f.Client.Uid = 1000;
                f.Client.Gid = 1000;
                f.Client.Create(dir.NodeId, "created", Libc.O_RDWR | Libc.O_CREAT, 0x5ED).Ok(); // 02755
                f.Client.Mknod(dir.NodeId, "made", Libc.S_IFREG | 0x5ED).Ok();
                groupsAfter = ThreadGroups();
            }
            catch (Exception e)
            {
                failure = e;
            }
        });
        worker.Start();
        worker.Join();
        Assert.Null(failure);
        foreach (string name in new[] { "created", "made" })
        {
            Statx st = ShareFixture.HostStat(f.HostPath("sgid/" + name));
            Assert.Equal((1000u, 0u), (st.Uid, st.Gid)); // the setgid directory's group, as the kernel gives it
            Assert.True((st.Mode & Libc.S_ISGID) == 0, $"{name} kept S_ISGID of group 0 for guest uid 1000: mode {Convert.ToString(st.Mode & 0xFFF, 8)}");
        }
        Assert.Empty(groupsAfter);
    }

    /// <summary>The CREATE_SUPP_GROUP extension's groups hold for that request only: afterwards the
    /// thread is back to no group at all (never to the daemon's own groups).</summary>
    [Fact]
    public void ExtensionGroupsDoNotOutliveTheRequest()
    {
        RequireRoot();
        using var f = new ShareFixture();
        Directory.CreateDirectory(f.HostPath("team"));
        ShareFixture.Chown(f.HostPath("team"), 0, 3000);
        ShareFixture.Chmod(f.HostPath("team"), 0x5F8); // 02770 root:3000
        FuseEntryOut dir = f.Client.LookupOk(Root, "team");
        f.Client.Uid = 1000;
        f.Client.Gid = 1000;
        var ext = new FuseArgs().Add(new FuseExtHeader { Length = 16, Type = (uint)FuseExtType.Groups }).Add(new FuseSuppGroups { NrGroups = 1 }).Add(3000u);
        f.Client.TotalExtLen = 2;
        f.Client.Create(dir.NodeId, "a", Libc.O_RDWR | Libc.O_CREAT, 0x5ED, extensions: ext).Ok();
        f.Client.TotalExtLen = 0;
        // In group 3000 for this request: the kernel keeps S_ISGID of the directory's group.
        Statx st = ShareFixture.HostStat(f.HostPath("team/a"));
        Assert.Equal(3000u, st.Gid);
        Assert.NotEqual(0u, st.Mode & Libc.S_ISGID);
        Assert.Empty(ThreadGroups());
        // Without the extension the next request of the same user is in no group: EACCES.
        Assert.Equal(Errno.EACCES, f.Client.Create(dir.NodeId, "b", Libc.O_RDWR | Libc.O_CREAT).Errno);
    }

    [Fact]
    public void ModesAreExactlyWhatTheGuestAsks()
    {
        using var f = new ShareFixture();
        // Without DONT_MASK the guest kernel already applied the umask; the daemon adds none.
        f.Client.CreateOk(Root, "f", Libc.O_RDWR | Libc.O_CREAT, 0x1B6);
        f.Client.Mkdir(Root, "d", 0x1FF, umask: 0x12).Ok();
        Assert.Equal(0x1B6u, ShareFixture.HostStat(f.HostPath("f")).Mode & 0xFFFu);
        Assert.Equal(0x1FFu, ShareFixture.HostStat(f.HostPath("d")).Mode & 0xFFFu);
    }

    [Fact]
    public void WithDontMaskTheUmaskAppliesUnlessTheParentHasADefaultAcl()
    {
        using var f = new ShareFixture(makeOptions: s => new PassthroughOptions { SharedDir = s, PosixAcl = true });
        Assert.True(FuseConstants.JoinInitFlags(f.Init.Flags, f.Init.Flags2).HasFlag(FuseInitFlags.DontMask));
        Directory.CreateDirectory(f.HostPath("plain"));
        Directory.CreateDirectory(f.HostPath("acl"));
        Run("setfacl", "-d", "-m", "u::rwx,g::rwx,o::rwx", f.HostPath("acl"));
        FuseEntryOut plain = f.Client.LookupOk(Root, "plain");
        FuseEntryOut acl = f.Client.LookupOk(Root, "acl");
        f.Client.Create(plain.NodeId, "f", Libc.O_RDWR | Libc.O_CREAT, 0x1B6, umask: 0x12).Ok();
        f.Client.Create(acl.NodeId, "f", Libc.O_RDWR | Libc.O_CREAT, 0x1B6, umask: 0x12).Ok();
        Assert.Equal(0x1A4u, ShareFixture.HostStat(f.HostPath("plain/f")).Mode & 0xFFFu);
        Assert.Equal(0x1B6u, ShareFixture.HostStat(f.HostPath("acl/f")).Mode & 0xFFFu);
    }

    private static void Run(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { UseShellExecute = false, RedirectStandardError = true };
        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }
        using Process p = Process.Start(psi)!;
        string err = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"{file} failed: {err} (the acl package provides setfacl; scripts/install-deps.sh installs it)");
    }
}
