using System.Runtime.InteropServices;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.GuestKernelShim;

/// <summary>A FUSE connection, transport-independent: Linux's struct fuse_conn with the request
/// machinery of fs/fuse/dev.c. Allocates uniques, keeps the table of requests in flight, sends INIT
/// first and holds every other request until it is answered, applies the negotiated limits, runs
/// background requests (RELEASE, FORGET) under max_background, turns a cancelled wait into an
/// INTERRUPT, and ends everything with ENOTCONN when the connection is aborted.</summary>
/// <remarks>
/// <see cref="Send"/> is synchronous and runs on the caller's thread: arguments are copied once into
/// the transport's buffers, the thread blocks until the reply is in, and the reply payload is copied
/// once into the caller's span. Request objects are pooled and the pending table is sharded, so many
/// threads can send at once without allocating or sharing one lock.
/// </remarks>
public sealed partial class FuseConn : IDisposable
{
    /// <summary>PAGE_SIZE of the guest this shim stands in for.</summary>
    public const int PageSize = 4096;

    /// <summary>FUSE_DEFAULT_MAX_PAGES_PER_REQ: max_pages when the daemon does not grant MAX_PAGES.</summary>
    public const int DefaultMaxPages = 32;

    /// <summary>FUSE_DEFAULT_MAX_BACKGROUND and its congestion threshold (3/4 of it).</summary>
    public const int DefaultMaxBackground = 12;
    public const int DefaultCongestionThreshold = 9;

    /// <summary>FUSE_INT_REQ_BIT / FUSE_REQ_ID_STEP.</summary>
    internal const ulong InterruptBit = 1;
    private const ulong UniqueStep = 2;

    /// <summary>Most fuse_forget_one entries in one BATCH_FORGET (keeps the request within a page).</summary>
    public const int MaxForgetsPerBatch = (PageSize - FuseInHeader.Size - FuseBatchForgetIn.Size) / FuseForgetOne.Size;

    private readonly IFuseTransport _transport;
    private readonly FuseConnOptions _options;
    private readonly PendingTable _pending = new();
    private readonly ManualResetEventSlim _initDone = new(false);
    private long _reqctr;
    private int _stateField; // ConnState; written under _bgLock
    private int _abortErrno;

    // Background requests and forgets (Linux: bg_queue under bg_lock, the forget list of fuse_iqueue).
    private readonly object _bgLock = new();
    private readonly Queue<FuseRequest> _bgQueue = new();
    private readonly List<FuseForgetOne> _forgets = new();
    private readonly List<ulong> _reinterrupts = new();
    private int _numBackground;
    private int _activeBackground;
    private bool _blocked;
    private Thread? _bgThread;
    private bool _bgStop;

    // Request pool: a per-thread slot in front of a shared stack.
    [ThreadStatic] private static FuseRequest? t_cached;
    private readonly Stack<FuseRequest> _pool = new();
    private long _noReplyInFlight;
    // Forgets or interrupts the background thread took off its lists and has not yet handed to the transport
    // (raised under _bgLock with the removal, so Quiesce never sees them in neither place).
    private int _bgSending;

    private long _interruptsSent;
    private long _forgetsSent;
    private long _batchForgetsSent;

    private int _state
    {
        get => Volatile.Read(ref _stateField);
        set => Volatile.Write(ref _stateField, value);
    }

    private enum ConnState
    {
        New = 0,
        InitSent = 1,
        Ready = 2,
        InitFailed = 3,
        Disconnected = 4,
    }

    public FuseConn(IFuseTransport transport, FuseConnOptions? options = null)
    {
        ArgumentNullException.ThrowIfNull(transport);
        _transport = transport;
        _options = options ?? new FuseConnOptions();
        MaxBackground = DefaultMaxBackground;
        CongestionThreshold = DefaultCongestionThreshold;
        MaxPages = DefaultMaxPages;
        MaxWrite = PageSize;
        Minor = 0;
        _transport.Attach(this);
    }

    public IFuseTransport Transport => _transport;

    public FuseConnOptions Options => _options;

    /// <summary>INIT was answered successfully; requests flow.</summary>
    public bool IsInitialized => _state == (int)ConnState.Ready;

    /// <summary>The connection was aborted or unmounted: every request ends with ENOTCONN.</summary>
    public bool IsDisconnected => _state == (int)ConnState.Disconnected;

    /// <summary>INIT failed (Linux: conn_error): every request ends with ECONNREFUSED.</summary>
    public bool HasConnectionError => _state == (int)ConnState.InitFailed;

    /// <summary>Flags sent in INIT.</summary>
    public FuseInitFlags RequestedFlags { get; private set; }

    /// <summary>Flags the daemon returned in its INIT reply (as sent, including bits not asked for).</summary>
    public FuseInitFlags GrantedFlags { get; private set; }

    /// <summary>What both sides agreed on: requested AND granted.</summary>
    public FuseInitFlags NegotiatedFlags { get; private set; }

    /// <summary>The daemon's protocol minor (fc->minor).</summary>
    public uint Minor { get; private set; }

    public uint MaxReadahead { get; private set; }

    /// <summary>fc->max_write: at least 4096.</summary>
    public uint MaxWrite { get; private set; }

    /// <summary>fc->max_read: the mount option (virtio-fs: unlimited).</summary>
    public uint MaxRead => _options.MaxRead;

    /// <summary>fc->max_pages: pages per request.</summary>
    public int MaxPages { get; private set; }

    public int MaxBackground { get; private set; }

    public int CongestionThreshold { get; private set; }

    /// <summary>Timestamp granularity in ns (1 when the daemon does not say).</summary>
    public uint TimeGran { get; private set; } = 1;

    /// <summary>Bytes one READ request may ask for: min(max_read, max_pages pages).</summary>
    public int MaxReadSize => (int)Math.Min(MaxRead, (ulong)MaxPages * PageSize);

    /// <summary>Bytes one WRITE request may carry: min(max_write, max_pages pages).</summary>
    public int MaxWriteSize => (int)Math.Min(MaxWrite, (ulong)MaxPages * PageSize);

    /// <summary>The daemon answered an INTERRUPT with ENOSYS: no more are sent (fc->no_interrupt).</summary>
    public bool NoInterrupt { get; private set; }

    /// <summary>Requests sent and not yet ended.</summary>
    public int PendingCount => _pending.Count;

    /// <summary>Background requests queued or in flight (fc->num_background).</summary>
    public int BackgroundCount
    {
        get
        {
            lock (_bgLock)
            {
                return _numBackground;
            }
        }
    }

    /// <summary>Background requests sent to the daemon and not yet answered (fc->active_background).</summary>
    public int ActiveBackgroundCount
    {
        get
        {
            lock (_bgLock)
            {
                return _activeBackground;
            }
        }
    }

    /// <summary>num_background reached congestion_threshold (Linux marks the bdi congested).</summary>
    public bool IsCongested
    {
        get
        {
            lock (_bgLock)
            {
                return _numBackground >= CongestionThreshold;
            }
        }
    }

    /// <summary>num_background reached max_background: new non-forced background requests wait (fc->blocked).</summary>
    public bool IsBlocked
    {
        get
        {
            lock (_bgLock)
            {
                return _blocked;
            }
        }
    }

    public long InterruptsSent => Interlocked.Read(ref _interruptsSent);
    public long ForgetsSent => Interlocked.Read(ref _forgetsSent);
    public long BatchForgetsSent => Interlocked.Read(ref _batchForgetsSent);

    /// <summary>The errno requests end with after an abort (ENOTCONN unless given otherwise).</summary>
    public Errno AbortErrno => (Errno)_abortErrno;

    /// <summary>fuse_get_unique: an increasing counter in steps of 2, first value 2.</summary>
    private ulong NextUnique() => (ulong)Interlocked.Add(ref _reqctr, (long)UniqueStep);

    /// <summary>The last unique handed out (for tests).</summary>
    public ulong LastUnique => (ulong)Interlocked.Read(ref _reqctr);

    // ---------------------------------------------------------------- INIT

    /// <summary>Sends INIT and processes the reply (Linux fuse_send_init / process_init_reply). Requests
    /// sent by other threads meanwhile wait until this returns. Throws <see cref="FuseInitException"/>
    /// when the daemon refuses or answers with something unusable; the connection is then unusable
    /// (every request ends with ECONNREFUSED).</summary>
    public void Init(CancellationToken cancellation = default)
    {
        lock (_bgLock)
        {
            if (_state != (int)ConnState.New)
            {
                throw new InvalidOperationException("INIT was already sent on this connection");
            }
            _state = (int)ConnState.InitSent;
        }
        var requested = _options.RequestedFlags;
        if (_options.Minor < 36)
        {
            // fuse_init_in has no flags2 before 7.36.
            requested &= (FuseInitFlags)0xFFFF_FFFF;
            requested &= ~FuseInitFlags.InitExt;
        }
        RequestedFlags = requested;
        var (flags, flags2) = FuseConstants.SplitInitFlags(requested);
        var initIn = new FuseInitIn
        {
            Major = FuseConstants.KernelVersion,
            Minor = _options.Minor,
            MaxReadahead = _options.MaxReadahead,
            Flags = flags,
            Flags2 = (requested & FuseInitFlags.InitExt) != 0 ? flags2 : 0,
        };
        int initInSize = _options.Minor < 36 ? FuseConstants.CompatInitInSize : FuseInitIn.Size;
        Span<byte> replyBuffer = stackalloc byte[FuseInitOut.Size];
        var reply = SendCore(FuseOpcode.Init, 0, FuseCaller.Kernel, new FuseArgs(MemoryMarshal.AsBytes(new ReadOnlySpan<FuseInitIn>(in initIn))[..initInSize]),
            replyBuffer, FuseReplyShape.Variable, cancellation, bypassInit: true);
        string? problem = null;
        FuseInitOut initOut = default;
        if (!reply.IsOk)
        {
            problem = $"the daemon answered INIT with {reply.Errno}";
        }
        else if (reply.Length < FuseConstants.Compat22InitOutSize)
        {
            problem = $"the INIT reply has {reply.Length} bytes, fewer than the {FuseConstants.Compat22InitOutSize} of the oldest format";
        }
        else
        {
            replyBuffer[reply.Length..].Clear();
            initOut = MemoryMarshal.Read<FuseInitOut>(replyBuffer);
            if (initOut.Major != FuseConstants.KernelVersion)
            {
                problem = $"the daemon answered INIT with protocol major {initOut.Major}; this guest speaks {FuseConstants.KernelVersion}";
            }
            else if (initOut.Minor < FuseConstants.MinSupportedMinor)
            {
                problem = $"the daemon speaks protocol 7.{initOut.Minor}, older than 7.{FuseConstants.MinSupportedMinor}";
            }
        }
        if (problem != null)
        {
            lock (_bgLock)
            {
                if (_state == (int)ConnState.InitSent)
                {
                    _state = (int)ConnState.InitFailed;
                }
            }
            _initDone.Set();
            throw new FuseInitException(problem, reply.Errno);
        }

        ApplyInitReply(initOut);
        lock (_bgLock)
        {
            if (_state == (int)ConnState.InitSent)
            {
                _state = (int)ConnState.Ready;
            }
        }
        StartBackgroundThread();
        _initDone.Set();
        if (IsDisconnected)
        {
            throw new FuseInitException("the connection was aborted during INIT", Errno.ENOTCONN);
        }
    }

    private void ApplyInitReply(in FuseInitOut initOut)
    {
        Minor = Math.Min(initOut.Minor, _options.Minor);
        var granted = (FuseInitFlags)initOut.Flags;
        if ((granted & FuseInitFlags.InitExt) != 0)
        {
            granted = FuseConstants.JoinInitFlags(initOut.Flags, initOut.Flags2);
        }
        GrantedFlags = granted;
        NegotiatedFlags = RequestedFlags & granted;
        MaxReadahead = Math.Min(initOut.MaxReadahead, _options.MaxReadahead);
        if (initOut.MaxBackground != 0)
        {
            MaxBackground = initOut.MaxBackground;
        }
        if (initOut.CongestionThreshold != 0)
        {
            CongestionThreshold = initOut.CongestionThreshold;
        }
        MaxWrite = Math.Max(PageSize, Minor < 5 ? PageSize : initOut.MaxWrite);
        int pagesLimit = Math.Max(1, Math.Min(_options.MaxPagesLimit, _transport.MaxPagesLimit));
        MaxPages = (NegotiatedFlags & FuseInitFlags.MaxPages) != 0
            ? Math.Min(pagesLimit, Math.Max(1, (int)initOut.MaxPages))
            : Math.Min(pagesLimit, DefaultMaxPages);
        // process_init_reply: a time_gran that is not a power of ten up to 1s is ignored.
        uint gran = initOut.TimeGran;
        TimeGran = 1;
        if (Minor >= 23 && gran >= 1 && gran <= 1_000_000_000)
        {
            uint g = gran;
            while (g % 10 == 0)
            {
                g /= 10;
            }
            if (g == 1)
            {
                TimeGran = gran;
            }
        }
    }

    /// <summary>True when <paramref name="flag"/> was asked for and granted.</summary>
    public bool Has(FuseInitFlags flag) => (NegotiatedFlags & flag) == flag;

    // ---------------------------------------------------------------- completion (transport side)

    /// <summary>Ends a request with the daemon's answer: <paramref name="error"/> from fuse_out_header and
    /// <paramref name="length"/> payload bytes now in the transport's reply buffer. Called by transports.
    /// Checks the answer as fuse_dev_do_write does: an error with a payload, an errno out of range, a
    /// payload longer than the buffer or a fixed-size reply of the wrong size end the request with EIO.
    /// Returns false when the request had already ended (aborted), and then changes nothing.</summary>
    public bool Complete(FuseRequest request, int error, int length)
    {
        ArgumentNullException.ThrowIfNull(request);
        if (!_pending.TryRemove(request))
        {
            return false;
        }
        if (error > 0 || error <= -512 || (error != 0 && length != 0) || length < 0 || length > request.ReplyCapacity
            || (error == 0 && request.ReplyShape == FuseReplyShape.Fixed && length != request.ReplyCapacity))
        {
            error = -(int)Errno.EIO;
            length = 0;
        }
        request.Error = error;
        request.ReplyLength = error == 0 ? length : 0;
        End(request);
        return true;
    }

    /// <summary>Ends a request the transport could not deliver or whose reply was unusable.</summary>
    public bool Fail(FuseRequest request, Errno errno) => Complete(request, -(int)errno, 0);

    /// <summary>The transport is done with a reply-less request (or with its own reference).</summary>
    public void TransportDone(FuseRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        Release(request);
    }

    /// <summary>A reply that names a unique not in flight (notifications excluded): Linux answers the writer
    /// with ENOENT. True when <paramref name="unique"/> is pending.</summary>
    public bool IsPending(ulong unique) => _pending.Contains(unique);

    /// <summary>The daemon answered the INTERRUPT for <paramref name="targetUnique"/> (fuse_dev_do_write for
    /// an odd unique): ENOSYS means it never handles interrupts (none are sent again), EAGAIN asks for the
    /// interrupt to be sent again while the request is still in flight. Called by transports.</summary>
    public void InterruptAnswered(ulong targetUnique, int error)
    {
        if (error == -(int)Errno.ENOSYS)
        {
            NoInterrupt = true;
        }
        else if (error == -(int)Errno.EAGAIN && _pending.Contains(targetUnique))
        {
            lock (_bgLock)
            {
                _reinterrupts.Add(targetUnique);
                Monitor.PulseAll(_bgLock);
            }
        }
    }

    private void End(FuseRequest request)
    {
        if (request.Background)
        {
            FinishBackground(request);
        }
        else
        {
            request.Done.Set();
        }
    }

    // ---------------------------------------------------------------- teardown

    /// <summary>Unmount (fuse_conn_destroy): flushes queued forgets, sends DESTROY and waits for its answer
    /// (when INIT succeeded and the connection is alive), then aborts: the transport is drained and stopped
    /// and every request still in flight ends with ENOTCONN.</summary>
    public void Unmount()
    {
        if (IsInitialized)
        {
            Quiesce(_options.DrainTimeout);
            // A daemon that never answers (stopped, wedged) must not wedge the unmount: after the drain
            // timeout the connection is aborted, which ends DESTROY with ENOTCONN.
            using var watchdog = new Timer(static state => ((FuseConn)state!).Abort(Errno.ENOTCONN, TimeSpan.Zero), this,
                _options.DrainTimeout, Timeout.InfiniteTimeSpan);
            Span<byte> none = default;
            SendCore(FuseOpcode.Destroy, 0, FuseCaller.Kernel, default, none, FuseReplyShape.Fixed, CancellationToken.None, bypassInit: false);
        }
        Abort(Errno.ENOTCONN, _options.DrainTimeout);
    }

    /// <summary>fuse_abort_conn: marks the connection disconnected, stops the transport, and ends every
    /// queued and in-flight request with <paramref name="errno"/> (ENOTCONN). Later requests fail at once.
    /// Safe to call from any thread, more than once, and while requests are being sent.</summary>
    public void Abort(Errno errno = Errno.ENOTCONN, TimeSpan drainTimeout = default)
    {
        List<FuseRequest> queued;
        lock (_bgLock)
        {
            if (_state == (int)ConnState.Disconnected)
            {
                return;
            }
            _abortErrno = (int)errno;
            _state = (int)ConnState.Disconnected;
            _bgStop = true;
            queued = new List<FuseRequest>(_bgQueue);
            _bgQueue.Clear();
            _forgets.Clear();
            _reinterrupts.Clear();
            Monitor.PulseAll(_bgLock);
        }
        _initDone.Set();
        foreach (var request in queued)
        {
            request.Error = -(int)errno;
            FinishBackgroundQueued(request);
        }
        try
        {
            _transport.Shutdown(drainTimeout);
        }
        finally
        {
            var drained = new List<FuseRequest>();
            _pending.CloseAndDrain(drained);
            foreach (var request in drained)
            {
                request.Error = -(int)errno;
                request.ReplyLength = 0;
                End(request);
            }
        }
    }

    private void FinishBackgroundQueued(FuseRequest request)
    {
        // Never sent, so never counted as active: FinishBackground's decrement of it is balanced here.
        lock (_bgLock)
        {
            _activeBackground++;
        }
        FinishBackground(request);
    }

    public void Dispose()
    {
        Abort(Errno.ENOTCONN, TimeSpan.Zero);
        _bgThread?.Join(TimeSpan.FromSeconds(5));
        _transport.Dispose();
    }
}

/// <summary>INIT failed: the daemon refused it or answered with something a guest cannot use.</summary>
public sealed class FuseInitException : Exception
{
    public FuseInitException(string message, Errno errno)
        : base(message)
    {
        Errno = errno;
    }

    public Errno Errno { get; }
}
