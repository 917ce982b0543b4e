using System.Runtime.InteropServices;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.GuestKernelShim;

/// <summary>A byte-range lock as fcntl(F_GETLK/F_SETLK) describes it; <see cref="End"/> is inclusive
/// (<see cref="ToEof"/> = to the end of the file).</summary>
public struct FileLockRange
{
    public const int ReadLock = 0;   // F_RDLCK
    public const int WriteLock = 1;  // F_WRLCK
    public const int Unlock = 2;     // F_UNLCK
    public const ulong ToEof = long.MaxValue; // OFFSET_MAX

    public int Type;
    public ulong Start;
    public ulong End;
    public uint Pid;

    public FileLockRange(int type, ulong start, ulong end, uint pid = 0)
    {
        Type = type;
        Start = start;
        End = end;
        Pid = pid;
    }

    public override readonly string ToString() => $"{(Type == ReadLock ? "read" : Type == WriteLock ? "write" : "unlock")} {Start}..{End} pid {Pid}";
}

public sealed partial class FuseFs
{
    /// <summary>flock(2) operations.</summary>
    public const int LockShared = 1;
    public const int LockExclusive = 2;
    public const int LockNonBlocking = 4;
    public const int LockUnlock = 8;

    /// <summary>lseek whence values.</summary>
    public const int SeekSet = 0;
    public const int SeekEnd = 2;
    public const int SeekData = 3;
    public const int SeekHole = 4;

    private readonly LocalLocks _localFlocks = new();

    // ---------------------------------------------------------------- open / create / release

    /// <summary>open(2) of an existing node (fuse_open / fuse_send_open). Flags are filtered as Linux does:
    /// O_CREAT, O_EXCL and O_NOCTTY are never sent, O_TRUNC only with ATOMIC_O_TRUNC (else the file is
    /// truncated with a SETATTR after the open), O_LARGEFILE always. With NO_OPEN_SUPPORT, an ENOSYS from
    /// the daemon switches to no-open mode: later opens send nothing and use handle 0.</summary>
    public Errno Open(FuseNode node, int flags, out FuseFile? file, FuseCaller? caller = null)
    {
        var c = Who(caller);
        file = null;
        var rc = CheckLive(node);
        if (rc != Errno.OK)
        {
            return rc;
        }
        int accmode = flags & Libc.O_ACCMODE;
        if (node.IsDirectory)
        {
            if (accmode != Libc.O_RDONLY || (flags & Libc.O_TRUNC) != 0)
            {
                return Errno.EISDIR;
            }
            return OpenDir(node, out file, c);
        }
        if (node.IsSymlink)
        {
            return Errno.ELOOP;
        }
        if ((flags & Libc.O_DIRECTORY) != 0)
        {
            return Errno.ENOTDIR;
        }
        int mask = accmode switch
        {
            Libc.O_RDONLY => ModeBits.MayRead,
            Libc.O_WRONLY => ModeBits.MayWrite,
            _ => ModeBits.MayRead | ModeBits.MayWrite,
        };
        if ((flags & Libc.O_TRUNC) != 0)
        {
            mask |= ModeBits.MayWrite;
        }
        rc = CheckPermission(node, mask, c);
        if (rc != Errno.OK)
        {
            return rc;
        }
        int sent = (flags & ~(Libc.O_CREAT | Libc.O_EXCL | Libc.O_NOCTTY)) | OLargefile;
        bool truncate = (flags & Libc.O_TRUNC) != 0;
        bool atomicTrunc = Conn.Has(FuseInitFlags.AtomicOTrunc);
        if (truncate && !atomicTrunc)
        {
            sent &= ~Libc.O_TRUNC;
        }
        rc = SendOpen(node, FuseOpcode.Open, sent, truncate && atomicTrunc, c, out file);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (truncate)
        {
            if (atomicTrunc)
            {
                node.InvalidateAttr();
            }
            else
            {
                var change = new SetAttrChange { Size = 0 };
                rc = SetAttrCore(node, ref change, c, file, checkPermission: false, out _);
                if (rc != Errno.OK)
                {
                    Release(file!);
                    file = null;
                    return rc;
                }
            }
        }
        return Errno.OK;
    }

    /// <summary>opendir(3): OPENDIR (no-open mode after ENOSYS with NO_OPENDIR_SUPPORT).</summary>
    public Errno OpenDir(FuseNode node, out FuseFile? dir, FuseCaller? caller = null)
    {
        var c = Who(caller);
        dir = null;
        var rc = CheckLive(node);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (!node.IsDirectory)
        {
            return Errno.ENOTDIR;
        }
        rc = CheckPermission(node, ModeBits.MayRead, c);
        if (rc != Errno.OK)
        {
            return rc;
        }
        // What glibc's opendir passes and the kernel keeps in f_flags.
        const int flags = Libc.O_RDONLY | Libc.O_DIRECTORY | Libc.O_NONBLOCK | OLargefile;
        return SendOpen(node, FuseOpcode.Opendir, flags, false, c, out dir);
    }

    private Errno SendOpen(FuseNode node, FuseOpcode opcode, int flags, bool killPrivOnTrunc, in FuseCaller caller, out FuseFile? file)
    {
        file = null;
        bool isDir = opcode == FuseOpcode.Opendir;
        bool noOpen = isDir ? NoOpendir : NoOpen;
        var outArg = default(FuseOpenOut);
        if (!noOpen)
        {
            var arg = new FuseOpenIn { Flags = (uint)flags };
            if (killPrivOnTrunc && Conn.Has(FuseInitFlags.HandleKillprivV2) && !caller.IsRoot)
            {
                arg.OpenFlags = (uint)FuseOpenInFlags.KillSuidgid;
            }
            var reply = Conn.Send(opcode, node.NodeId, caller, new FuseArgs(Bytes(in arg)),
                MemoryMarshal.AsBytes(new Span<FuseOpenOut>(ref outArg)), FuseReplyShape.Fixed);
            if (!reply.IsOk)
            {
                var supported = isDir ? FuseInitFlags.NoOpendirSupport : FuseInitFlags.NoOpenSupport;
                if (reply.Errno != Errno.ENOSYS || !Conn.Has(supported))
                {
                    return reply.Errno;
                }
                if (isDir)
                {
                    NoOpendir = true;
                }
                else
                {
                    NoOpen = true;
                }
                noOpen = true;
                outArg = default;
            }
        }
        lock (node.Sync)
        {
            node.OpenCount++;
        }
        file = new FuseFile(node, outArg.Fh, flags, (FuseOpenOutFlags)outArg.OpenFlags, isDir, noOpen, caller);
        return Errno.OK;
    }

    /// <summary>open(2) with O_CREAT in a directory (fuse_create_open): one CREATE that makes and opens the
    /// file. The mode is masked by the caller's umask unless DONT_MASK was negotiated (the umask travels
    /// separately then). After ENOSYS, CREATE is not sent again: MKNOD then OPEN instead.</summary>
    public Errno Create(FuseNode dir, string name, int flags, uint mode, out FuseNode? node, out FuseFile? file, FuseCaller? caller = null)
    {
        var c = Who(caller);
        node = null;
        file = null;
        var rc = PrepareCreate(dir, c);
        if (rc != Errno.OK)
        {
            return rc;
        }
        uint perm = CreationPerm(mode, c);
        if (NoCreate)
        {
            return CreateByMknod(dir, name, flags, mode, c, out node, out file);
        }
        Span<byte> nameBuffer = stackalloc byte[NameBufferSize];
        int nameLength = EncodeName(name, nameBuffer);
        if (nameLength < 0)
        {
            return (Errno)(-nameLength);
        }
        var arg = new FuseCreateIn
        {
            Flags = (uint)((flags & ~Libc.O_NOCTTY) | OLargefile),
            Mode = ModeBits.Regular | perm,
            Umask = c.Umask,
        };
        if ((flags & Libc.O_TRUNC) != 0 && Conn.Has(FuseInitFlags.HandleKillprivV2) && !c.IsRoot)
        {
            arg.OpenFlags = (uint)FuseOpenInFlags.KillSuidgid;
        }
        Span<byte> replyBuffer = stackalloc byte[FuseEntryOut.Size + FuseOpenOut.Size];
        var reply = Conn.Send(FuseOpcode.Create, dir.NodeId, c, new FuseArgs(Bytes(in arg), nameBuffer[..nameLength]), replyBuffer, FuseReplyShape.Fixed);
        if (reply.Errno == Errno.ENOSYS)
        {
            NoCreate = true;
            return CreateByMknod(dir, name, flags, mode, c, out node, out file);
        }
        if (!reply.IsOk)
        {
            return reply.Errno;
        }
        var entry = MemoryMarshal.Read<FuseEntryOut>(replyBuffer);
        var open = MemoryMarshal.Read<FuseOpenOut>(replyBuffer[FuseEntryOut.Size..]);
        if (entry.NodeId == 0 || ValidateEntry(entry, ModeBits.Regular) != Errno.OK)
        {
            // ValidateEntry forgot the lookup again; the daemon opened something: give the handle back.
            SendRelease(entry.NodeId, open.Fh, (int)arg.Flags, FuseOpcode.Release, 0, 0);
            return Errno.EIO;
        }
        node = Instantiate(entry, dir);
        SetDentry(dir, name, node, entry.EntryValid, entry.EntryValidNsec);
        lock (node.Sync)
        {
            node.OpenCount++;
        }
        file = new FuseFile(node, open.Fh, (int)arg.Flags, (FuseOpenOutFlags)open.OpenFlags, false, false, c);
        InvalidateDir(dir);
        return Errno.OK;
    }

    private Errno CreateByMknod(FuseNode dir, string name, int flags, uint mode, in FuseCaller caller, out FuseNode? node, out FuseFile? file)
    {
        file = null;
        var rc = Mknod(dir, name, ModeBits.Regular | (mode & 0xFFF), 0, out node, caller);
        if (rc == Errno.EEXIST && (flags & Libc.O_EXCL) == 0)
        {
            rc = LookupCore(dir, name, caller, out node);
        }
        if (rc != Errno.OK)
        {
            return rc;
        }
        return Open(node!, flags & ~(Libc.O_CREAT | Libc.O_EXCL), out file, caller);
    }

    private Errno PrepareCreate(FuseNode dir, in FuseCaller caller)
    {
        var rc = CheckLive(dir);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (!dir.IsDirectory)
        {
            return Errno.ENOTDIR;
        }
        return CheckPermission(dir, ModeBits.MayWrite | ModeBits.MayExec, caller);
    }

    /// <summary>close(2): FLUSH (unless the daemon answered ENOSYS before, or the file is FOPEN_NOFLUSH), then
    /// RELEASE / RELEASEDIR sent in the background without credentials (not in no-open mode). Local POSIX locks
    /// of the caller on the file go away. Returns FLUSH's error, as close(2) does.</summary>
    public Errno Release(FuseFile file, FuseCaller? caller = null)
    {
        ArgumentNullException.ThrowIfNull(file);
        if (Interlocked.Exchange(ref file.Closed, 1) != 0)
        {
            return Errno.EBADF;
        }
        var c = caller ?? file.Opener;
        var node = file.Node;
        var result = Errno.OK;
        if (!file.IsDirectory)
        {
            result = Flush(file, c);
            if (!Conn.Has(FuseInitFlags.PosixLocks))
            {
                _localLocks.ReleaseOwner(node.NodeId, LockOwnerOf(c));
            }
        }
        if (file.UsedFlock && !Conn.Has(FuseInitFlags.FlockLocks))
        {
            _localFlocks.ReleaseOwner(node.NodeId, FlockOwnerOf(file));
        }
        if (!file.NoRelease && IsMounted)
        {
            uint releaseFlags = file.UsedFlock && Conn.Has(FuseInitFlags.FlockLocks) ? (uint)FuseReleaseFlags.FlockUnlock : 0;
            ulong owner = file.UsedFlock ? FlockOwnerOf(file) : 0;
            SendRelease(node.NodeId, file.Fh, file.Flags, file.IsDirectory ? FuseOpcode.Releasedir : FuseOpcode.Release, releaseFlags, owner);
        }
        bool evict;
        lock (node.Sync)
        {
            node.OpenCount--;
            evict = node.OpenCount == 0 && node.EvictOnRelease;
            if (evict)
            {
                node.EvictOnRelease = false;
            }
        }
        if (evict)
        {
            if (node.IsStale)
            {
                DropStale(node);
            }
            else
            {
                Forget(node);
            }
        }
        return result;
    }

    private void SendRelease(ulong nodeId, ulong fh, int flags, FuseOpcode opcode, uint releaseFlags, ulong lockOwner)
    {
        var arg = new FuseReleaseIn { Fh = fh, Flags = (uint)flags, ReleaseFlags = releaseFlags, LockOwner = lockOwner };
        Conn.SendBackground(opcode, nodeId, FuseCaller.Kernel, Bytes(in arg), force: true);
    }

    /// <summary>FLUSH (what close(2) sends; also drops the caller's POSIX locks on the daemon side).</summary>
    public Errno Flush(FuseFile file, FuseCaller? caller = null)
    {
        var c = caller ?? file.Opener;
        if (NoFlush || (file.OpenFlags & FuseOpenOutFlags.NoFlush) != 0 || file.IsDirectory)
        {
            return Errno.OK;
        }
        var rc = CheckLive(file.Node);
        if (rc != Errno.OK)
        {
            return rc;
        }
        var arg = new FuseFlushIn { Fh = file.Fh, LockOwner = LockOwnerOf(c) };
        var reply = Conn.Send(FuseOpcode.Flush, file.Node.NodeId, c, new FuseArgs(Bytes(in arg)), Span<byte>.Empty, FuseReplyShape.Fixed);
        if (reply.Errno == Errno.ENOSYS)
        {
            NoFlush = true;
            return Errno.OK;
        }
        file.Node.InvalidateAttr();
        return reply.Errno;
    }

    /// <summary>fsync / fdatasync (FSYNC, or FSYNCDIR for a directory); after ENOSYS not sent again and 0.</summary>
    public Errno Fsync(FuseFile file, bool dataOnly = false, FuseCaller? caller = null)
    {
        var c = Who(caller);
        var rc = CheckLive(file.Node);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (file.IsDirectory ? NoFsyncdir : NoFsync)
        {
            return Errno.OK;
        }
        var arg = new FuseFsyncIn { Fh = file.Fh, FsyncFlags = dataOnly ? (uint)FuseFsyncFlags.Fdatasync : 0 };
        var opcode = file.IsDirectory ? FuseOpcode.Fsyncdir : FuseOpcode.Fsync;
        var reply = Conn.Send(opcode, file.Node.NodeId, c, new FuseArgs(Bytes(in arg)), Span<byte>.Empty, FuseReplyShape.Fixed);
        if (reply.Errno == Errno.ENOSYS)
        {
            if (file.IsDirectory)
            {
                NoFsyncdir = true;
            }
            else
            {
                NoFsync = true;
            }
            return Errno.OK;
        }
        return reply.Errno;
    }

    // ---------------------------------------------------------------- read / write

    /// <summary>pread(2): READ requests of at most min(max_read, max_pages pages) each, the reply landing in
    /// <paramref name="buffer"/> with one copy. Stops at a short reply (end of file).</summary>
    public Errno Read(FuseFile file, Span<byte> buffer, long offset, out int bytesRead, FuseCaller? caller = null)
    {
        var c = Who(caller);
        bytesRead = 0;
        var rc = CheckLive(file.Node);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (file.IsDirectory)
        {
            return Errno.EISDIR;
        }
        if (!file.CanRead || file.IsClosed)
        {
            return Errno.EBADF;
        }
        if (offset < 0)
        {
            return Errno.EINVAL;
        }
        int chunk = Conn.MaxReadSize;
        while (bytesRead < buffer.Length)
        {
            int size = Math.Min(chunk, buffer.Length - bytesRead);
            var arg = new FuseReadIn { Fh = file.Fh, Offset = (ulong)(offset + bytesRead), Length = (uint)size, Flags = (uint)file.Flags };
            var reply = Conn.Send(FuseOpcode.Read, file.Node.NodeId, c, new FuseArgs(Bytes(in arg)), buffer.Slice(bytesRead, size), FuseReplyShape.Variable);
            if (!reply.IsOk)
            {
                return bytesRead == 0 ? reply.Errno : Errno.OK;
            }
            bytesRead += reply.Length;
            if (reply.Length < size)
            {
                break;
            }
        }
        return Errno.OK;
    }

    /// <summary>pwrite(2): WRITE requests of at most min(max_write, max_pages pages) each, the data copied once
    /// from <paramref name="data"/>. With HANDLE_KILLPRIV_V2 a caller without CAP_FSETID asks the daemon to
    /// clear suid/sgid. A daemon claiming more bytes than sent is EIO.</summary>
    public Errno Write(FuseFile file, ReadOnlySpan<byte> data, long offset, out int bytesWritten, FuseCaller? caller = null)
    {
        var c = Who(caller);
        bytesWritten = 0;
        var rc = CheckLive(file.Node);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (file.IsDirectory)
        {
            return Errno.EISDIR;
        }
        if (!file.CanWrite || file.IsClosed)
        {
            return Errno.EBADF;
        }
        if (offset < 0)
        {
            return Errno.EINVAL;
        }
        int chunk = Conn.MaxWriteSize;
        uint writeFlags = Conn.Has(FuseInitFlags.HandleKillprivV2) && !c.IsRoot ? (uint)FuseWriteFlags.KillSuidgid : 0;
        try
        {
            while (bytesWritten < data.Length)
            {
                int size = Math.Min(chunk, data.Length - bytesWritten);
                var arg = new FuseWriteIn
                {
                    Fh = file.Fh,
                    Offset = (ulong)(offset + bytesWritten),
                    Length = (uint)size,
                    WriteFlags = writeFlags,
                    Flags = (uint)file.Flags,
                };
                FuseWriteOut outArg = default;
                var reply = Conn.Send(FuseOpcode.Write, file.Node.NodeId, c, new FuseArgs(Bytes(in arg), data.Slice(bytesWritten, size)),
                    MemoryMarshal.AsBytes(new Span<FuseWriteOut>(ref outArg)), FuseReplyShape.Fixed);
                if (!reply.IsOk)
                {
                    return bytesWritten == 0 ? reply.Errno : Errno.OK;
                }
                if (outArg.Length > (uint)size)
                {
                    return Errno.EIO;
                }
                bytesWritten += (int)outArg.Length;
                if (outArg.Length < (uint)size)
                {
                    break;
                }
            }
            return Errno.OK;
        }
        finally
        {
            file.Node.InvalidateAttr();
        }
    }

    /// <summary>A buffer whose memory READ and WRITE use directly (see <see cref="FuseConn.AllocateUserBuffer"/>).</summary>
    public GuestBuffer AllocateUserBuffer(int bytes) => Conn.AllocateUserBuffer(bytes);

    /// <summary>pread(2) with direct I/O into a user buffer: READ requests of at most min(max_read, max_pages pages)
    /// each, split as <see cref="Read(FuseFile, Span{byte}, long, out int, FuseCaller?)"/> splits, the daemon writing
    /// the data straight into <paramref name="buffer"/>[<paramref name="bufferOffset"/>, +<paramref name="length"/>)
    /// with no copy. Stops at a short reply (end of file).</summary>
    public Errno Read(FuseFile file, GuestBuffer buffer, int bufferOffset, int length, long offset, out int bytesRead, FuseCaller? caller = null)
    {
        ArgumentNullException.ThrowIfNull(buffer);
        buffer.CheckRange(bufferOffset, length);
        var c = Who(caller);
        bytesRead = 0;
        var rc = CheckFileIo(file, file.CanRead, offset);
        if (rc != Errno.OK)
        {
            return rc;
        }
        int chunk = Conn.MaxReadSize;
        while (bytesRead < length)
        {
            int size = Math.Min(chunk, length - bytesRead);
            var reply = Conn.Read(file.Node.NodeId, file.Fh, offset + bytesRead, buffer, bufferOffset + bytesRead, size, c, (uint)file.Flags);
            if (!reply.IsOk)
            {
                return bytesRead == 0 ? reply.Errno : Errno.OK;
            }
            bytesRead += reply.Length;
            if (reply.Length < size)
            {
                break;
            }
        }
        return Errno.OK;
    }

    /// <summary>pwrite(2) with direct I/O from a user buffer: WRITE requests of at most min(max_write, max_pages pages)
    /// each, split as <see cref="Write(FuseFile, ReadOnlySpan{byte}, long, out int, FuseCaller?)"/> splits, the daemon
    /// reading the data straight from <paramref name="buffer"/>[<paramref name="bufferOffset"/>, +<paramref name="length"/>).</summary>
    public Errno Write(FuseFile file, GuestBuffer buffer, int bufferOffset, int length, long offset, out int bytesWritten, FuseCaller? caller = null)
    {
        ArgumentNullException.ThrowIfNull(buffer);
        buffer.CheckRange(bufferOffset, length);
        var c = Who(caller);
        bytesWritten = 0;
        var rc = CheckFileIo(file, file.CanWrite, offset);
        if (rc != Errno.OK)
        {
            return rc;
        }
        int chunk = Conn.MaxWriteSize;
        uint writeFlags = Conn.Has(FuseInitFlags.HandleKillprivV2) && !c.IsRoot ? (uint)FuseWriteFlags.KillSuidgid : 0;
        try
        {
            while (bytesWritten < length)
            {
                int size = Math.Min(chunk, length - bytesWritten);
                var reply = Conn.Write(file.Node.NodeId, file.Fh, offset + bytesWritten, buffer, bufferOffset + bytesWritten, size, c,
                    out int written, (uint)file.Flags, writeFlags);
                if (!reply.IsOk)
                {
                    return bytesWritten == 0 ? reply.Errno : Errno.OK;
                }
                bytesWritten += written;
                if (written < size)
                {
                    break;
                }
            }
            return Errno.OK;
        }
        finally
        {
            file.Node.InvalidateAttr();
        }
    }

    private Errno CheckFileIo(FuseFile file, bool modeAllows, long offset)
    {
        var rc = CheckLive(file.Node);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (file.IsDirectory)
        {
            return Errno.EISDIR;
        }
        if (!modeAllows || file.IsClosed)
        {
            return Errno.EBADF;
        }
        return offset < 0 ? Errno.EINVAL : Errno.OK;
    }

    // ---------------------------------------------------------------- fallocate / lseek / copy_file_range

    /// <summary>fallocate(2): FALLOCATE; EOPNOTSUPP once the daemon answered ENOSYS.</summary>
    public Errno Fallocate(FuseFile file, int mode, long offset, long length, FuseCaller? caller = null)
    {
        var c = Who(caller);
        var rc = CheckLive(file.Node);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (!file.CanWrite)
        {
            return Errno.EBADF;
        }
        if (offset < 0 || length <= 0)
        {
            return Errno.EINVAL;
        }
        if (NoFallocate)
        {
            return Errno.EOPNOTSUPP;
        }
        var arg = new FuseFallocateIn { Fh = file.Fh, Offset = (ulong)offset, Length = (ulong)length, Mode = (uint)mode };
        var reply = Conn.Send(FuseOpcode.Fallocate, file.Node.NodeId, c, new FuseArgs(Bytes(in arg)), Span<byte>.Empty, FuseReplyShape.Fixed);
        if (reply.Errno == Errno.ENOSYS)
        {
            NoFallocate = true;
            return Errno.EOPNOTSUPP;
        }
        file.Node.InvalidateAttr();
        return reply.Errno;
    }

    /// <summary>lseek(2) for SEEK_SET, SEEK_END, SEEK_DATA and SEEK_HOLE. DATA/HOLE ask the daemon (LSEEK);
    /// after ENOSYS the generic answer is used (data up to the size, one hole at the end).</summary>
    public Errno Lseek(FuseFile file, long offset, int whence, out long result, FuseCaller? caller = null)
    {
        var c = Who(caller);
        result = 0;
        var rc = CheckLive(file.Node);
        if (rc != Errno.OK)
        {
            return rc;
        }
        switch (whence)
        {
            case SeekSet:
                if (offset < 0)
                {
                    return Errno.EINVAL;
                }
                result = offset;
                return Errno.OK;
            case SeekEnd:
            {
                rc = GetAttr(file.Node, out var attr, c, file, force: true);
                if (rc != Errno.OK)
                {
                    return rc;
                }
                result = (long)attr.FileSize + offset;
                return result < 0 ? Errno.EINVAL : Errno.OK;
            }
            case SeekData:
            case SeekHole:
                break;
            default:
                return Errno.EINVAL;
        }
        if (!NoLseek)
        {
            var arg = new FuseLseekIn { Fh = file.Fh, Offset = (ulong)offset, Whence = (uint)whence };
            FuseLseekOut outArg = default;
            var reply = Conn.Send(FuseOpcode.Lseek, file.Node.NodeId, c, new FuseArgs(Bytes(in arg)),
                MemoryMarshal.AsBytes(new Span<FuseLseekOut>(ref outArg)), FuseReplyShape.Fixed);
            if (reply.IsOk)
            {
                result = (long)outArg.Offset;
                return Errno.OK;
            }
            if (reply.Errno != Errno.ENOSYS)
            {
                return reply.Errno;
            }
            NoLseek = true;
        }
        rc = GetAttr(file.Node, out var a, c, file, force: true);
        if (rc != Errno.OK)
        {
            return rc;
        }
        long size = (long)a.FileSize;
        if (offset < 0 || offset >= size)
        {
            return Errno.ENXIO;
        }
        result = whence == SeekData ? offset : size;
        return Errno.OK;
    }

    /// <summary>copy_file_range(2): COPY_FILE_RANGE between two files of this mount; after ENOSYS (or between
    /// mounts of one connection) a read/write copy through the shim, as the VFS falls back to.</summary>
    public Errno CopyFileRange(FuseFile source, long sourceOffset, FuseFile destination, long destinationOffset, long length,
        out long copied, FuseCaller? caller = null)
    {
        var c = Who(caller);
        copied = 0;
        if (!ReferenceEquals(source.Node.Fs, this) || !ReferenceEquals(destination.Node.Fs, this))
        {
            return Errno.EXDEV;
        }
        var rc = CheckLive(source.Node);
        if (rc == Errno.OK)
        {
            rc = CheckLive(destination.Node);
        }
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (!source.CanRead || !destination.CanWrite)
        {
            return Errno.EBADF;
        }
        if (sourceOffset < 0 || destinationOffset < 0 || length < 0)
        {
            return Errno.EINVAL;
        }
        if (!NoCopyFileRange)
        {
            var arg = new FuseCopyFileRangeIn
            {
                FhIn = source.Fh,
                OffIn = (ulong)sourceOffset,
                NodeIdOut = destination.Node.NodeId,
                FhOut = destination.Fh,
                OffOut = (ulong)destinationOffset,
                Len = (ulong)length,
            };
            FuseWriteOut outArg = default;
            var reply = Conn.Send(FuseOpcode.CopyFileRange, source.Node.NodeId, c, new FuseArgs(Bytes(in arg)),
                MemoryMarshal.AsBytes(new Span<FuseWriteOut>(ref outArg)), FuseReplyShape.Fixed);
            if (reply.IsOk)
            {
                if (outArg.Length > (ulong)length)
                {
                    return Errno.EIO;
                }
                copied = outArg.Length;
                destination.Node.InvalidateAttr();
                return Errno.OK;
            }
            if (reply.Errno != Errno.ENOSYS)
            {
                return reply.Errno;
            }
            NoCopyFileRange = true;
        }
        var buffer = new byte[Math.Min(length, Math.Max(Conn.MaxReadSize, 4096))];
        while (copied < length)
        {
            int want = (int)Math.Min(buffer.Length, length - copied);
            rc = Read(source, buffer.AsSpan(0, want), sourceOffset + copied, out int got, c);
            if (rc != Errno.OK)
            {
                return copied == 0 ? rc : Errno.OK;
            }
            if (got == 0)
            {
                break;
            }
            rc = Write(destination, buffer.AsSpan(0, got), destinationOffset + copied, out int put, c);
            if (rc != Errno.OK)
            {
                return copied == 0 ? rc : Errno.OK;
            }
            copied += put;
            if (put < got)
            {
                break;
            }
        }
        return Errno.OK;
    }

    // ---------------------------------------------------------------- locks

    /// <summary>The lock owner of a process's POSIX locks (Linux scrambles fl_owner; here, from the tgid).</summary>
    internal static ulong LockOwnerOf(in FuseCaller caller) => 0x9E37_79B9_7F4A_7C15UL ^ ((ulong)caller.Pid * 0xBF58_476D_1CE4_E5B9UL);

    /// <summary>flock locks belong to the open file.</summary>
    internal static ulong FlockOwnerOf(FuseFile file) => 0xD6E8_FEB8_6659_FD93UL ^ (file.Id * 0x94D0_49BB_1331_11EBUL);

    /// <summary>fcntl(F_GETLK): GETLK when POSIX_LOCKS was negotiated, else the shim's own lock table (locks
    /// stay local to this guest, as Linux does without POSIX_LOCKS). <paramref name="lk"/> comes back as the
    /// conflicting lock, or with type F_UNLCK.</summary>
    public Errno GetLock(FuseFile file, ref FileLockRange lk, FuseCaller? caller = null)
    {
        var c = Who(caller);
        var rc = CheckLockRequest(file, lk);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (!Conn.Has(FuseInitFlags.PosixLocks))
        {
            lk = _localLocks.Test(file.Node.NodeId, LockOwnerOf(c), lk);
            return Errno.OK;
        }
        var arg = new FuseLkIn
        {
            Fh = file.Fh,
            Owner = LockOwnerOf(c),
            Lk = new FuseFileLock { Start = lk.Start, End = lk.End, Type = (uint)lk.Type, Pid = c.Pid },
        };
        FuseLkOut outArg = default;
        var reply = Conn.Send(FuseOpcode.Getlk, file.Node.NodeId, c, new FuseArgs(Bytes(in arg)),
            MemoryMarshal.AsBytes(new Span<FuseLkOut>(ref outArg)), FuseReplyShape.Fixed);
        if (!reply.IsOk)
        {
            return reply.Errno;
        }
        lk = new FileLockRange((int)outArg.Lk.Type, outArg.Lk.Start, outArg.Lk.End, outArg.Lk.Pid);
        return Errno.OK;
    }

    /// <summary>fcntl(F_SETLK / F_SETLKW): SETLK or SETLKW when POSIX_LOCKS was negotiated (a cancelled wait
    /// sends INTERRUPT), else the shim's local lock table. EAGAIN when a non-waiting lock conflicts.</summary>
    public Errno SetLock(FuseFile file, in FileLockRange lk, bool wait, FuseCaller? caller = null, CancellationToken cancellation = default)
    {
        var c = Who(caller);
        var rc = CheckLockRequest(file, lk);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if ((lk.Type == FileLockRange.ReadLock && !file.CanRead) || (lk.Type == FileLockRange.WriteLock && !file.CanWrite))
        {
            return Errno.EBADF;
        }
        if (!Conn.Has(FuseInitFlags.PosixLocks))
        {
            return _localLocks.Set(file.Node.NodeId, LockOwnerOf(c), lk, wait, cancellation);
        }
        return SendSetLock(file, LockOwnerOf(c), lk, wait, 0, c, cancellation);
    }

    /// <summary>flock(2): SETLK/SETLKW with FUSE_LK_FLOCK when FLOCK_LOCKS was negotiated, else local.</summary>
    public Errno Flock(FuseFile file, int operation, FuseCaller? caller = null, CancellationToken cancellation = default)
    {
        var c = Who(caller);
        var rc = CheckLive(file.Node);
        if (rc != Errno.OK)
        {
            return rc;
        }
        int type = (operation & ~LockNonBlocking) switch
        {
            LockShared => FileLockRange.ReadLock,
            LockExclusive => FileLockRange.WriteLock,
            LockUnlock => FileLockRange.Unlock,
            _ => -1,
        };
        if (type < 0)
        {
            return Errno.EINVAL;
        }
        bool wait = (operation & LockNonBlocking) == 0 && type != FileLockRange.Unlock;
        var range = new FileLockRange(type, 0, FileLockRange.ToEof, c.Pid);
        file.UsedFlock = true;
        if (!Conn.Has(FuseInitFlags.FlockLocks))
        {
            return _localFlocks.Set(file.Node.NodeId, FlockOwnerOf(file), range, wait, cancellation);
        }
        return SendSetLock(file, FlockOwnerOf(file), range, wait, (uint)FuseLkFlags.Flock, c, cancellation);
    }

    private Errno SendSetLock(FuseFile file, ulong owner, in FileLockRange lk, bool wait, uint lkFlags, in FuseCaller caller, CancellationToken cancellation)
    {
        var arg = new FuseLkIn
        {
            Fh = file.Fh,
            Owner = owner,
            Lk = new FuseFileLock { Start = lk.Start, End = lk.End, Type = (uint)lk.Type, Pid = lk.Type == FileLockRange.Unlock ? 0 : caller.Pid },
            LkFlags = lkFlags,
        };
        var reply = Conn.Send(wait ? FuseOpcode.Setlkw : FuseOpcode.Setlk, file.Node.NodeId, caller, new FuseArgs(Bytes(in arg)),
            Span<byte>.Empty, FuseReplyShape.Fixed, cancellation);
        // A daemon that cannot lock remotely answers ENOSYS: Linux then reports ENOLCK... as the VFS does.
        return reply.Errno == Errno.ENOSYS ? Errno.ENOLCK : reply.Errno;
    }

    private static Errno CheckLockRequest(FuseFile file, in FileLockRange lk)
    {
        var rc = CheckLive(file.Node);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (file.IsClosed)
        {
            return Errno.EBADF;
        }
        if (lk.Type is < FileLockRange.ReadLock or > FileLockRange.Unlock || lk.End < lk.Start || lk.End > FileLockRange.ToEof)
        {
            return Errno.EINVAL;
        }
        return Errno.OK;
    }
}
