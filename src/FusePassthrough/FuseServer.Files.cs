using System.Buffers;
using Vhostfsd.FusePassthrough.Passthrough;
using Vhostfsd.FusePassthrough.Protocol;
using Vhostfsd.FusePassthrough.Server;
using Vhostfsd.Posix;

namespace Vhostfsd.FusePassthrough;

// Open files: open, create, read, write, flush, release, sync, allocation, seek, copy.
public sealed unsafe partial class FuseServer
{
    /// <summary>iovecs kept on the stack for READ/WRITE; longer chains borrow a pooled array.</summary>
    private const int StackIovecs = 64;

    /// <summary>Largest COPY_FILE_RANGE done in one request (the reply's size is 32 bits; Linux's MAX_RW_COUNT).</summary>
    private const long MaxCopyLength = 0x7FFFF000;

    /// <summary>Open flags passed on to the host; the rest (O_CREAT, O_EXCL, O_NOCTTY, O_PATH,
    /// O_TMPFILE, O_NOFOLLOW, O_DIRECTORY, FASYNC, O_CLOEXEC from the guest) are its own business.</summary>
    private const int PassedOpenFlags = Libc.O_ACCMODE | Libc.O_TRUNC | Libc.O_APPEND | Libc.O_DIRECT | Libc.O_NOATIME
        | Libc.O_SYNC | Libc.O_DSYNC | Libc.O_NONBLOCK | Libc.O_LARGEFILE;

    private bool Writeback => (_negotiated & FuseInitFlags.WritebackCache) != 0;

    /// <summary>The host open flags for a guest OPEN/CREATE, or -errno.</summary>
    private int HostOpenFlags(uint guestFlags)
    {
        int flags = (int)guestFlags & PassedOpenFlags;
        if ((flags & Libc.O_ACCMODE) == Libc.O_ACCMODE)
        {
            return EINVAL;
        }
        // Appends go through RWF_APPEND per write (or are the guest's job with writeback), so that a
        // mmap'd file or an fcntl(F_SETFL) in the guest cannot leave the host fd in the wrong mode.
        flags &= ~Libc.O_APPEND;
        if (Writeback && (flags & Libc.O_ACCMODE) == Libc.O_WRONLY)
        {
            // The guest page cache may read pages of a file opened write-only.
            flags = (flags & ~Libc.O_ACCMODE) | Libc.O_RDWR;
        }
        if (!_options.AllowDirectIo)
        {
            flags &= ~Libc.O_DIRECT;
        }
        if (!_options.PreserveNoatime)
        {
            flags &= ~Libc.O_NOATIME;
        }
        if (_options.ReadOnly && ((flags & Libc.O_ACCMODE) != Libc.O_RDONLY || (flags & Libc.O_TRUNC) != 0))
        {
            return -(int)Errno.EROFS;
        }
        return flags | Libc.O_CLOEXEC;
    }

    /// <summary>Direct-I/O files also get PARALLEL_DIRECT_WRITES: the client kernel otherwise holds the
    /// file's inode lock exclusively for each direct WRITE's round trip, so writers of one file wait
    /// for each other's replies (16 writers of 1 MiB ran no faster than one). Each WRITE is a pwritev
    /// at its own offset here; the kernel still serializes appends and writes past the end.</summary>
    private uint FileOpenOutFlags(bool directory)
    {
        const FuseOpenOutFlags directFile = FuseOpenOutFlags.DirectIo | FuseOpenOutFlags.ParallelDirectWrites;
        FuseOpenOutFlags f = _options.Cache switch
        {
            CachePolicy.Never => directory ? FuseOpenOutFlags.None : directFile,
            CachePolicy.Metadata => directory ? FuseOpenOutFlags.CacheDir | FuseOpenOutFlags.KeepCache : directFile,
            CachePolicy.Always => directory ? FuseOpenOutFlags.KeepCache | FuseOpenOutFlags.CacheDir : FuseOpenOutFlags.KeepCache,
            _ => FuseOpenOutFlags.None,
        };
        return (uint)f;
    }

    private int DoOpen(in FuseInHeader h, ref RequestReader r, ref ReplyWriter w)
    {
        if (!r.TryRead(out FuseOpenIn a))
        {
            return Malformed();
        }
        if (w.Available < FuseOpenOut.Size)
        {
            return EIO;
        }
        int flags = HostOpenFlags(a.Flags);
        if (flags < 0)
        {
            return flags;
        }
        Node? node = _nodes.Acquire(h.NodeId);
        if (node is null)
        {
            return EBADF;
        }
        try
        {
            if (node.IsDirectory)
            {
                return -(int)Errno.EISDIR;
            }
            if (node.IsSymlink)
            {
                return -(int)Errno.ELOOP;
            }
            if (!node.IsRegular)
            {
                // Device nodes and FIFOs are opened by the guest kernel itself, never through us:
                // opening a host device the guest created would hand it the host's device.
                return -(int)Errno.EACCES;
            }
            if (!_budget.TryTake())
            {
                return -(int)Errno.ENFILE;
            }
            bool fsetidDropped = (flags & Libc.O_TRUNC) != 0 && KillsPrivileges(a.OpenFlags) && DropFsetid();
            int fd = Reopen(node, flags);
            RestoreFsetid(fsetidDropped);
            if (fd < 0)
            {
                _budget.Return();
                return fd;
            }
            Handle handle = _handles.Add(node, fd, flags, (int)a.Flags, isDirectory: false);
            var reply = new FuseOpenOut { Fh = handle.Id, OpenFlags = FileOpenOutFlags(directory: false) };
            w.TryWrite(in reply);
            return 0;
        }
        finally
        {
            _nodes.Release(node);
        }
    }

    /// <summary>OPEN/CREATE's FUSE_OPEN_KILL_SUIDGID, when HANDLE_KILLPRIV_V2 was agreed.</summary>
    private bool KillsPrivileges(uint openFlags) =>
        (openFlags & (uint)FuseOpenInFlags.KillSuidgid) != 0 && (_negotiated & FuseInitFlags.HandleKillprivV2) != 0;

    private int DoCreate(in FuseInHeader h, ref RequestReader r, ref ReplyWriter w, bool tmpfile)
    {
        if (!r.TryRead(out FuseCreateIn a))
        {
            return Malformed();
        }
        if (w.Available < FuseEntryOut.Size + FuseOpenOut.Size)
        {
            return EIO;
        }
        byte[] scratch = ArgumentScratch;
        int rc = ReadNames(in h, ref r, scratch, 1, validate: !tmpfile, out NameArgs names);
        if (rc < 0 || (rc = ParseExtensions(in names, out RequestExtensions ext)) < 0)
        {
            return rc;
        }
        int flags = HostOpenFlags(a.Flags);
        if (flags < 0)
        {
            return flags;
        }
        if (tmpfile)
        {
            if ((flags & Libc.O_ACCMODE) == Libc.O_RDONLY)
            {
                return EINVAL;
            }
            flags = (flags & ~Libc.O_TRUNC) | Libc.O_TMPFILE;
        }
        else
        {
            flags |= Libc.O_CREAT | ((int)a.Flags & Libc.O_EXCL) | Libc.O_NOFOLLOW;
        }
        Node? parent = _nodes.Acquire(h.NodeId);
        if (parent is null)
        {
            return EBADF;
        }
        int temporary = -1;
        int fd = -1;
        bool fdBudgeted = false;
        bool created = true;
        try
        {
            if (!parent.IsDirectory)
            {
                return -(int)Errno.ENOTDIR;
            }
            int parentFd = PathFd(parent, ref temporary);
            if (parentFd < 0)
            {
                return parentFd;
            }
            if (!_budget.TryTake())
            {
                return -(int)Errno.ENFILE;
            }
            fdBudgeted = true;
            uint mode = EffectiveMode(parentFd, a.Mode & 0xFFF, a.Umask);
            rc = EnterCredentials(in h, in ext, out CredentialState saved);
            if (rc < 0)
            {
                return rc;
            }
            // O_TRUNC of an existing file: the guest's caller may not keep its setuid bits.
            bool fsetidDropped = (flags & Libc.O_TRUNC) != 0 && KillsPrivileges(a.OpenFlags) && DropFsetid();
            try
            {
                fixed (byte* name = names.First)
                {
                    byte* dot = stackalloc byte[2];
                    dot[0] = (byte)'.';
                    dot[1] = 0;
                    if (tmpfile || (flags & Libc.O_EXCL) != 0)
                    {
                        fd = OpenBelow(parentFd, tmpfile ? dot : name, flags, mode);
                    }
                    else
                    {
                        fd = CreateOrOpenRegular(parentFd, name, flags, mode, out created);
                    }
                }
            }
            finally
            {
                RestoreFsetid(fsetidDropped);
                LeaveCredentials(in saved);
            }
            if (fd < 0)
            {
                return fd;
            }
            // The label is the new file's, like virtiofsd's fscreate: an existing file keeps its own,
            // and a failure must not remove a file this request did not create.
            if (ext.HasSecctx && created)
            {
                rc = tmpfile ? SetLabelOnFd(fd, in ext) : ApplySecurityLabelByName(parentFd, names.First, in ext);
                if (rc < 0)
                {
                    return rc;
                }
            }
            // The node comes from the opened file itself (not from the name, which may already
            // point elsewhere): an O_PATH twin through the magic link.
            if (!_budget.TryTake())
            {
                return -(int)Errno.ENFILE;
            }
            byte* fdName = stackalloc byte[16];
            FormatFd(fd, new Span<byte>(fdName, 16));
            int pathFd = Libc.OpenAt(_procSelfFd, fdName, Libc.O_PATH | Libc.O_CLOEXEC, 0);
            if (pathFd < 0)
            {
                _budget.Return();
                return Libc.NegErrno;
            }
            rc = InsertFromFdKeep(parent, pathFd, out FuseEntryOut entry, out Node node);
            if (rc < 0)
            {
                return rc;
            }
            Handle handle = _handles.Add(node, fd, flags & ~(Libc.O_CREAT | Libc.O_EXCL | Libc.O_TMPFILE | Libc.O_NOFOLLOW), (int)a.Flags, isDirectory: false);
            _nodes.Release(node);
            fd = -1;
            fdBudgeted = false;
            var open = new FuseOpenOut { Fh = handle.Id, OpenFlags = FileOpenOutFlags(directory: false) };
            w.TryWrite(in entry);
            w.TryWrite(in open);
            return 0;
        }
        finally
        {
            if (fd >= 0)
            {
                Libc.Close(fd);
            }
            if (fdBudgeted)
            {
                _budget.Return();
            }
            CloseTemporary(temporary);
            _nodes.Release(parent);
        }
    }

    /// <summary>CREATE without O_EXCL: creates the file, or opens the one already there — but only a
    /// regular file. A plain open(O_CREAT) of an existing name would open whatever is there: a FIFO
    /// (the worker then blocks until a reader comes, found by the FUSE fuzzer) or a device node the
    /// guest made with MKNOD (handing it the host's device, which OPEN refuses). So: try O_EXCL
    /// first; on EEXIST pin the existing inode with an O_PATH fd, check its type, and reopen that
    /// inode through /proc/self/fd, so no rename in between can swap another file in.
    /// <paramref name="created"/> says whether the file is new. Returns fd or -errno.</summary>
    private int CreateOrOpenRegular(int parentFd, byte* name, int flags, uint mode, out bool created)
    {
        created = false;
        for (int attempt = 0; attempt < 8; attempt++)
        {
            int fd = OpenBelow(parentFd, name, flags | Libc.O_EXCL, mode);
            if (fd != -(int)Errno.EEXIST)
            {
                created = fd >= 0;
                return fd;
            }
            int pathFd = OpenBelow(parentFd, name, Libc.O_PATH | Libc.O_NOFOLLOW | Libc.O_CLOEXEC, 0);
            if (pathFd == -(int)Errno.ENOENT)
            {
                continue; // removed in between: try to create it again
            }
            if (pathFd < 0)
            {
                return pathFd;
            }
            try
            {
                Statx st;
                byte empty = 0;
                if (Libc.StatxAt(pathFd, &empty, Libc.AT_EMPTY_PATH, Libc.STATX_TYPE, &st) < 0)
                {
                    return Libc.NegErrno;
                }
                switch (st.Mode & Libc.S_IFMT)
                {
                    case Libc.S_IFREG:
                        break;
                    case Libc.S_IFDIR:
                        return -(int)Errno.EISDIR;
                    case Libc.S_IFLNK:
                        return -(int)Errno.ELOOP;
                    default:
                        return -(int)Errno.EACCES;
                }
                return ReopenPathFd(pathFd, flags);
            }
            finally
            {
                Libc.Close(pathFd);
            }
        }
        return -(int)Errno.EAGAIN;
    }

    /// <summary>Opens (creating) a name below <paramref name="parentFd"/>, confined like
    /// <see cref="OpenPathBelow"/>. Returns fd or -errno.</summary>
    private int OpenBelow(int parentFd, byte* name, int flags, uint mode)
    {
        int fd;
        if (_useOpenat2)
        {
            var how = new OpenHow
            {
                Flags = (ulong)(uint)flags,
                Mode = (flags & (Libc.O_CREAT | Libc.O_TMPFILE)) != 0 ? mode : 0,
                Resolve = Libc.RESOLVE_BENEATH | Libc.RESOLVE_NO_SYMLINKS | Libc.RESOLVE_NO_MAGICLINKS,
            };
            fd = Libc.OpenAt2(parentFd, name, &how);
        }
        else
        {
            fd = Libc.OpenAt(parentFd, name, flags, mode);
        }
        return fd < 0 ? Libc.NegErrno : fd;
    }

    private int ApplySecurityLabelByName(int parentFd, ReadOnlySpan<byte> nameZ, in RequestExtensions ext)
    {
        fixed (byte* name = nameZ)
        {
            return ApplySecurityLabel(parentFd, name, in ext);
        }
    }

    private static int SetLabelOnFd(int fd, in RequestExtensions ext)
    {
        fixed (byte* xname = ext.SecctxName)
        fixed (byte* value = ext.SecctxValue)
        {
            return Libc.Fsetxattr(fd, xname, value, (nuint)ext.SecctxValue.Length, 0) < 0 ? Libc.NegErrno : 0;
        }
    }

    /// <summary><see cref="InsertFromFd"/> that also hands the caller a reference to the node.</summary>
    private int InsertFromFdKeep(Node parent, int fd, out FuseEntryOut entry, out Node node)
    {
        int rc = InsertFromFd(parent, fd, out entry);
        node = null!;
        if (rc < 0)
        {
            return rc;
        }
        Node? found = _nodes.Acquire(entry.NodeId);
        if (found is null)
        {
            // Forgotten in between by a hostile FORGET: the reply would name a dead node.
            return -(int)Errno.ESTALE;
        }
        node = found;
        return 0;
    }

    private int DoRead(in FuseInHeader h, ref RequestReader r, ref ReplyWriter w)
    {
        if (!r.TryRead(out FuseReadIn a))
        {
            return Malformed();
        }
        if (a.Length > MaxWrite || a.Offset > long.MaxValue)
        {
            return EINVAL;
        }
        Handle? handle = _handles.Acquire(a.Fh, h.NodeId);
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

    private int DoWrite(in FuseInHeader h, ref RequestReader r, ref ReplyWriter w)
    {
        if (!r.TryRead(out FuseWriteIn a))
        {
            return Malformed();
        }
        if (a.Length != (uint)r.Remaining || a.Length > MaxWrite || a.Offset > long.MaxValue)
        {
            return Malformed();
        }
        if (w.Available < FuseWriteOut.Size)
        {
            return EIO;
        }
        Handle? handle = _handles.Acquire(a.Fh, h.NodeId);
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
            // Appends of a non-cached write go through RWF_APPEND, so that several guests (or the
            // host) sharing the file still append atomically; writeback and mmap writes carry the
            // offset the guest computed (FUSE_WRITE_CACHE).
            bool delayed = ((FuseWriteFlags)a.WriteFlags & FuseWriteFlags.Cache) != 0;
            int rwf = !delayed && !Writeback && ((int)a.Flags & Libc.O_APPEND) != 0 ? Libc.RWF_APPEND : 0;
            int total = 0;
            int first = 0;
            long offset = (long)a.Offset;
            bool killPrivileges = ((FuseWriteFlags)a.WriteFlags & FuseWriteFlags.KillSuidgid) != 0 && (_negotiated & FuseInitFlags.HandleKillprivV2) != 0;
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
            var reply = new FuseWriteOut { Length = (uint)total };
            w.TryWrite(in reply);
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

    private int DoFlush(in FuseInHeader h, ref RequestReader r)
    {
        if (!r.TryRead(out FuseFlushIn a))
        {
            return Malformed();
        }
        Handle? handle = _handles.Acquire(a.Fh, h.NodeId);
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

    private int DoRelease(in FuseInHeader h, ref RequestReader r, bool directory)
    {
        if (!r.TryRead(out FuseReleaseIn a))
        {
            return Malformed();
        }
        if (!directory && ((FuseReleaseFlags)a.ReleaseFlags & FuseReleaseFlags.FlockUnlock) != 0)
        {
            Handle? handle = _handles.Acquire(a.Fh, h.NodeId);
            if (handle is not null)
            {
                Libc.Flock(handle.Fd, Libc.LOCK_UN);
                _handles.Release(handle);
            }
        }
        return _handles.Remove(a.Fh, h.NodeId, directory) ? 0 : EBADF;
    }

    private int DoFsync(in FuseInHeader h, ref RequestReader r, bool directory)
    {
        if (!r.TryRead(out FuseFsyncIn a))
        {
            return Malformed();
        }
        Handle? handle = _handles.Acquire(a.Fh, h.NodeId);
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

    private int DoFallocate(in FuseInHeader h, ref RequestReader r)
    {
        if (!r.TryRead(out FuseFallocateIn a))
        {
            return Malformed();
        }
        if (a.Offset > long.MaxValue || a.Length > long.MaxValue)
        {
            return EINVAL;
        }
        Handle? handle = _handles.Acquire(a.Fh, h.NodeId);
        if (handle is null)
        {
            return EBADF;
        }
        try
        {
            return Libc.Fallocate(handle.Fd, (int)a.Mode, (long)a.Offset, (long)a.Length) < 0 ? Libc.NegErrno : 0;
        }
        finally
        {
            _handles.Release(handle);
        }
    }

    private int DoLseek(in FuseInHeader h, ref RequestReader r, ref ReplyWriter w)
    {
        if (!r.TryRead(out FuseLseekIn a))
        {
            return Malformed();
        }
        if (w.Available < FuseLseekOut.Size)
        {
            return EIO;
        }
        if (a.Offset > long.MaxValue || a.Whence > Libc.SEEK_HOLE)
        {
            return EINVAL;
        }
        Handle? handle = _handles.Acquire(a.Fh, h.NodeId);
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
            var reply = new FuseLseekOut { Offset = (ulong)result };
            w.TryWrite(in reply);
            return 0;
        }
        finally
        {
            _handles.Release(handle);
        }
    }

    private int DoCopyFileRange(in FuseInHeader h, ref RequestReader r, ref ReplyWriter w)
    {
        if (!r.TryRead(out FuseCopyFileRangeIn a))
        {
            return Malformed();
        }
        if (w.Available < FuseWriteOut.Size)
        {
            return EIO;
        }
        if (a.Flags != 0 || a.OffIn > long.MaxValue || a.OffOut > long.MaxValue)
        {
            return EINVAL;
        }
        Handle? input = _handles.Acquire(a.FhIn, h.NodeId);
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
            nint n = Libc.CopyFileRange(input.Fd, &offIn, output.Fd, &offOut, (nuint)length, 0);
            if (n < 0)
            {
                return Libc.NegErrno;
            }
            var reply = new FuseWriteOut { Length = (uint)n };
            w.TryWrite(in reply);
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

    private int DoSyncfs(in FuseInHeader h, ref RequestReader r)
    {
        if (!r.TryRead(out FuseSyncfsIn _))
        {
            return Malformed();
        }
        Node? node = _nodes.Acquire(h.NodeId);
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
