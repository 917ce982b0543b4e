using System.Text;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Xunit;

namespace Vhostfsd.FusePassthrough.Tests;

/// <summary>Name-space opcodes, each checked against the host with direct syscalls.</summary>
public class EntryTests
{
    private const ulong Root = FuseConstants.RootId;

    [Fact]
    public void GetattrMatchesHostAndUnknownNodesAreRefused()
    {
        using var f = new ShareFixture();
        File.WriteAllBytes(f.HostPath("f"), new byte[1234]);
        FuseEntryOut e = f.Client.LookupOk(Root, "f");
        var attr = f.Client.Getattr(e.NodeId).Ok().Read<FuseAttrOut>();
        Statx st = ShareFixture.HostStat(f.HostPath("f"));
        Assert.Equal(st.Ino, attr.Attr.Ino);
        Assert.Equal(1234UL, attr.Attr.FileSize);
        Assert.Equal(st.Blocks, attr.Attr.Blocks);
        Assert.Equal(st.Nlink, attr.Attr.Nlink);
        Assert.Equal((ulong)st.Mtime.Sec, attr.Attr.Mtime);
        Assert.Equal(st.Mtime.Nsec, attr.Attr.MtimeNsec);
        Assert.Equal(1UL, attr.AttrValid);
        var rootAttr = f.Client.Getattr(Root).Ok().Read<FuseAttrOut>();
        Assert.Equal(ShareFixture.HostStat(f.Share).Ino, rootAttr.Attr.Ino);
        Assert.Equal(Errno.EBADF, f.Client.Getattr(987654).Errno);
        Assert.Equal(Errno.EBADF, f.Client.Getattr(0).Errno);
    }

    [Fact]
    public void OneNodePerHostInodeWithLookupCounts()
    {
        using var f = new ShareFixture();
        File.WriteAllText(f.HostPath("a"), "x");
        File.CreateSymbolicLink(f.HostPath("sym"), "a");
        FuseEntryOut a1 = f.Client.LookupOk(Root, "a");
        FuseEntryOut link = f.Client.LookupOk(Root, "sym");
        Assert.NotEqual(a1.NodeId, link.NodeId);
        Assert.Equal(Libc.S_IFLNK, link.Attr.Mode & Libc.S_IFMT);
        // A hard link is the same inode: the same node.
        Assert.Equal(0, f.Client.Link(a1.NodeId, Root, "b").Error);
        FuseEntryOut b = f.Client.LookupOk(Root, "b");
        Assert.Equal(a1.NodeId, b.NodeId);
        Assert.Equal(2u, b.Attr.Nlink);
        // 1 (lookup a) + 1 (link reply) + 1 (lookup b) lookups: two forgets keep it alive, the third drops it.
        f.Client.Forget(a1.NodeId, 2);
        Assert.Equal(0, f.Client.Getattr(a1.NodeId).Error);
        f.Client.Forget(a1.NodeId, 1);
        Assert.Equal(Errno.EBADF, f.Client.Getattr(a1.NodeId).Errno);
        // Looked up again: a new node id (ids are never reused).
        FuseEntryOut again = f.Client.LookupOk(Root, "a");
        Assert.NotEqual(a1.NodeId, again.NodeId);
    }

    [Fact]
    public void MkdirMknodSymlinkCreateOnTheHost()
    {
        using var f = new ShareFixture();
        FuseEntryOut d = f.Client.Mkdir(Root, "dir", 0x1C0).Ok().Read<FuseEntryOut>();
        Assert.True(Directory.Exists(f.HostPath("dir")));
        Assert.Equal(Libc.S_IFDIR | 0x1C0u, ShareFixture.HostStat(f.HostPath("dir")).Mode & 0xFFFFu);
        Assert.Equal(Errno.EEXIST, f.Client.Mkdir(Root, "dir").Errno);
        Assert.Equal(Errno.EBADF, f.Client.Mkdir(4242, "x").Errno);

        FuseEntryOut fifo = f.Client.Mknod(d.NodeId, "fifo", Libc.S_IFIFO | 0x1A4).Ok().Read<FuseEntryOut>();
        Assert.Equal(Libc.S_IFIFO, fifo.Attr.Mode & Libc.S_IFMT);
        Assert.Equal(Libc.S_IFIFO, ShareFixture.HostStat(f.HostPath("dir/fifo")).Mode & Libc.S_IFMT);
        FuseEntryOut reg = f.Client.Mknod(d.NodeId, "reg", Libc.S_IFREG | 0x180).Ok().Read<FuseEntryOut>();
        Assert.Equal(Libc.S_IFREG | 0x180u, reg.Attr.Mode);
        // A character device: rdev travels in the kernel's new_encode_dev form.
        uint rdev = FuseConstants.EncodeDev(1, 3);
        FuseEntryOut chr = f.Client.Mknod(d.NodeId, "null", Libc.S_IFCHR | 0x1B6, rdev).Ok().Read<FuseEntryOut>();
        Assert.Equal(rdev, chr.Attr.Rdev);
        Statx cst = ShareFixture.HostStat(f.HostPath("dir/null"));
        Assert.Equal((1u, 3u), (cst.RdevMajor, cst.RdevMinor));
        Assert.Equal(Errno.EINVAL, f.Client.Mknod(d.NodeId, "bad", Libc.S_IFDIR | 0x1ED).Errno);

        FuseEntryOut s = f.Client.Symlink(d.NodeId, "link", "../some/where").Ok().Read<FuseEntryOut>();
        Assert.Equal("../some/where", new FileInfo(f.HostPath("dir/link")).LinkTarget);
        Assert.Equal("../some/where", Encoding.UTF8.GetString(f.Client.Readlink(s.NodeId).Ok().Payload));
        Assert.Equal(Errno.EINVAL, f.Client.Readlink(d.NodeId).Errno);
        Assert.Equal(Errno.ENOENT, f.Client.Symlink(d.NodeId, "empty", "").Errno);
        Assert.Equal(Errno.EEXIST, f.Client.Symlink(d.NodeId, "link", "x").Errno);
    }

    [Fact]
    public void UnlinkAndRmdirFollowHostRules()
    {
        using var f = new ShareFixture();
        Directory.CreateDirectory(f.HostPath("d/sub"));
        File.WriteAllText(f.HostPath("d/file"), "x");
        FuseEntryOut d = f.Client.LookupOk(Root, "d");
        Assert.Equal(Errno.ENOTEMPTY, f.Client.Rmdir(Root, "d").Errno);
        Assert.Equal(Errno.EISDIR, f.Client.Unlink(d.NodeId, "sub").Errno);
        Assert.Equal(Errno.ENOTDIR, f.Client.Rmdir(d.NodeId, "file").Errno);
        Assert.Equal(Errno.ENOENT, f.Client.Unlink(d.NodeId, "nope").Errno);
        Assert.Equal(0, f.Client.Unlink(d.NodeId, "file").Error);
        Assert.False(File.Exists(f.HostPath("d/file")));
        Assert.Equal(0, f.Client.Rmdir(d.NodeId, "sub").Error);
        Assert.Equal(0, f.Client.Rmdir(Root, "d").Error);
        Assert.False(Directory.Exists(f.HostPath("d")));
        Assert.Equal(Errno.EINVAL, f.Client.Rmdir(Root, ".").Errno);
        Assert.Equal(Errno.EINVAL, f.Client.Unlink(Root, "..").Errno);
    }

    [Fact]
    public void RenameAndRename2Flags()
    {
        using var f = new ShareFixture();
        Directory.CreateDirectory(f.HostPath("a"));
        Directory.CreateDirectory(f.HostPath("b"));
        File.WriteAllText(f.HostPath("a/one"), "1");
        File.WriteAllText(f.HostPath("b/two"), "2");
        FuseEntryOut a = f.Client.LookupOk(Root, "a");
        FuseEntryOut b = f.Client.LookupOk(Root, "b");
        Assert.Equal(0, f.Client.Rename(a.NodeId, "one", b.NodeId, "moved", rename2: false).Error);
        Assert.Equal("1", File.ReadAllText(f.HostPath("b/moved")));
        Assert.Equal(Errno.EEXIST, f.Client.Rename(b.NodeId, "moved", b.NodeId, "two", Libc.RENAME_NOREPLACE).Errno);
        Assert.Equal(0, f.Client.Rename(b.NodeId, "moved", b.NodeId, "two", Libc.RENAME_EXCHANGE).Error);
        Assert.Equal("1", File.ReadAllText(f.HostPath("b/two")));
        Assert.Equal("2", File.ReadAllText(f.HostPath("b/moved")));
        Assert.Equal(Errno.EINVAL, f.Client.Rename(b.NodeId, "moved", b.NodeId, "x", 0x80).Errno);
        Assert.Equal(Errno.ENOENT, f.Client.Rename(a.NodeId, "gone", b.NodeId, "x").Errno);
    }

    /// <summary>RENAME_WHITEOUT leaves a whiteout (a 0:0 character device) under the old name: an
    /// entry the requester creates, so it is theirs. Made as root, it was root's, and nobody else
    /// could remove it from a sticky directory.</summary>
    [Fact]
    public void ARenameWhiteoutLeavesAWhiteoutOwnedByTheRequester()
    {
        Assert.Equal(0u, Libc.GetEuid());
        using var f = new ShareFixture();
        Directory.CreateDirectory(f.HostPath("tmp"));
        ShareFixture.Chmod(f.HostPath("tmp"), 0x3FF); // 01777
        File.WriteAllText(f.HostPath("tmp/mine"), "x");
        ShareFixture.Chown(f.HostPath("tmp/mine"), 1000, 1000);
        FuseEntryOut tmp = f.Client.LookupOk(Root, "tmp");
        f.Client.Uid = 1000;
        f.Client.Gid = 1000;

        Assert.Equal(0, f.Client.Rename(tmp.NodeId, "mine", tmp.NodeId, "moved", Libc.RENAME_WHITEOUT).Error);

        var whiteout = ShareFixture.HostStat(f.HostPath("tmp/mine"));
        Assert.Equal(Libc.S_IFCHR, whiteout.Mode & Libc.S_IFMT);
        Assert.Equal(1000u, whiteout.Uid);
        Assert.Equal(1000u, whiteout.Gid);
        Assert.Equal(0, f.Client.Unlink(tmp.NodeId, "mine").Error);
    }

    [Fact]
    public void SubmountsAreAnnouncedAndRenameAcrossThemIsExdev()
    {
        using var f = new ShareFixture();
        Directory.CreateDirectory(f.HostPath("mnt"));
        Directory.CreateDirectory(f.HostPath("plain"));
        File.WriteAllText(f.HostPath("file"), "x");
        HostMount.Tmpfs(f.HostPath("mnt"));
        try
        {
            FuseEntryOut mnt = f.Client.LookupOk(Root, "mnt");
            FuseEntryOut plain = f.Client.LookupOk(Root, "plain");
            Assert.Equal((uint)FuseAttrFlags.Submount, mnt.Attr.Flags & (uint)FuseAttrFlags.Submount);
            Assert.Equal(0u, plain.Attr.Flags);
            Assert.Equal(Errno.EXDEV, f.Client.Rename(Root, "file", mnt.NodeId, "file").Errno);
            Assert.True(File.Exists(f.HostPath("file")));
            Assert.Equal(Errno.EXDEV, f.Client.Link(f.Client.LookupOk(Root, "file").NodeId, mnt.NodeId, "l").Errno);
            // Without announce-submounts the flag is not set.
            using var quiet = new FuseServer(new PassthroughOptions { SharedDir = f.Share, AnnounceSubmounts = false });
            var client = new FuseTestClient(quiet);
            client.Init();
            Assert.Equal(0u, client.LookupOk(Root, "mnt").Attr.Flags);
        }
        finally
        {
            HostMount.Unmount(f.HostPath("mnt"));
        }
    }

    [Fact]
    public void LinkCreatesAHardLinkAndRefusesDirectories()
    {
        using var f = new ShareFixture();
        File.WriteAllText(f.HostPath("f"), "data");
        Directory.CreateDirectory(f.HostPath("d"));
        FuseEntryOut file = f.Client.LookupOk(Root, "f");
        FuseEntryOut dir = f.Client.LookupOk(Root, "d");
        FuseEntryOut link = f.Client.Link(file.NodeId, dir.NodeId, "hard").Ok().Read<FuseEntryOut>();
        Assert.Equal(file.NodeId, link.NodeId);
        Assert.Equal(ShareFixture.HostStat(f.HostPath("f")).Ino, ShareFixture.HostStat(f.HostPath("d/hard")).Ino);
        Assert.Equal(Errno.EPERM, f.Client.Link(dir.NodeId, Root, "dirlink").Errno);
        Assert.Equal(Errno.EEXIST, f.Client.Link(file.NodeId, Root, "f").Errno);
    }

    [Fact]
    public void SetattrChangesModeOwnerSizeAndTimes()
    {
        using var f = new ShareFixture();
        File.WriteAllBytes(f.HostPath("f"), new byte[100]);
        FuseEntryOut e = f.Client.LookupOk(Root, "f");
        var mode = f.Client.Setattr(e.NodeId, new FuseSetattrIn { Valid = (uint)FuseSetattrValid.Mode, Mode = Libc.S_IFREG | 0x1C9 }).Ok().Read<FuseAttrOut>();
        Assert.Equal(Libc.S_IFREG | 0x1C9u, mode.Attr.Mode);
        Assert.Equal(0x1C9u, ShareFixture.HostStat(f.HostPath("f")).Mode & 0xFFFu);

        var size = f.Client.Setattr(e.NodeId, new FuseSetattrIn { Valid = (uint)FuseSetattrValid.Size, FileSize = 10 }).Ok().Read<FuseAttrOut>();
        Assert.Equal(10UL, size.Attr.FileSize);
        Assert.Equal(10, new FileInfo(f.HostPath("f")).Length);

        var owner = f.Client.Setattr(e.NodeId, new FuseSetattrIn { Valid = (uint)(FuseSetattrValid.Uid | FuseSetattrValid.Gid), Uid = 1234, Gid = 5678 }).Ok().Read<FuseAttrOut>();
        Assert.Equal((1234u, 5678u), (owner.Attr.Uid, owner.Attr.Gid));
        Statx st = ShareFixture.HostStat(f.HostPath("f"));
        Assert.Equal((1234u, 5678u), (st.Uid, st.Gid));

        var times = f.Client.Setattr(e.NodeId, new FuseSetattrIn
        {
            Valid = (uint)(FuseSetattrValid.Atime | FuseSetattrValid.Mtime),
            Atime = 1_000_000_000,
            AtimeNsec = 5,
            Mtime = 1_100_000_000,
            MtimeNsec = 7,
        }).Ok().Read<FuseAttrOut>();
        Assert.Equal((1_100_000_000UL, 7u), (times.Attr.Mtime, times.Attr.MtimeNsec));
        st = ShareFixture.HostStat(f.HostPath("f"));
        Assert.Equal((1_000_000_000L, 5u), (st.Atime.Sec, st.Atime.Nsec));
        Assert.Equal(1_100_000_000L, st.Mtime.Sec);

        var now = f.Client.Setattr(e.NodeId, new FuseSetattrIn { Valid = (uint)(FuseSetattrValid.Mtime | FuseSetattrValid.MtimeNow) }).Ok().Read<FuseAttrOut>();
        Assert.True(now.Attr.Mtime > 1_600_000_000UL);

        // Through an open handle (FATTR_FH): ftruncate on the handle.
        ulong fh = f.Client.Open(e.NodeId, Libc.O_RDWR).Ok().Read<FuseOpenOut>().Fh;
        f.Client.Setattr(e.NodeId, new FuseSetattrIn { Valid = (uint)(FuseSetattrValid.Size | FuseSetattrValid.Fh), Fh = fh, FileSize = 3 }).Ok();
        Assert.Equal(3, new FileInfo(f.HostPath("f")).Length);
        Assert.Equal(Errno.EBADF, f.Client.Setattr(e.NodeId, new FuseSetattrIn { Valid = (uint)(FuseSetattrValid.Size | FuseSetattrValid.Fh), Fh = fh + 100, FileSize = 1 }).Errno);

        Directory.CreateDirectory(f.HostPath("d"));
        FuseEntryOut d = f.Client.LookupOk(Root, "d");
        Assert.Equal(Errno.EISDIR, f.Client.Setattr(d.NodeId, new FuseSetattrIn { Valid = (uint)FuseSetattrValid.Size, FileSize = 0 }).Errno);
    }

    [Fact]
    public void SetattrOnSymlinkChangesTheLinkNotTheTarget()
    {
        using var f = new ShareFixture();
        File.WriteAllText(f.HostPath("target"), "t");
        File.CreateSymbolicLink(f.HostPath("link"), "target");
        FuseEntryOut l = f.Client.LookupOk(Root, "link");
        f.Client.Setattr(l.NodeId, new FuseSetattrIn { Valid = (uint)(FuseSetattrValid.Uid | FuseSetattrValid.Gid), Uid = 4321, Gid = 4321 }).Ok();
        Assert.Equal(4321u, ShareFixture.HostStat(f.HostPath("link")).Uid);
        Assert.Equal(0u, ShareFixture.HostStat(f.HostPath("target")).Uid);
        f.Client.Setattr(l.NodeId, new FuseSetattrIn { Valid = (uint)FuseSetattrValid.Mtime, Mtime = 1_200_000_000 }).Ok();
        Assert.Equal(1_200_000_000L, ShareFixture.HostStat(f.HostPath("link")).Mtime.Sec);
        Assert.NotEqual(1_200_000_000L, ShareFixture.HostStat(f.HostPath("target")).Mtime.Sec);
    }

    [Fact]
    public unsafe void StatfsAndStatxMatchTheHost()
    {
        using var f = new ShareFixture();
        var sf = f.Client.Statfs(Root).Ok().Read<FuseStatfsOut>();
        StatFs host;
        fixed (byte* p = Encoding.UTF8.GetBytes(f.Share + "\0"))
        {
            int fd = Libc.OpenAt(Libc.AT_FDCWD, p, Libc.O_PATH, 0);
            Assert.True(fd >= 0);
            Assert.Equal(0, Libc.Fstatfs(fd, &host));
            Libc.Close(fd);
        }
        Assert.Equal(host.Blocks, sf.St.Blocks);
        Assert.Equal((uint)host.BlockSize, sf.St.Bsize);
        Assert.Equal((uint)host.NameLength, sf.St.NameLen);
        Assert.Equal(host.Files, sf.St.Files);

        File.WriteAllBytes(f.HostPath("x"), new byte[77]);
        FuseEntryOut e = f.Client.LookupOk(Root, "x");
        FuseReply sx = f.Client.Send(FuseOpcode.Statx, e.NodeId, new FuseArgs().Add(new FuseStatxIn { SxMask = Libc.STATX_BASIC_STATS | Libc.STATX_BTIME }));
        var stx = sx.Ok().Read<FuseStatxOut>();
        Assert.Equal(77UL, stx.Stat.FileSize);
        Assert.Equal(ShareFixture.HostStat(f.HostPath("x")).Ino, stx.Stat.Ino);
        Assert.Equal(Libc.S_IFREG, stx.Stat.Mode & Libc.S_IFMT);
    }

    [Fact]
    public void AccessUsesModeBitsAndTheCaller()
    {
        using var f = new ShareFixture();
        File.WriteAllText(f.HostPath("f"), "x");
        FuseEntryOut e = f.Client.LookupOk(Root, "f");
        f.Client.Setattr(e.NodeId, new FuseSetattrIn { Valid = (uint)(FuseSetattrValid.Mode | FuseSetattrValid.Uid | FuseSetattrValid.Gid), Mode = 0x1A0, Uid = 1000, Gid = 1000 }).Ok();
        Assert.Equal(0, f.Client.Access(e.NodeId, Libc.R_OK | Libc.W_OK).Error); // root
        Assert.Equal(Errno.EACCES, f.Client.Access(e.NodeId, Libc.X_OK).Errno); // root, no x bit anywhere
        f.Client.Uid = 1000;
        f.Client.Gid = 1000;
        Assert.Equal(0, f.Client.Access(e.NodeId, Libc.R_OK | Libc.W_OK).Error);
        f.Client.Uid = 2000;
        Assert.Equal(0, f.Client.Access(e.NodeId, Libc.R_OK).Error); // group read
        Assert.Equal(Errno.EACCES, f.Client.Access(e.NodeId, Libc.W_OK).Errno);
        f.Client.Gid = 2000;
        Assert.Equal(Errno.EACCES, f.Client.Access(e.NodeId, Libc.R_OK).Errno);
        Assert.Equal(0, f.Client.Access(e.NodeId, Libc.F_OK).Error);
    }

    [Fact]
    public void NamesAreValidatedAsSingleComponents()
    {
        using var f = new ShareFixture();
        Directory.CreateDirectory(f.HostPath("d"));
        File.WriteAllText(f.HostPath("d/f"), "x");
        Assert.Equal(Errno.EINVAL, f.Client.Lookup(Root, "d/f").Errno);
        Assert.Equal(Errno.ENOENT, f.Client.Lookup(Root, "").Errno);
        Assert.Equal(Errno.ENAMETOOLONG, f.Client.Lookup(Root, new string('a', 256)).Errno);
        Assert.Equal(Errno.ENOENT, f.Client.Lookup(Root, new string('a', 255)).Errno);
        Assert.Equal(Errno.EINVAL, f.Client.Mkdir(Root, "x/y").Errno);
        Assert.Equal(Errno.EINVAL, f.Client.Create(Root, "../escape", Libc.O_RDWR | Libc.O_CREAT).Errno);
        Assert.Equal(Errno.EINVAL, f.Client.Symlink(Root, "a/b", "t").Errno);
        Assert.False(File.Exists(Path.Combine(f.Base, "escape")));
        // "." is the directory itself.
        FuseEntryOut d = f.Client.LookupOk(Root, "d");
        Assert.Equal(d.NodeId, f.Client.LookupOk(d.NodeId, ".").NodeId);
        // ".." below the root is the parent inside the share.
        Assert.Equal(Root, f.Client.LookupOk(d.NodeId, "..").NodeId);
    }
}
