using System.Runtime.InteropServices;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.GuestKernelShim;

// Opening and closing files: open, create, flush, fsync, release.
public sealed partial class FuseFs
{
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
        CacheOpened(file!, truncated: truncate);
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
        CacheOpened(file, truncated: (flags & Libc.O_TRUNC) != 0);
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
        lock (node.Sync)
        {
            if (file.MapRefs > 0)
            {
                // A mapping still holds the file: RELEASE waits for its munmap (the vma's reference to the file).
                file.ReleaseDeferred = true;
                return result;
            }
        }
        FinishRelease(file);
        return result;
    }

    /// <summary>The last reference to an open file went (fput → fuse_release): it leaves the files write-back may
    /// use, RELEASE / RELEASEDIR goes out in the background without credentials (not in no-open mode), and a node
    /// waiting for its last open file is evicted.</summary>
    internal void FinishRelease(FuseFile file)
    {
        var node = file.Node;
        UnlinkWriteFile(file);
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
    }

    private void SendRelease(ulong nodeId, ulong fh, int flags, FuseOpcode opcode, uint releaseFlags, ulong lockOwner)
    {
        var arg = new FuseReleaseIn { Fh = fh, Flags = (uint)flags, ReleaseFlags = releaseFlags, LockOwner = lockOwner };
        Conn.SendBackground(opcode, nodeId, FuseCaller.Kernel, Bytes(in arg), force: true);
    }

    /// <summary>What close(2) does before the file goes (fuse_flush): with a page cache, the file's dirty pages are
    /// written back and a write-back error this open file has not reported yet is returned (then no FLUSH is sent);
    /// then FLUSH, which also drops the caller's POSIX locks on the daemon side. FOPEN_NOFLUSH skips all of it unless
    /// write-back caching is on; after ENOSYS no FLUSH is sent again.</summary>
    public Errno Flush(FuseFile file, FuseCaller? caller = null)
    {
        var c = caller ?? file.Opener;
        if (file.IsDirectory || ((file.OpenFlags & FuseOpenOutFlags.NoFlush) != 0 && !WritebackCache))
        {
            return Errno.OK;
        }
        var rc = CheckLive(file.Node);
        if (rc != Errno.OK)
        {
            return rc;
        }
        rc = WritebackForFile(file, WritebackReason.Flush);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (NoFlush || (file.OpenFlags & FuseOpenOutFlags.NoFlush) != 0)
        {
            return Errno.OK;
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

    /// <summary>fsync / fdatasync (fuse_fsync): with a page cache the file's dirty pages are written back first and a
    /// write-back error this open file has not reported yet is returned, once, instead of sending FSYNC
    /// (file_write_and_wait_range); then FSYNC, or FSYNCDIR for a directory, on the file's handle (handle 0 in no-open
    /// mode). After ENOSYS not sent again, and 0.</summary>
    public Errno Fsync(FuseFile file, bool dataOnly = false, FuseCaller? caller = null)
        => FsyncRange(file, dataOnly, Who(caller), WritebackReason.Fsync, 0, long.MaxValue);

    private Errno FsyncRange(FuseFile file, bool dataOnly, in FuseCaller c, WritebackReason reason, long firstPage, long lastPage)
    {
        var rc = CheckLive(file.Node);
        if (rc != Errno.OK)
        {
            return rc;
        }
        rc = WritebackForFile(file, reason, firstPage, lastPage);
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
}
