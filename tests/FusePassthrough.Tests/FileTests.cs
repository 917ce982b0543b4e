using System.Text;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Xunit;

namespace Vhostfsd.FusePassthrough.Tests;

/// <summary>Open files: open/create/read/write/release and the calls on handles.</summary>
public class FileTests
{
    private const ulong Root = FuseConstants.RootId;

    [Fact]
    public void OpenChecksTypeAndFlags()
    {
        using var f = new ShareFixture();
        File.WriteAllText(f.HostPath("f"), "hello world");
        Directory.CreateDirectory(f.HostPath("d"));
        File.CreateSymbolicLink(f.HostPath("l"), "f");
        FuseEntryOut file = f.Client.LookupOk(Root, "f");
        FuseEntryOut dir = f.Client.LookupOk(Root, "d");
        FuseEntryOut link = f.Client.LookupOk(Root, "l");
        Assert.Equal(Errno.EISDIR, f.Client.Open(dir.NodeId, Libc.O_RDONLY).Errno);
        Assert.Equal(Errno.ELOOP, f.Client.Open(link.NodeId, Libc.O_RDONLY).Errno);
        Assert.Equal(Errno.EINVAL, f.Client.Open(file.NodeId, Libc.O_ACCMODE).Errno);
        Assert.Equal(Errno.EBADF, f.Client.Open(555555, Libc.O_RDONLY).Errno);

        FuseReply trunc = f.Client.Open(file.NodeId, Libc.O_WRONLY | Libc.O_TRUNC).Ok();
        Assert.Equal(0, new FileInfo(f.HostPath("f")).Length);
        ulong fh = trunc.Read<FuseOpenOut>().Fh;
        // Opened write-only: reads fail as on the host.
        Assert.Equal(Errno.EBADF, f.Client.Read(file.NodeId, fh, 0, 10).Errno);
        // fh of another node is refused.
        Assert.Equal(Errno.EBADF, f.Client.Write(dir.NodeId, fh, 0, "x"u8).Errno);
        Assert.Equal(0, f.Client.Release(file.NodeId, fh).Error);
        Assert.Equal(Errno.EBADF, f.Client.Release(file.NodeId, fh).Errno);
    }

    [Fact]
    public void DeviceNodesAreNeverOpenedOnTheHost()
    {
        using var f = new ShareFixture();
        FuseEntryOut dev = f.Client.Mknod(Root, "null", Libc.S_IFCHR | 0x1B6, FuseConstants.EncodeDev(1, 3)).Ok().Read<FuseEntryOut>();
        FuseEntryOut fifo = f.Client.Mknod(Root, "fifo", Libc.S_IFIFO | 0x1B6).Ok().Read<FuseEntryOut>();
        Assert.Equal(Errno.EACCES, f.Client.Open(dev.NodeId, Libc.O_RDWR).Errno);
        Assert.Equal(Errno.EACCES, f.Client.Open(fifo.NodeId, Libc.O_RDONLY).Errno);
    }

    [Fact]
    public void CreateOverAnExistingFifoOrDeviceNodeNeverOpensIt()
    {
        using var f = new ShareFixture();
        f.Client.Mknod(Root, "null", Libc.S_IFCHR | 0x1B6, FuseConstants.EncodeDev(1, 3)).Ok();
        f.Client.Mknod(Root, "fifo", Libc.S_IFIFO | 0x1B6).Ok();
        Directory.CreateDirectory(f.HostPath("dir"));
        File.WriteAllText(f.HostPath("file"), "kept");
        File.CreateSymbolicLink(f.HostPath("link"), "file");
        // Without O_EXCL, CREATE of an existing name opens what is there: a FIFO opened for writing
        // would block the worker until a reader came, so each call runs on its own thread.
        (string Name, int Flags, Errno Expected)[] cases =
        [
            ("fifo", Libc.O_WRONLY | Libc.O_CREAT, Errno.EACCES),
            ("fifo", Libc.O_RDONLY | Libc.O_CREAT, Errno.EACCES),
            ("null", Libc.O_RDWR | Libc.O_CREAT, Errno.EACCES),
            ("dir", Libc.O_RDWR | Libc.O_CREAT, Errno.EISDIR),
            ("link", Libc.O_RDWR | Libc.O_CREAT, Errno.ELOOP),
        ];
        foreach (var (name, flags, expected) in cases)
        {
            Errno got = Errno.OK;
            var caller = new Thread(() => got = f.Client.Create(Root, name, flags).Errno) { IsBackground = true };
            caller.Start();
            Assert.True(caller.Join(TimeSpan.FromSeconds(10)), $"CREATE of the existing {name} did not return");
            Assert.Equal(expected, got);
        }
        // An existing regular file is opened (and truncated when asked), as open(2) with O_CREAT does.
        FuseReply opened = f.Client.Create(Root, "file", Libc.O_RDWR | Libc.O_CREAT | Libc.O_TRUNC).Ok();
        Assert.Equal(0, new FileInfo(f.HostPath("file")).Length);
        Assert.Equal(0, f.Client.Release(opened.Read<FuseEntryOut>().NodeId, opened.Read<FuseOpenOut>(FuseEntryOut.Size).Fh).Error);
        // O_EXCL still refuses an existing name.
        Assert.Equal(Errno.EEXIST, f.Client.Create(Root, "file", Libc.O_RDWR | Libc.O_CREAT | Libc.O_EXCL).Errno);
    }

    [Fact]
    public void CachePolicySetsOpenFlags()
    {
        foreach (var (cache, file, dir, timeout) in new[]
        {
            (CachePolicy.Never, FuseOpenOutFlags.DirectIo | FuseOpenOutFlags.ParallelDirectWrites, FuseOpenOutFlags.None, 0UL),
            (CachePolicy.Metadata, FuseOpenOutFlags.DirectIo | FuseOpenOutFlags.ParallelDirectWrites, FuseOpenOutFlags.CacheDir | FuseOpenOutFlags.KeepCache, 86400UL),
            (CachePolicy.Auto, FuseOpenOutFlags.None, FuseOpenOutFlags.None, 1UL),
            (CachePolicy.Always, FuseOpenOutFlags.KeepCache, FuseOpenOutFlags.KeepCache | FuseOpenOutFlags.CacheDir, 86400UL),
        })
        {
            using var f = new ShareFixture(makeOptions: s => new PassthroughOptions { SharedDir = s, Cache = cache });
            File.WriteAllText(f.HostPath("f"), "x");
            FuseEntryOut e = f.Client.LookupOk(Root, "f");
            Assert.Equal(timeout, e.EntryValid);
            Assert.Equal(timeout, e.AttrValid);
            Assert.Equal((uint)file, f.Client.Open(e.NodeId, Libc.O_RDONLY).Ok().Read<FuseOpenOut>().OpenFlags);
            Assert.Equal((uint)dir, f.Client.Opendir(Root).Ok().Read<FuseOpenOut>().OpenFlags);
            var created = f.Client.Create(Root, "c", Libc.O_RDWR | Libc.O_CREAT).Ok();
            Assert.Equal((uint)file, created.Read<FuseOpenOut>(FuseEntryOut.Size).OpenFlags);
            bool readdirplus = FuseConstants.JoinInitFlags(f.Init.Flags, f.Init.Flags2).HasFlag(FuseInitFlags.DoReaddirplus);
            Assert.Equal(cache != CachePolicy.Never, readdirplus);
        }
    }

    [Fact]
    public void CreateHonoursExclusiveAndExisting()
    {
        using var f = new ShareFixture();
        var (e1, fh1) = f.Client.CreateOk(Root, "f", Libc.O_RDWR | Libc.O_CREAT, 0x180);
        Assert.Equal(Libc.S_IFREG | 0x180u, e1.Attr.Mode);
        Assert.Equal(0x180u, ShareFixture.HostStat(f.HostPath("f")).Mode & 0xFFFu);
        f.Client.Write(e1.NodeId, fh1, 0, "abc"u8).Ok();
        Assert.Equal(Errno.EEXIST, f.Client.Create(Root, "f", Libc.O_RDWR | Libc.O_CREAT | Libc.O_EXCL).Errno);
        // Without O_EXCL an existing file is opened (same node).
        var (e2, _) = f.Client.CreateOk(Root, "f", Libc.O_RDWR | Libc.O_CREAT);
        Assert.Equal(e1.NodeId, e2.NodeId);
        Assert.Equal("abc", File.ReadAllText(f.HostPath("f")));
        // A symlink at the name is not followed.
        File.CreateSymbolicLink(f.HostPath("l"), Path.Combine(f.Outside, "newfile"));
        Assert.Equal(Errno.ELOOP, f.Client.Create(Root, "l", Libc.O_RDWR | Libc.O_CREAT).Errno);
        Assert.False(File.Exists(Path.Combine(f.Outside, "newfile")));
        Assert.Equal(Errno.EBADF, f.Client.Create(999999, "x", Libc.O_RDWR | Libc.O_CREAT).Errno);
        FuseEntryOut regular = f.Client.LookupOk(Root, "f");
        Assert.Equal(Errno.ENOTDIR, f.Client.Create(regular.NodeId, "x", Libc.O_RDWR | Libc.O_CREAT).Errno);
    }

    [Fact]
    public void AppendWritesGoToTheEndEvenIfTheFileGrewOnTheHost()
    {
        using var f = new ShareFixture();
        File.WriteAllText(f.HostPath("log"), "one\n");
        FuseEntryOut e = f.Client.LookupOk(Root, "log");
        ulong fh = f.Client.Open(e.NodeId, Libc.O_WRONLY | Libc.O_APPEND).Ok().Read<FuseOpenOut>().Fh;
        File.AppendAllText(f.HostPath("log"), "host\n");
        // The guest thinks the file is 4 bytes long; O_APPEND on its open flags makes it an append.
        f.Client.Write(e.NodeId, fh, 4, "two\n"u8, openFlags: Libc.O_WRONLY | Libc.O_APPEND).Ok();
        Assert.Equal("one\nhost\ntwo\n", File.ReadAllText(f.HostPath("log")));
        // A write without O_APPEND uses the offset.
        f.Client.Write(e.NodeId, fh, 0, "ONE"u8).Ok();
        Assert.Equal("ONE\nhost\ntwo\n", File.ReadAllText(f.HostPath("log")));
    }

    [Fact]
    public void LargeReadAndWriteAreZeroCopyAndComplete()
    {
        using var f = new ShareFixture();
        var (e, fh) = f.Client.CreateOk(Root, "big");
        byte[] data = new byte[FuseServer.MaxWrite];
        new Random(7).NextBytes(data);
        Assert.Equal((uint)data.Length, f.Client.Write(e.NodeId, fh, 4096, data).Ok().Read<FuseWriteOut>().Length);
        byte[] host = File.ReadAllBytes(f.HostPath("big"));
        Assert.Equal(4096 + data.Length, host.Length);
        Assert.Equal(data, host[4096..]);
        Assert.Equal(data, f.Client.Read(e.NodeId, fh, 4096, (uint)data.Length).Ok().Payload);
        // Reading past the end returns what there is.
        Assert.Equal(100, f.Client.Read(e.NodeId, fh, (ulong)host.Length - 100, 4096).Ok().Payload.Length);
        Assert.Empty(f.Client.Read(e.NodeId, fh, (ulong)host.Length + 10, 4096).Ok().Payload);
        Assert.Equal(Errno.EINVAL, f.Client.Read(e.NodeId, fh, 0, FuseServer.MaxWrite + 1).Errno);
    }

    [Fact]
    public void FsyncFlushFallocateLseekCopyFileRange()
    {
        using var f = new ShareFixture();
        var (e, fh) = f.Client.CreateOk(Root, "f");
        f.Client.Write(e.NodeId, fh, 0, Encoding.ASCII.GetBytes(new string('a', 8192))).Ok();
        Assert.Equal(0, f.Client.Fsync(e.NodeId, fh).Error);
        Assert.Equal(0, f.Client.Fsync(e.NodeId, fh, datasync: true).Error);
        Assert.Equal(0, f.Client.Flush(e.NodeId, fh, 1).Error);
        Assert.Equal(Errno.EBADF, f.Client.Fsync(e.NodeId, fh + 1000).Errno);

        // fallocate beyond the end (no KEEP_SIZE) grows the file.
        Assert.Equal(0, f.Client.Send(FuseOpcode.Fallocate, e.NodeId, new FuseArgs().Add(new FuseFallocateIn { Fh = fh, Offset = 0, Length = 1 << 20 })).Error);
        Assert.Equal(1 << 20, new FileInfo(f.HostPath("f")).Length);

        // A hole after the data: SEEK_DATA from 0 is 0, SEEK_HOLE is at or after the data.
        File.WriteAllBytes(f.HostPath("sparse"), []);
        using (var fs = new FileStream(f.HostPath("sparse"), FileMode.Open))
        {
            fs.SetLength(1 << 22);
            fs.Position = 1 << 21;
            fs.Write(new byte[4096]);
        }
        FuseEntryOut sparse = f.Client.LookupOk(Root, "sparse");
        ulong sfh = f.Client.Open(sparse.NodeId, Libc.O_RDONLY).Ok().Read<FuseOpenOut>().Fh;
        ulong data = f.Client.Send(FuseOpcode.Lseek, sparse.NodeId, new FuseArgs().Add(new FuseLseekIn { Fh = sfh, Offset = 0, Whence = Libc.SEEK_DATA })).Ok().Read<FuseLseekOut>().Offset;
        Assert.Equal(1UL << 21, data);
        ulong hole = f.Client.Send(FuseOpcode.Lseek, sparse.NodeId, new FuseArgs().Add(new FuseLseekIn { Fh = sfh, Offset = data, Whence = Libc.SEEK_HOLE })).Ok().Read<FuseLseekOut>().Offset;
        Assert.True(hole > data);
        Assert.Equal(Errno.ENXIO, f.Client.Send(FuseOpcode.Lseek, sparse.NodeId, new FuseArgs().Add(new FuseLseekIn { Fh = sfh, Offset = 1 << 23, Whence = Libc.SEEK_DATA })).Errno);

        var (dst, dfh) = f.Client.CreateOk(Root, "copy");
        var copy = new FuseCopyFileRangeIn { FhIn = fh, OffIn = 100, NodeIdOut = dst.NodeId, FhOut = dfh, OffOut = 10, Len = 50 };
        Assert.Equal(50u, f.Client.Send(FuseOpcode.CopyFileRange, e.NodeId, new FuseArgs().Add(copy)).Ok().Read<FuseWriteOut>().Length);
        byte[] copied = File.ReadAllBytes(f.HostPath("copy"));
        Assert.Equal(60, copied.Length);
        Assert.All(copied[10..], b => Assert.Equal((byte)'a', b));
        copy.Flags = 1;
        Assert.Equal(Errno.EINVAL, f.Client.Send(FuseOpcode.CopyFileRange, e.NodeId, new FuseArgs().Add(copy)).Errno);
        copy.Flags = 0;
        copy.NodeIdOut = e.NodeId;
        Assert.Equal(Errno.EBADF, f.Client.Send(FuseOpcode.CopyFileRange, e.NodeId, new FuseArgs().Add(copy)).Errno);

        Assert.Equal(0, f.Client.Send(FuseOpcode.Syncfs, Root, new FuseArgs().Add(new FuseSyncfsIn())).Error);
    }

    [Fact]
    public void TmpfileCreatesAnUnnamedFile()
    {
        using var f = new ShareFixture();
        var args = new FuseArgs().Add(new FuseCreateIn { Flags = (uint)Libc.O_RDWR, Mode = Libc.S_IFREG | 0x180 }).Name("/");
        FuseReply reply = f.Client.Send(FuseOpcode.Tmpfile, Root, args).Ok();
        var entry = reply.Read<FuseEntryOut>();
        ulong fh = reply.Read<FuseOpenOut>(FuseEntryOut.Size).Fh;
        Assert.Equal(0u, entry.Attr.Nlink);
        f.Client.Write(entry.NodeId, fh, 0, "tmp"u8).Ok();
        Assert.Equal("tmp", Encoding.ASCII.GetString(f.Client.Read(entry.NodeId, fh, 0, 10).Ok().Payload));
        Assert.Empty(Directory.GetFileSystemEntries(f.Share));
        // Linking it gives it a name.
        Assert.Equal(0, f.Client.Link(entry.NodeId, Root, "named").Error);
        Assert.Equal("tmp", File.ReadAllText(f.HostPath("named")));
    }

    [Fact]
    public void ReadOnlyShareRefusesChanges()
    {
        using var f = new ShareFixture(makeOptions: s => new PassthroughOptions { SharedDir = s, ReadOnly = true });
        File.WriteAllText(f.HostPath("f"), "x");
        FuseEntryOut e = f.Client.LookupOk(Root, "f");
        Assert.Equal(Errno.EROFS, f.Client.Open(e.NodeId, Libc.O_RDWR).Errno);
        Assert.Equal(Errno.EROFS, f.Client.Mkdir(Root, "d").Errno);
        Assert.Equal(Errno.EROFS, f.Client.Create(Root, "c", Libc.O_RDWR | Libc.O_CREAT).Errno);
        Assert.Equal(Errno.EROFS, f.Client.Unlink(Root, "f").Errno);
        ulong fh = f.Client.Open(e.NodeId, Libc.O_RDONLY).Ok().Read<FuseOpenOut>().Fh;
        Assert.Equal("x", Encoding.ASCII.GetString(f.Client.Read(e.NodeId, fh, 0, 10).Ok().Payload));
        Assert.Equal(Errno.EROFS, f.Client.Write(e.NodeId, fh, 0, "y"u8).Errno);
        Assert.Equal("x", File.ReadAllText(f.HostPath("f")));
    }

    [Fact]
    public void WritebackOpensWriteOnlyFilesForReading()
    {
        using var f = new ShareFixture(makeOptions: s => new PassthroughOptions { SharedDir = s, Writeback = true });
        Assert.True(FuseConstants.JoinInitFlags(f.Init.Flags, f.Init.Flags2).HasFlag(FuseInitFlags.WritebackCache));
        File.WriteAllText(f.HostPath("f"), "page");
        FuseEntryOut e = f.Client.LookupOk(Root, "f");
        ulong fh = f.Client.Open(e.NodeId, Libc.O_WRONLY).Ok().Read<FuseOpenOut>().Fh;
        Assert.Equal("page", Encoding.ASCII.GetString(f.Client.Read(e.NodeId, fh, 0, 10).Ok().Payload));
    }

    [Fact]
    public void KillprivV2ClearsSetuidOnWriteAndTruncate()
    {
        using var f = new ShareFixture(makeOptions: s => new PassthroughOptions { SharedDir = s, KillprivV2 = true });
        File.WriteAllText(f.HostPath("suid"), "x");
        ShareFixture.Chmod(f.HostPath("suid"), 0xDED); // 06755
        FuseEntryOut e = f.Client.LookupOk(Root, "suid");
        ulong fh = f.Client.Open(e.NodeId, Libc.O_RDWR).Ok().Read<FuseOpenOut>().Fh;
        f.Client.Write(e.NodeId, fh, 0, "y"u8, writeFlags: (uint)FuseWriteFlags.KillSuidgid).Ok();
        Assert.Equal(0x1EDu, ShareFixture.HostStat(f.HostPath("suid")).Mode & 0xFFFu);
        ShareFixture.Chmod(f.HostPath("suid"), 0x9ED); // 04755
        f.Client.Setattr(e.NodeId, new FuseSetattrIn { Valid = (uint)(FuseSetattrValid.Size | FuseSetattrValid.KillSuidgid), FileSize = 0 }).Ok();
        Assert.Equal(0x1EDu, ShareFixture.HostStat(f.HostPath("suid")).Mode & 0xFFFu);
    }

    /// <summary>KILL_SUIDGID means "the guest's caller lacks CAP_FSETID": the write, truncation or chown
    /// must then drop exactly what the kernel drops for such a caller, as part of the operation —
    /// S_ISUID, and S_ISGID even without group execute when the caller is not in the file's group
    /// (a 02644 file of group 1234 here) — and an open without O_TRUNC or a write without the flag
    /// keeps both.</summary>
    [Fact]
    public void KillprivV2DropsWhatTheKernelDropsForACallerWithoutFsetid()
    {
        Assert.Equal(0u, Libc.GetEuid());
        using var f = new ShareFixture(makeOptions: s => new PassthroughOptions { SharedDir = s, KillprivV2 = true });
        Assert.True(FuseConstants.JoinInitFlags(f.Init.Flags, f.Init.Flags2).HasFlag(FuseInitFlags.HandleKillprivV2));
        File.WriteAllText(f.HostPath("f"), "data");
        ShareFixture.Chown(f.HostPath("f"), 0, 1234);
        FuseEntryOut e = f.Client.LookupOk(Root, "f");
        ulong fh = f.Client.Open(e.NodeId, Libc.O_RDWR).Ok().Read<FuseOpenOut>().Fh;
        uint Mode() => ShareFixture.HostStat(f.HostPath("f")).Mode & 0xFFFu;

        ShareFixture.Chmod(f.HostPath("f"), 0xDA4); // 06644
        f.Client.Write(e.NodeId, fh, 0, "y"u8).Ok();
        Assert.Equal(0xDA4u, Mode());
        f.Client.Write(e.NodeId, fh, 0, "y"u8, writeFlags: (uint)FuseWriteFlags.KillSuidgid).Ok();
        Assert.Equal(0x1A4u, Mode());

        ShareFixture.Chmod(f.HostPath("f"), 0xDA4);
        f.Client.Setattr(e.NodeId, new FuseSetattrIn { Valid = (uint)(FuseSetattrValid.Size | FuseSetattrValid.KillSuidgid), FileSize = 1 }).Ok();
        Assert.Equal(0x1A4u, Mode());

        ShareFixture.Chmod(f.HostPath("f"), 0xDA4);
        f.Client.Setattr(e.NodeId, new FuseSetattrIn { Valid = (uint)(FuseSetattrValid.Gid | FuseSetattrValid.KillSuidgid), Gid = 1235 }).Ok();
        Assert.Equal(0x1A4u, Mode());

        ShareFixture.Chmod(f.HostPath("f"), 0xDA4);
        var open = new FuseArgs().Add(new FuseOpenIn { Flags = Libc.O_RDWR | Libc.O_TRUNC, OpenFlags = (uint)FuseOpenInFlags.KillSuidgid });
        f.Client.Send(FuseOpcode.Open, e.NodeId, open).Ok();
        Assert.Equal(0x1A4u, Mode());
        Assert.Equal(0L, new FileInfo(f.HostPath("f")).Length);
    }

    /// <summary>A client kernel marks a direct (uncached) WRITE by a caller without CAP_FSETID with
    /// KILL_SUIDGID whether or not HANDLE_KILLPRIV_V2 was agreed, and clears nothing itself on that
    /// path. Honoured only under v2, a group member's overwrite of a setuid-root file through a
    /// `--cache never` share kept it setuid.</summary>
    [Fact]
    public void A_write_marked_kill_suidgid_clears_setuid_without_killpriv_v2()
    {
        Assert.Equal(0u, Libc.GetEuid());
        using var f = new ShareFixture();
        Assert.False(FuseConstants.JoinInitFlags(f.Init.Flags, f.Init.Flags2).HasFlag(FuseInitFlags.HandleKillprivV2));
        File.WriteAllText(f.HostPath("tool"), "original");
        ShareFixture.Chown(f.HostPath("tool"), 0, 1234);
        ShareFixture.Chmod(f.HostPath("tool"), 0x9FD); // 04775
        FuseEntryOut e = f.Client.LookupOk(Root, "tool");
        ulong fh = f.Client.Open(e.NodeId, Libc.O_RDWR).Ok().Read<FuseOpenOut>().Fh;

        f.Client.Write(e.NodeId, fh, 0, "y"u8).Ok();
        Assert.Equal(0x9FDu, ShareFixture.HostStat(f.HostPath("tool")).Mode & 0xFFFu);
        f.Client.Write(e.NodeId, fh, 0, "payload"u8, writeFlags: (uint)FuseWriteFlags.KillSuidgid).Ok();
        Assert.Equal(0x1FDu, ShareFixture.HostStat(f.HostPath("tool")).Mode & 0xFFFu);
    }

    /// <summary>With HANDLE_KILLPRIV_V2 the guest kernel leaves clearing S_ISUID/S_ISGID to the daemon
    /// for every data change, but only WRITE, SETATTR and OPEN carry KILL_SUIDGID: COPY_FILE_RANGE
    /// and FALLOCATE come without it (the guest's file_modified() turns into nothing on the wire).
    /// Done as root they kept the bits, so a guest user with write access to another user's setuid
    /// file could replace its contents and keep it setuid. A requester other than root changes data
    /// without CAP_FSETID, as the host kernel would treat that user; root keeps the bits.</summary>
    [Fact]
    public void KillprivV2ClearsSetuidOnCopyAndFallocateByAUserOtherThanRoot()
    {
        Assert.Equal(0u, Libc.GetEuid());
        using var f = new ShareFixture(makeOptions: s => new PassthroughOptions { SharedDir = s, KillprivV2 = true });
        File.WriteAllText(f.HostPath("payload"), "#!/bin/sh\nid\n");
        File.WriteAllText(f.HostPath("victim"), "original contents");
        ShareFixture.Chown(f.HostPath("victim"), 1000, 1234);
        FuseEntryOut src = f.Client.LookupOk(Root, "payload");
        FuseEntryOut dst = f.Client.LookupOk(Root, "victim");
        ulong sfh = f.Client.Open(src.NodeId, Libc.O_RDONLY).Ok().Read<FuseOpenOut>().Fh;
        ulong dfh = f.Client.Open(dst.NodeId, Libc.O_RDWR).Ok().Read<FuseOpenOut>().Fh;
        uint Mode() => ShareFixture.HostStat(f.HostPath("victim")).Mode & 0xFFFu;
        FuseReply Copy() => f.Client.Send(FuseOpcode.CopyFileRange, src.NodeId, new FuseArgs().Add(
            new FuseCopyFileRangeIn { FhIn = sfh, NodeIdOut = dst.NodeId, FhOut = dfh, Len = 8 }));
        FuseReply Allocate(int mode) => f.Client.Send(FuseOpcode.Fallocate, dst.NodeId, new FuseArgs().Add(
            new FuseFallocateIn { Fh = dfh, Offset = 0, Length = 4, Mode = (uint)mode }));
        const int FALLOC_FL_KEEP_SIZE = 1;
        const int FALLOC_FL_PUNCH_HOLE = 2;

        // Root (CAP_FSETID) keeps the bits, as on the host.
        f.Client.Uid = 0;
        f.Client.Gid = 0;
        ShareFixture.Chmod(f.HostPath("victim"), 0xDFD); // 06775
        Copy().Ok();
        Assert.Equal(0xDFDu, Mode());

        // A group member (uid 1001, gid 1234) may write the file; the copy must not keep it setuid.
        f.Client.Uid = 1001;
        f.Client.Gid = 1234;
        Copy().Ok();
        Assert.Equal(0x1FDu, Mode());

        ShareFixture.Chmod(f.HostPath("victim"), 0xDFD);
        Assert.Equal(0, Allocate(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE).Error);
        Assert.Equal(0x1FDu, Mode());
        Assert.StartsWith("\0\0\0\0", File.ReadAllText(f.HostPath("victim")));
    }
}

public class OpenFlagTests
{
    /// <summary>The open flags of this process's fd that points at <paramref name="path"/> and was
    /// opened last (from /proc/self/fdinfo), i.e. the server's handle fd.</summary>
    private static int HostFlagsOf(string path)
    {
        int best = -1;
        int flags = 0;
        foreach (string link in Directory.GetFiles("/proc/self/fd"))
        {
            string? target;
            try
            {
                target = new FileInfo(link).LinkTarget;
            }
            catch (IOException)
            {
                continue;
            }
            if (target != path || !int.TryParse(Path.GetFileName(link), out int fd) || fd < best)
            {
                continue;
            }
            string? line = File.ReadLines($"/proc/self/fdinfo/{fd}").FirstOrDefault(l => l.StartsWith("flags:"));
            if (line is null)
            {
                continue;
            }
            int f = Convert.ToInt32(line["flags:".Length..].Trim(), 8);
            if ((f & Libc.O_PATH) != 0)
            {
                continue;
            }
            best = fd;
            flags = f;
        }
        Assert.True(best >= 0, "no open fd for " + path);
        return flags;
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void DirectIoNoatimeAndAppendAreRewritten(bool allow)
    {
        using var f = new ShareFixture(makeOptions: s => new PassthroughOptions { SharedDir = s, AllowDirectIo = allow, PreserveNoatime = allow });
        File.WriteAllBytes(f.HostPath("f"), new byte[4096]);
        FuseEntryOut e = f.Client.LookupOk(FuseConstants.RootId, "f");
        f.Client.Open(e.NodeId, Libc.O_RDWR | Libc.O_DIRECT | Libc.O_NOATIME | Libc.O_APPEND | Libc.O_SYNC).Ok();
        int flags = HostFlagsOf(f.HostPath("f"));
        Assert.Equal(allow, (flags & Libc.O_DIRECT) != 0);
        Assert.Equal(allow, (flags & Libc.O_NOATIME) != 0);
        // O_APPEND never reaches the host fd (appends use RWF_APPEND per write); O_SYNC does.
        Assert.Equal(0, flags & Libc.O_APPEND);
        Assert.Equal(Libc.O_SYNC, flags & Libc.O_SYNC);
        Assert.Equal(Libc.O_RDWR, flags & Libc.O_ACCMODE);
    }
}
