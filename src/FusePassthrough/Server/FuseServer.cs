using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.FusePassthrough;

/// <summary>The FUSE server: decodes one request from readable segments, checks every length,
/// negotiates INIT, calls the file system <typeparamref name="TFs"/> with decoded arguments and
/// encodes its answer into writable segments. Thread-safe: several transport threads call
/// <see cref="HandleRequest"/> at once. Transport-agnostic: it knows nothing of virtqueues,
/// vhost-user or /dev/fuse — a request is a list of segments that may be guest memory.
/// <para>Generic over the file system so that, for a struct <typeparamref name="TFs"/>, every call
/// into it is direct (the JIT specialises the server for it).</para></summary>
public partial class FuseServer<TFs> : IDisposable where TFs : IFileSystem
{
    /// <summary>Largest WRITE payload (and READ size) negotiated: 1 MiB, as virtiofsd.</summary>
    public const int MaxWrite = 1 << 20;

    /// <summary>Largest request accepted: a maximal WRITE with its headers (bigger is EINVAL).</summary>
    public const int MaxRequestSize = MaxWrite + 4096;

    private readonly TFs _fs;
    private readonly Action<string>? _log;

    private volatile bool _initialized;
    private volatile bool _disposed;
    private FuseInitFlags _negotiated;
    private uint _minor;

    public FuseServer(TFs fileSystem, Action<string>? log = null)
    {
        _fs = fileSystem;
        _log = log;
    }

    /// <summary>The file system requests go to.</summary>
    public TFs FileSystem => _fs;

    /// <summary>Called once per successful INIT (rarely: once per mount), on the transport's thread,
    /// so the daemon can log what was agreed.</summary>
    public Action<FuseInitSummary>? InitNegotiated { get; set; }

    /// <summary>Counters for monitoring and tests.</summary>
    public FuseServerStats Stats { get; } = new();

    /// <summary>INIT flags agreed with the guest (None before INIT).</summary>
    public FuseInitFlags NegotiatedFlags => _negotiated;

    /// <summary>Protocol minor agreed with the guest (0 before INIT).</summary>
    public uint NegotiatedMinor => _minor;

    /// <summary>Handles one request. The request is the concatenation of <paramref name="readable"/>;
    /// <paramref name="request"/> is its header, copied out of those segments by
    /// <see cref="FuseRequestHeader.Read"/> (before <see cref="Triage"/>, when the transport routes
    /// requests): the server acts on that copy and never reads the header from the segments again.
    /// The reply is written into <paramref name="writable"/>, never past it. Returns the reply length
    /// (0 for FORGET, BATCH_FORGET and INTERRUPT, which get no reply, and when the writable space
    /// cannot hold even fuse_out_header). Never throws.
    /// <para>Contract: every IoVec describes memory that stays valid for the duration of the call.</para></summary>
    public int HandleRequest(in FuseRequestHeader request, ReadOnlySpan<IoVec> readable, ReadOnlySpan<IoVec> writable) =>
        HandleRequest(in request, readable, writable, null, null);

    /// <summary><see cref="HandleRequest(in FuseRequestHeader, ReadOnlySpan{IoVec}, ReadOnlySpan{IoVec})"/>
    /// with a transport that can carry a READ's data by reference: the file system may append file
    /// data to <paramref name="fileData"/> instead of copying it into <paramref name="writable"/>.
    /// The returned length then counts those bytes, which the segments do not hold: the transport
    /// sends the segments up to <see cref="ReplyFileData.Start"/> followed by the data, and must
    /// check that the two add up (an error reply drops the data).
    /// <para><paramref name="requestData"/>: the end of the request (a WRITE's data), held by the
    /// transport after <paramref name="readable"/>; what the file system leaves of it is the
    /// transport's to drop.</para></summary>
    public int HandleRequest(in FuseRequestHeader request, ReadOnlySpan<IoVec> readable, ReadOnlySpan<IoVec> writable, ReplyFileData? fileData,
        RequestFileData? requestData)
    {
        Interlocked.Increment(ref Stats._requests);
        int capacity = RequestReader.TotalLength(writable);
        var w = new ReplyWriter(writable, capacity, fileData);
        ulong unique = request.Unique;
        try
        {
            int inSegments = RequestReader.TotalLength(readable);
            int held = requestData?.Length ?? 0;
            int total = held > MaxRequestSize || inSegments > MaxRequestSize ? int.MaxValue : inSegments + held;
            // A header copied from other segments is the transport's bug; answered like a short request.
            if (!request.IsComplete || request.Length != inSegments)
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
            var r = new RequestReader(readable, inSegments, requestData);
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

    /// <summary>Cheap check for a transport: sorts a request from its copied header alone, so that
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
        _fs.Destroy();
        _negotiated = FuseInitFlags.None;
        _minor = 0;
    }

    /// <summary>Answers ENOTCONN from now on and drops the session; the file system's own resources
    /// are its owner's to release.</summary>
    public virtual void Dispose()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        Reset();
        GC.SuppressFinalize(this);
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
                    _fs.Forget(h.NodeId, forget.Nlookup);
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
                    _fs.Forget(one.NodeId, one.Nlookup);
                }
                break;
            case FuseOpcode.Interrupt:
                if (r.TryRead(out FuseInterruptIn interrupt))
                {
                    Interlocked.Increment(ref Stats._interrupts);
                    _fs.Interrupt(interrupt.Unique);
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
        if (IsModifying(opcode) && _fs.IsReadOnly)
        {
            return -(int)Errno.EROFS;
        }
        return opcode switch
        {
            FuseOpcode.Init => DoInit(ref r, ref w),
            FuseOpcode.Destroy => DoDestroy(),
            FuseOpcode.Lookup => DoLookup(in h, ref r, ref w),
            FuseOpcode.Getattr => DoGetattr(in h, ref r, ref w),
            FuseOpcode.Setattr => DoSetattr(in h, ref r, ref w),
            FuseOpcode.Readlink => DoReadlink(in h, ref w),
            FuseOpcode.Symlink => DoSymlink(in h, ref r, ref w),
            FuseOpcode.Mknod => DoMknod(in h, ref r, ref w),
            FuseOpcode.Mkdir => DoMkdir(in h, ref r, ref w),
            FuseOpcode.Unlink => DoUnlink(in h, ref r, directory: false),
            FuseOpcode.Rmdir => DoUnlink(in h, ref r, directory: true),
            FuseOpcode.Rename => DoRename(in h, ref r, extended: false),
            FuseOpcode.Rename2 => DoRename(in h, ref r, extended: true),
            FuseOpcode.Link => DoLink(in h, ref r, ref w),
            FuseOpcode.Open => DoOpen(in h, ref r, ref w, directory: false),
            FuseOpcode.Create => DoCreate(in h, ref r, ref w, tmpfile: false),
            FuseOpcode.Tmpfile => DoCreate(in h, ref r, ref w, tmpfile: true),
            FuseOpcode.Read => DoRead(in h, ref r, ref w),
            FuseOpcode.Write => DoWrite(in h, ref r, ref w),
            FuseOpcode.Flush => DoFlush(in h, ref r),
            FuseOpcode.Release => DoRelease(in h, ref r, directory: false),
            FuseOpcode.Fsync => DoFsync(in h, ref r, directory: false),
            FuseOpcode.Opendir => DoOpen(in h, ref r, ref w, directory: true),
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

    /// <summary>What the server itself asks of every guest: protocol features that do not depend on
    /// the file system behind it.</summary>
    private const FuseInitFlags ServerFlags = FuseInitFlags.AsyncRead | FuseInitFlags.ParallelDirops | FuseInitFlags.BigWrites
        | FuseInitFlags.AutoInvalData | FuseInitFlags.AsyncDio | FuseInitFlags.HasIoctlDir | FuseInitFlags.AtomicOTrunc
        | FuseInitFlags.MaxPages | FuseInitFlags.InitExt | FuseInitFlags.CreateSuppGroup | FuseInitFlags.AllowIdmap;

    private int DoInit(ref RequestReader r, ref ReplyWriter w)
    {
        if (!r.TryRead(out uint major) || !r.TryRead(out uint minor) || !r.TryRead(out uint maxReadahead) || !r.TryRead(out uint flags))
        {
            return Malformed();
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
        int rc = _fs.Init(offered, out FuseInitFlags fileSystemFlags);
        if (rc < 0)
        {
            return rc;
        }
        FuseInitFlags negotiated = offered & (ServerFlags | fileSystemFlags);
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
        _fs.Negotiated(negotiated);
        _initialized = true;
        InitNegotiated?.Invoke(new FuseInitSummary(major, minor, reply.Minor, offered, negotiated));
        w.TryWrite(in reply);
        return 0;
    }

    private int Malformed()
    {
        Interlocked.Increment(ref Stats._malformed);
        return -(int)Errno.EINVAL;
    }
}

/// <summary>What one INIT agreed: the guest's protocol version, the minor answered, the flags the
/// guest offered and the flags granted.</summary>
public readonly record struct FuseInitSummary(uint GuestMajor, uint GuestMinor, uint AnsweredMinor, FuseInitFlags Offered, FuseInitFlags Granted);
