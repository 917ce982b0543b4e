using System.Buffers;
using Vhostfsd.FusePassthrough.Passthrough;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.FusePassthrough;

// Open files: read, write, flush, release, sync, allocation, seek, copy.
public sealed unsafe partial class PassthroughFs
{
    /// <summary>iovecs kept on the stack for READ/WRITE; longer chains borrow a pooled array.</summary>
    private const int StackIovecs = 64;

    /// <summary>Largest COPY_FILE_RANGE done in one request (the reply's size is 32 bits; Linux's MAX_RW_COUNT).</summary>
    private const long MaxCopyLength = 0x7FFFF000;

    public int Read(scoped in RequestContext context, ulong nodeId, in FuseReadIn a, ref ReplyWriter w)
    {
        Handle? handle = _handles.Acquire(a.Fh, nodeId);
        if (handle is null)
        {
            return EBADF;
        }
        IoVec[]? rented = null;
        try
        {
            if (handle.IsDirectory)
            {
                return -(int)Errno.EISDIR;
            }
            int size = Math.Min((int)a.Length, w.Available);
            if (size > 0 && w.TakesFileData(size))
            {
                int moved = MoveFileData(ref w, handle.Fd, (long)a.Offset, size);
                if (moved >= 0)
                {
                    return 0;
                }
                // Nothing moved (the file cannot be spliced, say): copy as below.
            }
            Span<IoVec> iov = stackalloc IoVec[StackIovecs];
            int count = w.Describe(size, iov);
            if (count < 0)
            {
                rented = ArrayPool<IoVec>.Shared.Rent(w.SegmentsLeft);
                iov = rented;
                count = w.Describe(size, iov);
                if (count < 0)
                {
                    return EIO;
                }
            }
            int total = 0;
            long offset = (long)a.Offset;
            int first = 0;
            fixed (IoVec* p = iov)
            {
                while (total < size)
                {
                    nint n = Libc.Preadv2(handle.Fd, p + first, Math.Min(count - first, Libc.IOV_MAX), offset + total, 0);
                    if (n < 0)
                    {
                        if (Libc.LastErrno == Errno.EINTR)
                        {
                            continue;
                        }
                        if (total > 0)
                        {
                            break;
                        }
                        return Libc.NegErrno;
                    }
                    if (n == 0)
                    {
                        break;
                    }
                    total += (int)n;
                    ConsumeIovecs(iov, ref first, count, (nuint)n);
                }
            }
            w.Advance(total);
            return 0;
        }
        finally
        {
            if (rented is not null)
            {
                ArrayPool<IoVec>.Shared.Return(rented);
            }
            _handles.Release(handle);
        }
    }

    /// <summary>Moves <paramref name="size"/> bytes of file data by reference, in as many calls as the
    /// transport needs: a READ's from the file into the reply, a WRITE's from the request into the
    /// file. Returns the bytes moved (short at end of file), or -errno when the first attempt moved
    /// nothing.</summary>
    private static int MoveFileData<TMover>(ref TMover mover, int fd, long offset, int size)
        where TMover : IFileDataMover, allows ref struct
    {
        int total = 0;
        while (total < size)
        {
            int n = mover.MoveFileData(fd, offset + total, size - total);
            if (n == -(int)Errno.EINTR)
            {
                continue;
            }
            if (n < 0)
            {
                return total > 0 ? total : n;
            }
            if (n == 0)
            {
                break;
            }
            total += n;
        }
        return total;
    }

    /// <summary>Drops <paramref name="done"/> bytes from the front of iov[first..count].</summary>
    private static void ConsumeIovecs(Span<IoVec> iov, ref int first, int count, nuint done)
    {
        while (done > 0 && first < count)
        {
            if (done >= iov[first].Length)
            {
                done -= iov[first].Length;
                first++;
            }
            else
            {
                iov[first] = new IoVec((byte*)iov[first].Base + done, iov[first].Length - done);
                done = 0;
            }
        }
    }

    public int Write(scoped in RequestContext context, ulong nodeId, in FuseWriteIn a, ref RequestReader r, out uint written)
    {
        written = 0;
        Handle? handle = _handles.Acquire(a.Fh, nodeId);
        if (handle is null)
        {
            return EBADF;
        }
        IoVec[]? rented = null;
        try
        {
            if (handle.IsDirectory)
            {
                return -(int)Errno.EISDIR;
            }
            if ((handle.OpenFlags & Libc.O_ACCMODE) == Libc.O_RDONLY)
            {
                return EBADF;
            }
            int size = (int)a.Length;
            // Appends of a non-cached write go through RWF_APPEND, so that several guests (or the
            // host) sharing the file still append atomically; writeback and mmap writes carry the
            // offset the guest computed (FUSE_WRITE_CACHE).
            bool delayed = ((FuseWriteFlags)a.WriteFlags & FuseWriteFlags.Cache) != 0;
            int rwf = !delayed && !Writeback && ((int)a.Flags & Libc.O_APPEND) != 0 ? Libc.RWF_APPEND : 0;
            long offset = (long)a.Offset;
            // Honoured whether or not HANDLE_KILLPRIV_V2 was agreed: a client kernel marks a direct
            // or uncached WRITE by a caller without CAP_FSETID this way in every mode, and leaves the
            // bits to the daemon (written as root, they stayed: a group member overwrote a setuid-root
            // file and it stayed setuid). The flag only ever takes a privilege away.
            bool killPrivileges = ((FuseWriteFlags)a.WriteFlags & FuseWriteFlags.KillSuidgid) != 0;
            if (size > 0 && r.HeldRemaining == size)
            {
                // The transport holds the data (a pipe of page references): splice it into the file,
                // except for an append, which splice cannot do at the file's end atomically.
                if (rwf == 0)
                {
                    bool dropped = killPrivileges && DropFsetid();
                    int moved;
                    try
                    {
                        moved = MoveFileData(ref r, handle.Fd, offset, size);
                    }
                    finally
                    {
                        RestoreFsetid(dropped);
                    }
                    if (moved >= 0)
                    {
                        written = (uint)moved;
                        return 0;
                    }
                }
                if (!r.FetchFileData())
                {
                    return EIO;
                }
            }
            Span<IoVec> iov = stackalloc IoVec[StackIovecs];
            int count = r.Describe(size, iov);
            if (count < 0)
            {
                rented = ArrayPool<IoVec>.Shared.Rent(r.SegmentsLeft);
                iov = rented;
                count = r.Describe(size, iov);
                if (count < 0)
                {
                    return EIO;
                }
            }
            int total = 0;
            int first = 0;
            bool fsetidDropped = killPrivileges && DropFsetid();
            try
            {
            fixed (IoVec* p = iov)
            {
                while (total < size)
                {
                    nint n = Libc.Pwritev2(handle.Fd, p + first, Math.Min(count - first, Libc.IOV_MAX), rwf != 0 ? -1 : offset + total, rwf);
                    if (n < 0)
                    {
                        if (Libc.LastErrno == Errno.EINTR)
                        {
                            continue;
                        }
                        if (total > 0)
                        {
                            break;
                        }
                        return Libc.NegErrno;
                    }
                    if (n == 0)
                    {
                        break;
                    }
                    total += (int)n;
                    ConsumeIovecs(iov, ref first, count, (nuint)n);
                }
            }
            }
            finally
            {
                RestoreFsetid(fsetidDropped);
            }
            written = (uint)total;
            return 0;
        }
        finally
        {
            if (rented is not null)
            {
                ArrayPool<IoVec>.Shared.Return(rented);
            }
            _handles.Release(handle);
        }
    }

    public int Flush(in RequestContext context, ulong nodeId, in FuseFlushIn a)
    {
        Handle? handle = _handles.Acquire(a.Fh, nodeId);
        if (handle is null)
        {
            return EBADF;
        }
        try
        {
            // close() in the guest drops that process's POSIX locks on the file: drop its description.
            _nodes.CloseLockOwner(handle.Node, a.LockOwner);
            // And give the host file system its flush (close of a duplicate), as close() would.
            int dup = Libc.Dup(handle.Fd);
            if (dup < 0)
            {
                return Libc.NegErrno;
            }
            return Libc.Close(dup) < 0 && Libc.LastErrno != Errno.EINTR ? Libc.NegErrno : 0;
        }
        finally
        {
            _handles.Release(handle);
        }
    }

    public int Release(in RequestContext context, ulong nodeId, in FuseReleaseIn a, bool directory)
    {
        if (!directory && ((FuseReleaseFlags)a.ReleaseFlags & FuseReleaseFlags.FlockUnlock) != 0)
        {
            Handle? handle = _handles.Acquire(a.Fh, nodeId);
            if (handle is not null)
            {
                Libc.Flock(handle.Fd, Libc.LOCK_UN);
                _handles.Release(handle);
            }
        }
        return _handles.Remove(a.Fh, nodeId, directory) ? 0 : EBADF;
    }

    public int Fsync(in RequestContext context, ulong nodeId, in FuseFsyncIn a, bool directory)
    {
        Handle? handle = _handles.Acquire(a.Fh, nodeId);
        if (handle is null)
        {
            return EBADF;
        }
        try
        {
            bool dataOnly = ((FuseFsyncFlags)a.FsyncFlags & FuseFsyncFlags.Fdatasync) != 0;
            int rc = dataOnly ? Libc.Fdatasync(handle.Fd) : Libc.Fsync(handle.Fd);
            return rc < 0 ? Libc.NegErrno : 0;
        }
        finally
        {
            _handles.Release(handle);
        }
    }

    /// <summary>For a data change that comes without KILL_SUIDGID although the guest kernel, with
    /// HANDLE_KILLPRIV_V2, leaves clearing S_ISUID/S_ISGID to us (COPY_FILE_RANGE into the output file,
    /// FALLOCATE): the request does not say whether its caller holds CAP_FSETID, so a requester other
    /// than root is taken to lack it, as the host kernel would take that user. The thread's CAP_FSETID
    /// is cleared (see <see cref="DropFsetid"/>) and the host file system clears the bits as part of
    /// the change. Returns true when the set changed.</summary>
    private bool DropFsetidForUnflaggedChange(in RequestContext context) =>
        context.Uid != 0 && (_negotiated & FuseInitFlags.HandleKillprivV2) != 0 && DropFsetid();

    public int Fallocate(in RequestContext context, ulong nodeId, in FuseFallocateIn a)
    {
        Handle? handle = _handles.Acquire(a.Fh, nodeId);
        if (handle is null)
        {
            return EBADF;
        }
        bool fsetidDropped = DropFsetidForUnflaggedChange(in context);
        try
        {
            return Libc.Fallocate(handle.Fd, (int)a.Mode, (long)a.Offset, (long)a.Length) < 0 ? Libc.NegErrno : 0;
        }
        finally
        {
            RestoreFsetid(fsetidDropped);
            _handles.Release(handle);
        }
    }

    public int Lseek(in RequestContext context, ulong nodeId, in FuseLseekIn a, out ulong offset)
    {
        offset = 0;
        if (a.Whence > Libc.SEEK_HOLE)
        {
            return EINVAL;
        }
        Handle? handle = _handles.Acquire(a.Fh, nodeId);
        if (handle is null)
        {
            return EBADF;
        }
        try
        {
            long result = Libc.Lseek(handle.Fd, (long)a.Offset, (int)a.Whence);
            if (result < 0)
            {
                return Libc.NegErrno;
            }
            offset = (ulong)result;
            return 0;
        }
        finally
        {
            _handles.Release(handle);
        }
    }

    public int CopyFileRange(in RequestContext context, ulong nodeId, in FuseCopyFileRangeIn a, out uint copied)
    {
        copied = 0;
        if (a.Flags != 0)
        {
            return EINVAL;
        }
        Handle? input = _handles.Acquire(a.FhIn, nodeId);
        if (input is null)
        {
            return EBADF;
        }
        Handle? output = _handles.Acquire(a.FhOut, a.NodeIdOut);
        try
        {
            if (output is null)
            {
                return EBADF;
            }
            long offIn = (long)a.OffIn;
            long offOut = (long)a.OffOut;
            long length = (long)Math.Min(a.Len, (ulong)MaxCopyLength);
            bool fsetidDropped = DropFsetidForUnflaggedChange(in context);
            nint n = Libc.CopyFileRange(input.Fd, &offIn, output.Fd, &offOut, (nuint)length, 0);
            int error = n < 0 ? Libc.NegErrno : 0;
            RestoreFsetid(fsetidDropped);
            if (n < 0)
            {
                return error;
            }
            copied = (uint)n;
            return 0;
        }
        finally
        {
            if (output is not null)
            {
                _handles.Release(output);
            }
            _handles.Release(input);
        }
    }

    public int Syncfs(in RequestContext context, ulong nodeId)
    {
        Node? node = _nodes.Acquire(nodeId);
        if (node is null)
        {
            return EBADF;
        }
        try
        {
            if (!node.IsDirectory && !node.IsRegular)
            {
                return EINVAL;
            }
            // syncfs refuses O_PATH fds: open the node for real, read-only.
            int fd = Reopen(node, Libc.O_RDONLY | Libc.O_NONBLOCK | (node.IsDirectory ? Libc.O_DIRECTORY : 0));
            if (fd < 0)
            {
                return fd;
            }
            int rc = Libc.Syncfs(fd) < 0 ? Libc.NegErrno : 0;
            Libc.Close(fd);
            return rc;
        }
        finally
        {
            _nodes.Release(node);
        }
    }
}
