using Vhostfsd.FusePassthrough.Passthrough;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.FusePassthrough;

/// <summary>The FUSE server: decodes one request from readable segments, executes it against the
/// shared host directory and encodes the reply into writable segments. Thread-safe: several queue
/// workers call <see cref="HandleRequest"/> at once. Transport-agnostic: it knows nothing of
/// virtqueues or vhost-user.
/// <para>Process-wide effects: the constructor sets the process umask to 0 (as the C virtiofsd
/// does) so that files get exactly the mode the guest asks for.</para></summary>
public sealed unsafe partial class FuseServer : IDisposable
{
    /// <summary>Largest WRITE payload (and READ size) negotiated: 1 MiB, as virtiofsd.</summary>
    public const int MaxWrite = 1 << 20;

    /// <summary>Largest request accepted: a maximal WRITE with its headers (bigger is EINVAL).</summary>
    public const int MaxRequestSize = MaxWrite + 4096;

    private const uint NameMax = 255;
    private const int PathMax = 4096;

    private readonly PassthroughOptions _options;
    private readonly Action<string>? _log;
    private readonly FdBudget _budget;
    private readonly NodeTable _nodes;
    private readonly HandleTable _handles;
    private readonly XattrMap? _xattrMap;
    private readonly int _procSelfFd;
    private readonly bool _useOpenat2;
    private readonly bool _hasXattrAt;
    private readonly bool _privileged;
    private readonly ulong _entryValidSec;
    private readonly uint _entryValidNsec;
    private readonly ulong _attrValidSec;
    private readonly uint _attrValidNsec;
    private readonly bool _fileHandles;
    private readonly Dictionary<ulong, int> _mountFds = new();
    private readonly object _mountLock = new();
    private readonly InterruptSet _interrupts = new();

    private volatile bool _initialized;
    private volatile bool _disposed;
    private FuseInitFlags _negotiated;
    private uint _minor;

    /// <summary>Opens the shared directory and the /proc/self/fd directory; throws
    /// <see cref="PosixException"/> or ArgumentException when either is unusable.</summary>
    public FuseServer(PassthroughOptions options, Action<string>? log = null)
    {
        options.Validate();
        _options = options;
        _log = log;
        _xattrMap = options.XattrMap is null ? null : XattrMap.Parse(options.XattrMap);
        _budget = new FdBudget(FdBudget.ResolveLimit(options.MaxGuestFds));
        _nodes = new NodeTable(_budget, options.EffectiveMaxHandleOnlyNodes);
        _handles = new HandleTable(_budget, _nodes);
        _privileged = Libc.GetEuid() == 0;
        (_entryValidSec, _entryValidNsec) = SplitTimeout(options.EffectiveEntryTimeout);
        (_attrValidSec, _attrValidNsec) = SplitTimeout(options.EffectiveAttrTimeout);

        // Files must get the mode the guest asks for (the guest kernel applied its umask already).
        Libc.Umask(0);

        _procSelfFd = options.ProcSelfFdDir is int procFd
            ? PosixException.Check(Libc.Fcntl(procFd, Libc.F_DUPFD_CLOEXEC, 0), "dup /proc/self/fd")
            : OpenDirectory("/proc/self/fd", Libc.O_PATH | Libc.O_DIRECTORY | Libc.O_CLOEXEC);
        int rootFd;
        try
        {
            rootFd = OpenDirectory(options.SharedDir, Libc.O_PATH | Libc.O_DIRECTORY | Libc.O_CLOEXEC);
        }
        catch
        {
            Libc.Close(_procSelfFd);
            throw;
        }
        Statx st;
        byte empty = 0;
        if (Libc.StatxAt(rootFd, &empty, Libc.AT_EMPTY_PATH | Libc.AT_SYMLINK_NOFOLLOW, StatxMask, &st) < 0)
        {
            var errno = Libc.LastErrno;
            Libc.Close(rootFd);
            Libc.Close(_procSelfFd);
            throw new PosixException("statx " + options.SharedDir, errno);
        }
        _nodes.SetRoot(rootFd, KeyOf(in st));
        _useOpenat2 = ProbeOpenat2(rootFd);
        _hasXattrAt = !options.AvoidXattrAt && ProbeXattrAt(rootFd);
        _fileHandles = options.InodeFileHandles != InodeFileHandles.Never && ProbeFileHandles(rootFd, options.InodeFileHandles);
    }

    /// <summary>Called once per successful INIT (rarely: once per mount), on the worker thread,
    /// so the daemon can log what was agreed.</summary>
    public Action<FuseInitSummary>? InitNegotiated { get; set; }

    /// <summary>Counters for monitoring and tests.</summary>
    public FuseServerStats Stats { get; } = new();

    /// <summary>The options this server runs with.</summary>
    public PassthroughOptions Options => _options;

    /// <summary>INIT flags agreed with the guest (None before INIT).</summary>
    public FuseInitFlags NegotiatedFlags => _negotiated;

    /// <summary>Protocol minor agreed with the guest (0 before INIT).</summary>
    public uint NegotiatedMinor => _minor;

    /// <summary>Nodes the guest holds (root included).</summary>
    public int NodeCount => _nodes.Count;

    /// <summary>Open file and directory handles.</summary>
    public int HandleCount => _handles.Count;

    /// <summary>Guest-held fds in use and the limit (ENFILE beyond it).</summary>
    public (int Used, int Limit) FdUsage => (_budget.Used, _budget.Limit);

    /// <summary>True when openat2 (RESOLVE_BENEATH) is used for name resolution.</summary>
    public bool UsesOpenat2 => _useOpenat2;

    /// <summary>True when xattrs go through setxattrat/getxattrat on O_PATH fds (Linux 6.13+), false
    /// when xattrs of symlinks and special files (and security labels) need /proc/self/fd/N by path.</summary>
    public bool UsesXattrAt => _hasXattrAt;

    /// <summary>True when nodes are held as file handles (prefer/mandatory and supported).</summary>
    public bool UsesFileHandles => _fileHandles;

    /// <summary>Handles one request. The request is the concatenation of <paramref name="readable"/>;
    /// <paramref name="request"/> is its header, copied out of those segments by
    /// <see cref="FuseRequestHeader.Read"/> (before <see cref="Triage"/>, when the transport routes
    /// requests): the server acts on that copy and never reads the header from the segments again.
    /// The reply is written into <paramref name="writable"/>, never past it. Returns the reply length
    /// (0 for FORGET, BATCH_FORGET and INTERRUPT, which get no reply, and when the writable space
    /// cannot hold even fuse_out_header). Never throws.
    /// <para>Contract: every IoVec describes memory that stays valid for the duration of the call.</para></summary>
    public int HandleRequest(in FuseRequestHeader request, ReadOnlySpan<IoVec> readable, ReadOnlySpan<IoVec> writable)
    {
        Interlocked.Increment(ref Stats._requests);
        int capacity = RequestReader.TotalLength(writable);
        var w = new ReplyWriter(writable, capacity);
        ulong unique = request.Unique;
        try
        {
            int total = RequestReader.TotalLength(readable);
            // A header copied from other segments is the transport's bug; answered like a short request.
            if (!request.IsComplete || request.Length != total)
            {
                Interlocked.Increment(ref Stats._malformed);
                return Finish(ref w, unique, -(int)Errno.EINVAL);
            }
            ref readonly FuseInHeader h = ref request.In;
            var opcode = (FuseOpcode)h.Opcode;
            bool noReply = opcode is FuseOpcode.Forget or FuseOpcode.BatchForget or FuseOpcode.Interrupt;
            if (h.Len != (uint)total || total > MaxRequestSize)
            {
                Interlocked.Increment(ref Stats._malformed);
                return noReply ? 0 : Finish(ref w, unique, -(int)Errno.EINVAL);
            }
            var r = new RequestReader(readable, total);
            r.Skip(FuseInHeader.Size);
            if (noReply)
            {
                HandleNoReply(opcode, in h, ref r);
                return 0;
            }
            if (capacity < FuseOutHeader.Size)
            {
                Interlocked.Increment(ref Stats._replyTooSmall);
                return 0;
            }
            if (_disposed)
            {
                return Finish(ref w, unique, -(int)Errno.ENOTCONN);
            }
            if (!_initialized && opcode != FuseOpcode.Init)
            {
                return Finish(ref w, unique, -(int)Errno.EIO);
            }
            w.Seek(FuseOutHeader.Size);
            int result = Dispatch(opcode, in h, ref r, ref w);
            return Finish(ref w, unique, result);
        }
        catch (Exception e)
        {
            Interlocked.Increment(ref Stats._exceptions);
            _log?.Invoke("FUSE request failed with an internal error (answered EIO): " + e.GetType().Name + ": " + e.Message);
            if (capacity < FuseOutHeader.Size)
            {
                return 0;
            }
            var fresh = new ReplyWriter(writable, capacity);
            return Finish(ref fresh, unique, -(int)Errno.EIO);
        }
    }

    /// <summary>Cheap check for the device loop: sorts a request from its copied header alone, so that
    /// one that may block for a long time can be handed to a pool instead of stalling the queue:
    /// <see cref="RequestTriage.MayBlock"/> for lock waits, syncs, flush, big copies or allocations,
    /// <see cref="RequestTriage.LargeRead"/> for a READ of at least <paramref name="largeReadBytes"/>
    /// (fuse_read_in.size), <see cref="RequestTriage.Short"/> for the rest and for anything too short
    /// to say. Pass the same <paramref name="request"/> to <see cref="HandleRequest"/>: what runs is
    /// then what was sorted, whatever the guest writes into its buffer meanwhile. The request is
    /// validated when it runs.</summary>
    public static RequestTriage Triage(in FuseRequestHeader request, int largeReadBytes)
    {
        if (!request.IsComplete)
        {
            return RequestTriage.Short;
        }
        switch (request.Opcode)
        {
            case FuseOpcode.Setlkw or FuseOpcode.Fsync or FuseOpcode.Fsyncdir or FuseOpcode.Syncfs
                or FuseOpcode.Flush or FuseOpcode.CopyFileRange or FuseOpcode.Fallocate:
                return RequestTriage.MayBlock;
            case FuseOpcode.Read:
                return request.HasReadSize && request.ReadSize >= (uint)Math.Max(0, largeReadBytes)
                    ? RequestTriage.LargeRead
                    : RequestTriage.Short;
            default:
                return RequestTriage.Short;
        }
    }

    /// <summary>Drops every node (except the root) and every handle, and forgets the negotiated
    /// session: what DESTROY, a device reset or a disconnect needs. A new INIT starts over.</summary>
    public void Reset()
    {
        _initialized = false;
        _interrupts.CancelAll();
        _handles.Clear();
        _nodes.Clear();
        _negotiated = FuseInitFlags.None;
        _minor = 0;
    }

    /// <summary>Same as <see cref="Reset"/>.</summary>
    public void Destroy() => Reset();

    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        Reset();
        _nodes.CloseRoot();
        lock (_mountLock)
        {
            foreach (int fd in _mountFds.Values)
            {
                Libc.Close(fd);
            }
            _mountFds.Clear();
        }
        Libc.Close(_procSelfFd);
    }

    private int Finish(ref ReplyWriter w, ulong unique, int result)
    {
        if (w.Capacity < FuseOutHeader.Size)
        {
            Interlocked.Increment(ref Stats._replyTooSmall);
            return 0;
        }
        int length = result < 0 ? FuseOutHeader.Size : Math.Max(w.Position, FuseOutHeader.Size);
        if (result < 0)
        {
            Interlocked.Increment(ref Stats._errorReplies);
        }
        var header = new FuseOutHeader { Len = (uint)length, Error = result < 0 ? result : 0, Unique = unique };
        w.Seek(0);
        w.TryWrite(in header);
        return length;
    }

    private void HandleNoReply(FuseOpcode opcode, in FuseInHeader h, ref RequestReader r)
    {
        switch (opcode)
        {
            case FuseOpcode.Forget:
                if (r.TryRead(out FuseForgetIn forget))
                {
                    _nodes.Forget(h.NodeId, forget.Nlookup);
                }
                else
                {
                    Interlocked.Increment(ref Stats._malformed);
                }
                break;
            case FuseOpcode.BatchForget:
                if (!r.TryRead(out FuseBatchForgetIn batch) || (ulong)batch.Count * FuseForgetOne.Size != (ulong)r.Remaining)
                {
                    Interlocked.Increment(ref Stats._malformed);
                    break;
                }
                for (uint i = 0; i < batch.Count; i++)
                {
                    r.TryRead(out FuseForgetOne one);
                    _nodes.Forget(one.NodeId, one.Nlookup);
                }
                break;
            case FuseOpcode.Interrupt:
                if (r.TryRead(out FuseInterruptIn interrupt))
                {
                    Interlocked.Increment(ref Stats._interrupts);
                    _interrupts.Add(interrupt.Unique);
                }
                else
                {
                    Interlocked.Increment(ref Stats._malformed);
                }
                break;
        }
    }

    private int Dispatch(FuseOpcode opcode, in FuseInHeader h, ref RequestReader r, ref ReplyWriter w)
    {
        if (_options.ReadOnly && IsModifying(opcode))
        {
            return -(int)Errno.EROFS;
        }
        return opcode switch
        {
            FuseOpcode.Init => DoInit(in h, ref r, ref w),
            FuseOpcode.Destroy => DoDestroy(),
            FuseOpcode.Lookup => DoLookup(in h, ref r, ref w),
            FuseOpcode.Getattr => DoGetattr(in h, ref r, ref w),
            FuseOpcode.Setattr => DoSetattr(in h, ref r, ref w),
            FuseOpcode.Readlink => DoReadlink(in h, ref r, ref w),
            FuseOpcode.Symlink => DoSymlink(in h, ref r, ref w),
            FuseOpcode.Mknod => DoMknod(in h, ref r, ref w),
            FuseOpcode.Mkdir => DoMkdir(in h, ref r, ref w),
            FuseOpcode.Unlink => DoUnlink(in h, ref r, directory: false),
            FuseOpcode.Rmdir => DoUnlink(in h, ref r, directory: true),
            FuseOpcode.Rename => DoRename(in h, ref r, extended: false),
            FuseOpcode.Rename2 => DoRename(in h, ref r, extended: true),
            FuseOpcode.Link => DoLink(in h, ref r, ref w),
            FuseOpcode.Open => DoOpen(in h, ref r, ref w),
            FuseOpcode.Create => DoCreate(in h, ref r, ref w, tmpfile: false),
            FuseOpcode.Tmpfile => DoCreate(in h, ref r, ref w, tmpfile: true),
            FuseOpcode.Read => DoRead(in h, ref r, ref w),
            FuseOpcode.Write => DoWrite(in h, ref r, ref w),
            FuseOpcode.Flush => DoFlush(in h, ref r),
            FuseOpcode.Release => DoRelease(in h, ref r, directory: false),
            FuseOpcode.Fsync => DoFsync(in h, ref r, directory: false),
            FuseOpcode.Opendir => DoOpendir(in h, ref r, ref w),
            FuseOpcode.Readdir => DoReaddir(in h, ref r, ref w, plus: false),
            FuseOpcode.Readdirplus => DoReaddir(in h, ref r, ref w, plus: true),
            FuseOpcode.Releasedir => DoRelease(in h, ref r, directory: true),
            FuseOpcode.Fsyncdir => DoFsync(in h, ref r, directory: true),
            FuseOpcode.Statfs => DoStatfs(in h, ref w),
            FuseOpcode.Statx => DoStatx(in h, ref r, ref w),
            FuseOpcode.Access => DoAccess(in h, ref r),
            FuseOpcode.Setxattr => DoSetxattr(in h, ref r),
            FuseOpcode.Getxattr => DoGetxattr(in h, ref r, ref w, list: false),
            FuseOpcode.Listxattr => DoGetxattr(in h, ref r, ref w, list: true),
            FuseOpcode.Removexattr => DoRemovexattr(in h, ref r),
            FuseOpcode.Getlk => DoGetlk(in h, ref r, ref w),
            FuseOpcode.Setlk => DoSetlk(in h, ref r, wait: false),
            FuseOpcode.Setlkw => DoSetlk(in h, ref r, wait: true),
            FuseOpcode.Fallocate => DoFallocate(in h, ref r),
            FuseOpcode.Lseek => DoLseek(in h, ref r, ref w),
            FuseOpcode.CopyFileRange => DoCopyFileRange(in h, ref r, ref w),
            FuseOpcode.Syncfs => DoSyncfs(in h, ref r),
            // As the Rust virtiofsd: no ioctls are passed through to host files.
            FuseOpcode.Ioctl => -(int)Errno.ENOSYS,
            // No DAX window, no poll notifications, no block mapping.
            FuseOpcode.Bmap or FuseOpcode.Poll or FuseOpcode.Setupmapping or FuseOpcode.Removemapping
                or FuseOpcode.NotifyReply => -(int)Errno.ENOSYS,
            _ => Unknown(),
        };
    }

    private int Unknown()
    {
        Interlocked.Increment(ref Stats._unknownOpcodes);
        return -(int)Errno.ENOSYS;
    }

    private static bool IsModifying(FuseOpcode opcode) => opcode is FuseOpcode.Setattr or FuseOpcode.Symlink
        or FuseOpcode.Mknod or FuseOpcode.Mkdir or FuseOpcode.Unlink or FuseOpcode.Rmdir or FuseOpcode.Rename
        or FuseOpcode.Rename2 or FuseOpcode.Link or FuseOpcode.Create or FuseOpcode.Tmpfile or FuseOpcode.Write
        or FuseOpcode.Setxattr or FuseOpcode.Removexattr or FuseOpcode.Fallocate or FuseOpcode.CopyFileRange;

    private int DoDestroy()
    {
        Reset();
        return 0;
    }

    private int DoInit(in FuseInHeader h, ref RequestReader r, ref ReplyWriter w)
    {
        if (!r.TryRead(out uint major) || !r.TryRead(out uint minor) || !r.TryRead(out uint maxReadahead) || !r.TryRead(out uint flags))
        {
            Interlocked.Increment(ref Stats._malformed);
            return -(int)Errno.EINVAL;
        }
        uint flags2 = 0;
        if ((flags & (uint)FuseInitFlags.InitExt) != 0)
        {
            r.TryRead(out flags2);
        }
        if (w.Available < FuseInitOut.Size)
        {
            return -(int)Errno.EIO;
        }
        if (major < FuseConstants.KernelVersion)
        {
            _log?.Invoke($"INIT: guest speaks FUSE {major}.{minor}; 7.{FuseConstants.MinSupportedMinor} or later is required");
            return -(int)Errno.EPROTO;
        }
        if (major > FuseConstants.KernelVersion)
        {
            // Tell the guest our major; it retries INIT with a major we speak.
            var retry = new FuseInitOut { Major = FuseConstants.KernelVersion, Minor = FuseConstants.KernelMinorVersion };
            w.TryWrite(in retry);
            return 0;
        }
        if (minor < FuseConstants.MinSupportedMinor)
        {
            _log?.Invoke($"INIT: guest speaks FUSE 7.{minor}; 7.{FuseConstants.MinSupportedMinor} or later is required");
            return -(int)Errno.EPROTO;
        }
        if (_initialized)
        {
            // A second INIT starts a new session: drop what the previous one held.
            Reset();
        }

        FuseInitFlags offered = FuseConstants.JoinInitFlags(flags, (flags & (uint)FuseInitFlags.InitExt) != 0 ? flags2 : 0);
        FuseInitFlags wanted = FuseInitFlags.AsyncRead | FuseInitFlags.ParallelDirops | FuseInitFlags.BigWrites
            | FuseInitFlags.AutoInvalData | FuseInitFlags.AsyncDio | FuseInitFlags.HasIoctlDir
            | FuseInitFlags.AtomicOTrunc | FuseInitFlags.MaxPages | FuseInitFlags.Submounts | FuseInitFlags.InitExt
            | FuseInitFlags.CreateSuppGroup | FuseInitFlags.AllowIdmap;
        if (_options.ReaddirplusEnabled)
        {
            wanted |= FuseInitFlags.DoReaddirplus | FuseInitFlags.ReaddirplusAuto;
        }
        if (_options.Writeback && !_options.ReadOnly)
        {
            wanted |= FuseInitFlags.WritebackCache;
        }
        if (_options.KillprivV2)
        {
            wanted |= FuseInitFlags.HandleKillprivV2;
        }
        if (_options.AllowMmap)
        {
            wanted |= FuseInitFlags.DirectIoAllowMmap;
        }
        if (_options.PosixLocks)
        {
            wanted |= FuseInitFlags.PosixLocks;
        }
        if (_options.FlockLocks)
        {
            wanted |= FuseInitFlags.FlockLocks;
        }
        if (_options.PosixAcl)
        {
            const FuseInitFlags acl = FuseInitFlags.PosixAcl | FuseInitFlags.DontMask | FuseInitFlags.SetxattrExt;
            if ((offered & acl) != acl)
            {
                _log?.Invoke("INIT: POSIX ACLs are enabled but the guest lacks POSIX_ACL/DONT_MASK/SETXATTR_EXT; refusing (EPROTO)");
                return -(int)Errno.EPROTO;
            }
            wanted |= acl;
        }
        if (_options.SecurityLabel)
        {
            if ((offered & FuseInitFlags.SecurityCtx) == 0)
            {
                _log?.Invoke("INIT: security labels are enabled but the guest lacks SECURITY_CTX; refusing (EPROTO)");
                return -(int)Errno.EPROTO;
            }
            wanted |= FuseInitFlags.SecurityCtx;
        }
        FuseInitFlags negotiated = offered & wanted;
        var (outFlags, outFlags2) = FuseConstants.SplitInitFlags(negotiated);
        int pageSize = Environment.SystemPageSize;
        var reply = new FuseInitOut
        {
            Major = FuseConstants.KernelVersion,
            Minor = Math.Min(minor, FuseConstants.KernelMinorVersion),
            MaxReadahead = maxReadahead,
            Flags = outFlags,
            Flags2 = (negotiated & FuseInitFlags.InitExt) != 0 ? outFlags2 : 0,
            MaxBackground = ushort.MaxValue,
            CongestionThreshold = ushort.MaxValue / 4 * 3,
            MaxWrite = MaxWrite,
            TimeGran = 1,
            MaxPages = (ushort)((MaxWrite + pageSize - 1) / pageSize),
            MapAlignment = 0,
        };
        _negotiated = negotiated;
        _minor = reply.Minor;
        _initialized = true;
        InitNegotiated?.Invoke(new FuseInitSummary(major, minor, reply.Minor, offered, negotiated));
        w.TryWrite(in reply);
        return 0;
    }

    // ---- helpers shared by the opcode files ----

    private const uint StatxMask = Libc.STATX_BASIC_STATS | Libc.STATX_MNT_ID;

    private static InodeKey KeyOf(in Statx st) => new(st.Dev, st.Ino, (st.Mask & Libc.STATX_MNT_ID) != 0 ? st.MntId : 0);

    private static (ulong, uint) SplitTimeout(TimeSpan t)
    {
        long ticks = Math.Max(0, t.Ticks);
        return ((ulong)(ticks / TimeSpan.TicksPerSecond), (uint)(ticks % TimeSpan.TicksPerSecond * 100));
    }

    /// <summary>glibc's dev_t of the kernel's 32-bit device number.</summary>
    private static ulong DecodeDev(uint dev)
    {
        var (major, minor) = FuseConstants.DecodeDev(dev);
        return Libc.MakeDev(major, minor);
    }

    private static FuseAttr ToAttr(in Statx st, uint flags)
    {
        return new FuseAttr
        {
            Ino = st.Ino,
            FileSize = st.FileSize,
            Blocks = st.Blocks,
            Atime = (ulong)st.Atime.Sec,
            Mtime = (ulong)st.Mtime.Sec,
            Ctime = (ulong)st.Ctime.Sec,
            AtimeNsec = st.Atime.Nsec,
            MtimeNsec = st.Mtime.Nsec,
            CtimeNsec = st.Ctime.Nsec,
            Mode = st.Mode,
            Nlink = st.Nlink,
            Uid = st.Uid,
            Gid = st.Gid,
            Rdev = FuseConstants.EncodeDev(st.RdevMajor, st.RdevMinor),
            BlkSize = st.BlkSize,
            Flags = flags,
        };
    }

    private FuseEntryOut ToEntry(ulong nodeId, in Statx st, uint attrFlags) => new()
    {
        NodeId = nodeId,
        Generation = 0,
        EntryValid = _entryValidSec,
        EntryValidNsec = _entryValidNsec,
        AttrValid = _attrValidSec,
        AttrValidNsec = _attrValidNsec,
        Attr = ToAttr(in st, attrFlags),
    };

    private FuseAttrOut ToAttrOut(in Statx st) => new()
    {
        AttrValid = _attrValidSec,
        AttrValidNsec = _attrValidNsec,
        Attr = ToAttr(in st, 0),
    };

    /// <summary>Writes "N\0" (the fd number) into <paramref name="buffer"/> for *at(procSelfFd, ...).</summary>
    private static void FormatFd(int fd, Span<byte> buffer)
    {
        fd.TryFormat(buffer, out int n);
        buffer[n] = 0;
    }

    private static int OpenDirectory(string path, int flags)
    {
        byte[] bytes = System.Text.Encoding.UTF8.GetBytes(path + "\0");
        fixed (byte* p = bytes)
        {
            int fd = Libc.OpenAt(Libc.AT_FDCWD, p, flags, 0);
            if (fd < 0)
            {
                PosixException.ThrowLast("open " + path);
            }
            return fd;
        }
    }

    private static bool ProbeOpenat2(int rootFd)
    {
        var how = new OpenHow { Flags = (ulong)(Libc.O_PATH | Libc.O_CLOEXEC | Libc.O_DIRECTORY), Resolve = Libc.RESOLVE_BENEATH };
        byte* dot = stackalloc byte[2];
        dot[0] = (byte)'.';
        dot[1] = 0;
        int fd = Libc.OpenAt2(rootFd, dot, &how);
        if (fd < 0)
        {
            return false;
        }
        Libc.Close(fd);
        return true;
    }

    /// <summary>The *xattrat calls (Linux 6.13) reach any file type through its O_PATH fd, without /proc.</summary>
    private static bool ProbeXattrAt(int rootFd)
    {
        byte empty = 0;
        return Libc.ListxattrAt(rootFd, &empty, Libc.AT_EMPTY_PATH, null, 0) >= 0 || Libc.LastErrno != Errno.ENOSYS;
    }

    private bool ProbeFileHandles(int rootFd, InodeFileHandles mode)
    {
        byte* buffer = stackalloc byte[FileHandleHeader.Size + MaxHandleBytes];
        var fh = (FileHandleHeader*)buffer;
        fh->HandleBytes = MaxHandleBytes;
        int mountId;
        byte empty = 0;
        // open_by_handle_at wants a real (not O_PATH) fd on the mount.
        byte* dot = stackalloc byte[2];
        dot[0] = (byte)'.';
        dot[1] = 0;
        int mountFd = Libc.OpenAt(rootFd, dot, Libc.O_RDONLY | Libc.O_DIRECTORY | Libc.O_CLOEXEC, 0);
        if (mountFd >= 0 && Libc.NameToHandleAt(rootFd, &empty, fh, &mountId, Libc.AT_EMPTY_PATH) == 0)
        {
            int fd = Libc.OpenByHandleAt(mountFd, fh, Libc.O_PATH | Libc.O_CLOEXEC);
            if (fd >= 0)
            {
                Libc.Close(fd);
                Libc.Close(mountFd);
                return true;
            }
        }
        var errno = Libc.LastErrno;
        if (mountFd >= 0)
        {
            Libc.Close(mountFd);
        }
        if (mode == InodeFileHandles.Mandatory)
        {
            throw new PosixException("inode file handles (mandatory) are unusable here: open_by_handle_at needs CAP_DAC_READ_SEARCH and file-handle support", errno);
        }
        _log?.Invoke("inode file handles unavailable (" + errno + "); holding O_PATH fds instead");
        return false;
    }

    internal const int MaxHandleBytes = 128;
}

/// <summary>What one INIT agreed: the guest's protocol version, the minor answered, the flags the
/// guest offered and the flags granted.</summary>
public readonly record struct FuseInitSummary(uint GuestMajor, uint GuestMinor, uint AnsweredMinor, FuseInitFlags Offered, FuseInitFlags Granted);
