using System.Diagnostics;
using Vhostfsd.FusePassthrough.Protocol;
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
