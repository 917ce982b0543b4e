using System.Text;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Xunit;

namespace Vhostfsd.FusePassthrough.Tests;

/// <summary>A hostile guest tries to reach host files outside the share. Every attempt gets an errno
/// and nothing outside changes.</summary>
public class EscapeTests
{
    private const ulong Root = FuseConstants.RootId;

    [Fact]
    public void SymlinkToOutsideIsNeverFollowed()
    {
        using var f = new ShareFixture();
        var before = f.OutsideSnapshot();
        uint secretMode = ShareFixture.HostStat(Path.Combine(f.Outside, "secret")).Mode;
        File.CreateSymbolicLink(f.HostPath("etc"), "/etc");
        File.CreateSymbolicLink(f.HostPath("out"), f.Outside);
        File.CreateSymbolicLink(f.HostPath("secret"), Path.Combine(f.Outside, "secret"));
        FuseEntryOut etc = f.Client.LookupOk(Root, "etc");
        FuseEntryOut outLink = f.Client.LookupOk(Root, "out");
        FuseEntryOut secret = f.Client.LookupOk(Root, "secret");
        // The nodes are the links themselves.
        Assert.Equal(Libc.S_IFLNK, etc.Attr.Mode & Libc.S_IFMT);
        Assert.Equal(ShareFixture.HostStat(f.HostPath("etc")).Ino, etc.Attr.Ino);
        // Lookups "through" them fail: a symlink is not a directory for *at() calls.
        Assert.Equal(Errno.ENOTDIR, f.Client.Lookup(etc.NodeId, "passwd").Errno);
        Assert.Equal(Errno.ENOTDIR, f.Client.Lookup(outLink.NodeId, "secret").Errno);
        Assert.Equal(Errno.ENOTDIR, f.Client.Opendir(etc.NodeId).Errno);
        Assert.Equal(Errno.ELOOP, f.Client.Open(secret.NodeId, Libc.O_RDONLY).Errno);
        Assert.Equal(Errno.ELOOP, f.Client.Open(secret.NodeId, Libc.O_RDWR | Libc.O_TRUNC).Errno);
        Assert.Equal(Errno.ENOTDIR, f.Client.Create(outLink.NodeId, "planted", Libc.O_RDWR | Libc.O_CREAT).Errno);
        Assert.Equal(Errno.ENOTDIR, f.Client.Mkdir(outLink.NodeId, "planted").Errno);
        Assert.Equal(Errno.ENOTDIR, f.Client.Unlink(outLink.NodeId, "secret").Errno);
        Assert.NotEqual(0, f.Client.Rename(outLink.NodeId, "secret", Root, "stolen").Error);
        Assert.NotEqual(0, f.Client.Symlink(outLink.NodeId, "x", "y").Error);
        // Setattr on the link changes the link, not /etc or the secret.
        f.Client.Setattr(secret.NodeId, new FuseSetattrIn { Valid = (uint)FuseSetattrValid.Size, FileSize = 0 });
        f.Client.Setattr(secret.NodeId, new FuseSetattrIn { Valid = (uint)FuseSetattrValid.Mode, Mode = 0x1FF });
        // Creating over the link name does not follow it either.
        Assert.Equal(Errno.ELOOP, f.Client.Create(Root, "secret", Libc.O_RDWR | Libc.O_CREAT | Libc.O_TRUNC).Errno);
        Assert.Equal(before, f.OutsideSnapshot());
        Assert.Equal("outside the share", File.ReadAllText(Path.Combine(f.Outside, "secret")));
        Assert.Equal(secretMode, ShareFixture.HostStat(Path.Combine(f.Outside, "secret")).Mode);
    }

    [Fact]
    public void DotDotAtTheRootStaysAtTheRoot()
    {
        using var f = new ShareFixture();
        FuseEntryOut up = f.Client.LookupOk(Root, "..");
        Assert.Equal(Root, up.NodeId);
        Assert.Equal(ShareFixture.HostStat(f.Share).Ino, up.Attr.Ino);
        Assert.Equal(Root, f.Client.LookupOk(Root, ".").NodeId);
        // The root's READDIR lists ".." without a node (no lookup of the host parent).
        ulong fh = f.Client.Opendir(Root).Ok().Read<FuseOpenOut>().Fh;
        var dots = f.Client.ReadAll(Root, fh, plus: true).Where(e => e.Name == "..").ToList();
        Assert.Single(dots);
        Assert.Equal(0UL, dots[0].Entry.NodeId);
        Assert.Equal(Errno.EINVAL, f.Client.Lookup(Root, "../outside").Errno);
        Assert.Equal(Errno.EINVAL, f.Client.Lookup(Root, "/etc").Errno);
        Assert.Equal(Errno.EINVAL, f.Client.Mkdir(Root, "..").Errno);
        Assert.Equal(Errno.EINVAL, f.Client.Rename(Root, "..", Root, "x").Errno);
    }

    [Fact]
    public void DirectoryMovedOutOfTheShareCannotLeadOut()
    {
        using var f = new ShareFixture();
        Directory.CreateDirectory(f.HostPath("a/b"));
        FuseEntryOut a = f.Client.LookupOk(Root, "a");
        FuseEntryOut b = f.Client.LookupOk(a.NodeId, "b");
        // The host moves the directory out of the share while the guest holds it.
        Directory.Move(f.HostPath("a"), Path.Combine(f.Outside, "a"));
        Assert.Equal(Errno.EACCES, f.Client.Lookup(b.NodeId, "..").Errno);
        Assert.Equal(Errno.EACCES, f.Client.Lookup(a.NodeId, "..").Errno);
    }

    [Fact]
    public void NodeIdsAndHandlesTheGuestWasNeverGivenAreRefused()
    {
        using var f = LockTests.Locking();
        var before = f.OutsideSnapshot();
        File.WriteAllText(f.HostPath("f"), "data");
        FuseEntryOut file = f.Client.LookupOk(Root, "f");
        ulong fh = f.Client.Open(file.NodeId, Libc.O_RDWR).Ok().Read<FuseOpenOut>().Fh;
        foreach (ulong forged in new ulong[] { 0, 2, file.NodeId + 1, 0xFFFF_FFFF, ulong.MaxValue })
        {
            if (forged == file.NodeId)
            {
                continue;
            }
            Assert.Equal(Errno.EBADF, f.Client.Lookup(forged, "f").Errno);
            Assert.Equal(Errno.EBADF, f.Client.Getattr(forged).Errno);
            Assert.Equal(Errno.EBADF, f.Client.Link(forged, Root, "stolen").Errno);
            Assert.Equal(Errno.EBADF, f.Client.Link(file.NodeId, forged, "x").Errno);
            Assert.Equal(Errno.EBADF, f.Client.Rename(Root, "f", forged, "moved").Errno);
            Assert.Equal(Errno.EBADF, f.Client.Rename(forged, "f", Root, "moved").Errno);
            Assert.Equal(Errno.EBADF, f.Client.Open(forged, Libc.O_RDONLY).Errno);
            Assert.Equal(Errno.EBADF, f.Client.Mkdir(forged, "d").Errno);
            Assert.Equal(Errno.EBADF, f.Client.Read(forged, fh, 0, 10).Errno);
            Assert.Equal(Errno.EBADF, f.Client.Read(file.NodeId, forged, 0, 10).Errno);
            Assert.Equal(Errno.EBADF, f.Client.Write(file.NodeId, forged, 0, "x"u8).Errno);
            Assert.Equal(Errno.EBADF, f.Client.Release(file.NodeId, forged).Errno);
            Assert.Equal(Errno.EBADF, f.Client.Fsync(file.NodeId, forged).Errno);
            Assert.Equal(Errno.EBADF, f.Client.Readdir(Root, forged, 0, 4096, false).Errno);
            Assert.Equal(Errno.EBADF, f.Client.Lock(FuseOpcode.Setlk, file.NodeId, forged, 1, Libc.F_WRLCK).Errno);
        }
        // A forgotten node is gone for good.
        f.Client.Forget(file.NodeId, 1);
        Assert.Equal(Errno.EBADF, f.Client.Link(file.NodeId, Root, "again").Errno);
        Assert.True(File.Exists(f.HostPath("f")));
        Assert.Equal("data", File.ReadAllText(f.HostPath("f")));
        Assert.False(File.Exists(f.HostPath("stolen")));
        Assert.Equal(before, f.OutsideSnapshot());
    }

    [Fact]
    public void HardLinksToOutsideCannotBeMadeThroughTheShare()
    {
        using var f = new ShareFixture();
        // The guest only ever holds nodes under the share; LINK with a node of a file inside works,
        // and there is no node id that names a file outside.
        File.CreateSymbolicLink(f.HostPath("s"), Path.Combine(f.Outside, "secret"));
        FuseEntryOut s = f.Client.LookupOk(Root, "s");
        FuseEntryOut linked = f.Client.Link(s.NodeId, Root, "s2").Ok().Read<FuseEntryOut>();
        // What got linked is the symlink itself, not the secret.
        Assert.Equal(Libc.S_IFLNK, linked.Attr.Mode & Libc.S_IFMT);
        Assert.Equal(1u, ShareFixture.HostStat(Path.Combine(f.Outside, "secret")).Nlink);
        Assert.Equal(Path.Combine(f.Outside, "secret"), Encoding.UTF8.GetString(f.Client.Readlink(linked.NodeId).Ok().Payload));
    }
}
