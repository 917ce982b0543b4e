using System.Runtime.InteropServices;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.GuestKernelShim;

// Reading and writing: pread, pwrite (copied or from user buffers), fallocate, lseek, copy_file_range.
public sealed partial class FuseFs
{
    /// <summary>lseek whence values.</summary>
    public const int SeekSet = 0;
    public const int SeekEnd = 2;
    public const int SeekData = 3;
    public const int SeekHole = 4;

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
        if (!file.IsDirectIo)
        {
            return CachedRead(file, buffer, offset, c, out bytesRead);
        }
        DirectIoBegin(file, offset, buffer.Length);
        int chunk = Conn.MaxReadSize;
        while (bytesRead < buffer.Length)
        {
            int size = Math.Min(chunk, buffer.Length - bytesRead);
            var arg = new FuseReadIn
            {
                Fh = file.Fh,
                Offset = (ulong)(offset + bytesRead),
                Length = (uint)size,
                ReadFlags = (uint)FuseReadFlags.LockOwner,
                LockOwner = LockOwnerOf(c),
                Flags = (uint)file.Flags,
            };
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

    /// <summary>pwrite(2). Direct (no page cache, FOPEN_DIRECT_IO, O_DIRECT): WRITE requests of at most
    /// min(max_write, max_pages pages) each, the data copied once from <paramref name="data"/>, carrying the caller's
    /// lock owner (FUSE_WRITE_LOCKOWNER) as fuse_direct_io does. Through the page cache: write-through, or into dirty
    /// pages under write-back caching. With HANDLE_KILLPRIV_V2 a caller without CAP_FSETID asks the daemon to clear
    /// suid/sgid. A daemon claiming more bytes than sent is EIO.</summary>
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
        if (!file.IsDirectIo)
        {
            return CachedWrite(file, data, offset, c, out bytesWritten);
        }
        var np = DirectIoBegin(file, offset, data.Length);
        if (np == null)
        {
            return SendWrites(file, data, offset, c, lockOwner: true, out bytesWritten);
        }
        lock (np.WritebackLock)
        {
            rc = SendWrites(file, data, offset, c, lockOwner: true, out bytesWritten);
            DirectWriteDone(np, offset, data.Length);
            return rc;
        }
    }

    /// <summary>WRITE requests for <paramref name="data"/> at <paramref name="offset"/>, split at the connection's
    /// largest WRITE; stops at a short write. The node's attributes are stale afterwards.</summary>
    private Errno SendWrites(FuseFile file, ReadOnlySpan<byte> data, long offset, in FuseCaller c, bool lockOwner, out int bytesWritten)
    {
        bytesWritten = 0;
        int chunk = Conn.MaxWriteSize;
        uint writeFlags = Conn.Has(FuseInitFlags.HandleKillprivV2) && !c.IsRoot ? (uint)FuseWriteFlags.KillSuidgid : 0;
        if (lockOwner)
        {
            writeFlags |= (uint)FuseWriteFlags.LockOwner;
        }
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
                    LockOwner = lockOwner ? LockOwnerOf(c) : 0,
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
        DirectIoBegin(file, offset, length);
        int chunk = Conn.MaxReadSize;
        ulong owner = LockOwnerOf(c);
        while (bytesRead < length)
        {
            int size = Math.Min(chunk, length - bytesRead);
            var reply = Conn.Read(file.Node.NodeId, file.Fh, offset + bytesRead, buffer, bufferOffset + bytesRead, size, c, (uint)file.Flags,
                lockOwner: owner);
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

    /// <summary>pwrite(2) with direct I/O from a user buffer (O_DIRECT: never through the page cache, whose pages of
    /// the range are written back before and dropped after): WRITE requests of at most min(max_write, max_pages pages)
    /// each, with the caller's lock owner, split as <see cref="Write(FuseFile, ReadOnlySpan{byte}, long, out int, FuseCaller?)"/> splits, the daemon
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
        var np = DirectIoBegin(file, offset, length);
        if (np == null)
        {
            return SendUserWrites(file, buffer, bufferOffset, length, offset, c, out bytesWritten);
        }
        lock (np.WritebackLock)
        {
            rc = SendUserWrites(file, buffer, bufferOffset, length, offset, c, out bytesWritten);
            DirectWriteDone(np, offset, length);
            return rc;
        }
    }

    private Errno SendUserWrites(FuseFile file, GuestBuffer buffer, int bufferOffset, int length, long offset, in FuseCaller c, out int bytesWritten)
    {
        bytesWritten = 0;
        int chunk = Conn.MaxWriteSize;
        uint writeFlags = Conn.Has(FuseInitFlags.HandleKillprivV2) && !c.IsRoot ? (uint)FuseWriteFlags.KillSuidgid : 0;
        ulong owner = LockOwnerOf(c);
        try
        {
            while (bytesWritten < length)
            {
                int size = Math.Min(chunk, length - bytesWritten);
                var reply = Conn.Write(file.Node.NodeId, file.Fh, offset + bytesWritten, buffer, bufferOffset + bytesWritten, size, c,
                    out int written, (uint)file.Flags, writeFlags, lockOwner: owner);
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
        // fuse_file_fallocate: cached dirty pages of the range go first; afterwards the range's pages are stale
        // (a punched hole reads zeros) and the size the guest knows grows unless FALLOC_FL_KEEP_SIZE.
        var np = DirectIoBegin(file, offset, length);
        var arg = new FuseFallocateIn { Fh = file.Fh, Offset = (ulong)offset, Length = (ulong)length, Mode = (uint)mode };
        var reply = Conn.Send(FuseOpcode.Fallocate, file.Node.NodeId, c, new FuseArgs(Bytes(in arg)), Span<byte>.Empty, FuseReplyShape.Fixed);
        if (reply.Errno == Errno.ENOSYS)
        {
            NoFallocate = true;
            return Errno.EOPNOTSUPP;
        }
        if (reply.IsOk && np != null)
        {
            DirectWriteDone(np, offset, length);
            const int keepSize = 1; // FALLOC_FL_KEEP_SIZE
            if ((mode & keepSize) == 0)
            {
                file.Node.SetLocalSize(offset + length, onlyGrow: true);
            }
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
            // fuse_copy_file_range: both ranges' dirty pages reach the daemon first; the destination's cached pages
            // of the range are stale afterwards and its size may have grown.
            DirectIoBegin(source, sourceOffset, length);
            var destinationPages = DirectIoBegin(destination, destinationOffset, length);
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
                if (destinationPages != null && copied > 0)
                {
                    DirectWriteDone(destinationPages, destinationOffset, copied);
                    destination.Node.SetLocalSize(destinationOffset + copied, onlyGrow: true);
                }
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
}
