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
public sealed class FuseConn : IDisposable
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

    // ---------------------------------------------------------------- sending

    /// <summary>Sends a request on the caller's thread and blocks until it ends (Linux fuse_simple_request).
    /// The reply payload is copied into <paramref name="reply"/>, whose length is the most the daemon may
    /// answer. A cancelled <paramref name="cancellation"/> withdraws a request the daemon has not seen
    /// (EINTR) or sends INTERRUPT for it and keeps waiting for the daemon's answer (the late reply, or EINTR).
    /// Never throws for what the daemon does: failures come back as <see cref="FuseReply.Error"/>.</summary>
    public FuseReply Send(FuseOpcode opcode, ulong nodeId, in FuseCaller caller, scoped in FuseArgs args, Span<byte> reply,
        FuseReplyShape shape = FuseReplyShape.Variable, CancellationToken cancellation = default)
    {
        if (opcode is FuseOpcode.Init or FuseOpcode.Forget or FuseOpcode.BatchForget or FuseOpcode.Interrupt)
        {
            throw new ArgumentException($"{opcode} is sent by the connection itself (Init, QueueForget, cancellation)", nameof(opcode));
        }
        return SendCore(opcode, nodeId, caller, args, reply, shape, cancellation, bypassInit: false);
    }

    /// <summary>Sends a request without arguments.</summary>
    public FuseReply Send(FuseOpcode opcode, ulong nodeId, in FuseCaller caller, Span<byte> reply,
        FuseReplyShape shape = FuseReplyShape.Variable, CancellationToken cancellation = default)
        => Send(opcode, nodeId, caller, default(FuseArgs), reply, shape, cancellation);

    // ---------------------------------------------------------------- direct I/O with user buffers

    /// <summary>Allocates a buffer of <paramref name="bytes"/> bytes that READ and WRITE can use as their payload with no
    /// copy (<see cref="Read(ulong, ulong, long, GuestBuffer, int, int, in FuseCaller, uint, CancellationToken)"/>,
    /// <see cref="Write"/>): guest memory on virtio-fs, a pinned host buffer on transports without guest memory.
    /// The buffer starts zeroed. Throws <see cref="InvalidOperationException"/> when guest memory has no free range
    /// that large.</summary>
    public GuestBuffer AllocateUserBuffer(int bytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(bytes);
        if (_transport is not IUserMemory guest)
        {
            return new GuestBuffer(this, bytes);
        }
        if (!guest.TryAllocateUserMemory(bytes, out ulong gpa, out ulong reserved, out nint host))
        {
            throw new InvalidOperationException($"{_transport.Name}: guest memory has no free range of {bytes} bytes for a user buffer");
        }
        var buffer = new GuestBuffer(this, guest, gpa, reserved, host, bytes);
        // Fresh pages of a process are zero; the range may hold an earlier buffer's data.
        buffer.Span.Clear();
        return buffer;
    }

    /// <summary>One READ of <paramref name="length"/> bytes at <paramref name="offset"/> of handle <paramref name="fh"/>
    /// straight into <paramref name="buffer"/> at <paramref name="bufferOffset"/> (fuse_send_read of direct I/O): the
    /// daemon writes the data there, nothing is copied. <paramref name="length"/> is at most <see cref="MaxReadSize"/>.
    /// The reply's <see cref="FuseReply.Length"/> is the bytes read (short at end of file). EFAULT when the buffer
    /// was disposed. Otherwise as <see cref="Send(FuseOpcode, ulong, in FuseCaller, scoped in FuseArgs, Span{byte}, FuseReplyShape, CancellationToken)"/>.</summary>
    public FuseReply Read(ulong nodeId, ulong fh, long offset, GuestBuffer buffer, int bufferOffset, int length, in FuseCaller caller,
        uint openFlags = 0, CancellationToken cancellation = default)
    {
        CheckUserRange(buffer, bufferOffset, length, MaxReadSize);
        var arg = new FuseReadIn { Fh = fh, Offset = (ulong)offset, Length = (uint)length, Flags = openFlags };
        var args = new FuseArgs(MemoryMarshal.AsBytes(new ReadOnlySpan<FuseReadIn>(in arg)));
        return SendCore(FuseOpcode.Read, nodeId, caller, args, Span<byte>.Empty, FuseReplyShape.Variable, cancellation, bypassInit: false,
            buffer, bufferOffset, length, userIsReply: true);
    }

    /// <summary>One WRITE of <paramref name="length"/> bytes of <paramref name="buffer"/> from <paramref name="bufferOffset"/>
    /// at <paramref name="offset"/> of handle <paramref name="fh"/> (fuse_send_write of direct I/O): the daemon reads
    /// the data from the buffer, nothing is copied. <paramref name="length"/> is at most <see cref="MaxWriteSize"/>.
    /// <paramref name="bytesWritten"/> is fuse_write_out.size; a daemon claiming more than was sent is EIO. EFAULT when
    /// the buffer was disposed.</summary>
    public FuseReply Write(ulong nodeId, ulong fh, long offset, GuestBuffer buffer, int bufferOffset, int length, in FuseCaller caller,
        out int bytesWritten, uint openFlags = 0, uint writeFlags = 0, CancellationToken cancellation = default)
    {
        CheckUserRange(buffer, bufferOffset, length, MaxWriteSize);
        bytesWritten = 0;
        var arg = new FuseWriteIn { Fh = fh, Offset = (ulong)offset, Length = (uint)length, WriteFlags = writeFlags, Flags = openFlags };
        FuseWriteOut output = default;
        var reply = SendCore(FuseOpcode.Write, nodeId, caller, new FuseArgs(MemoryMarshal.AsBytes(new ReadOnlySpan<FuseWriteIn>(in arg))),
            MemoryMarshal.AsBytes(new Span<FuseWriteOut>(ref output)), FuseReplyShape.Fixed, cancellation, bypassInit: false,
            buffer, bufferOffset, length, userIsReply: false);
        if (!reply.IsOk)
        {
            return reply;
        }
        if (output.Length > (uint)length)
        {
            return FuseReply.Fail(Errno.EIO);
        }
        bytesWritten = (int)output.Length;
        return reply;
    }

    private void CheckUserRange(GuestBuffer buffer, int bufferOffset, int length, int limit)
    {
        ArgumentNullException.ThrowIfNull(buffer);
        if (!ReferenceEquals(buffer.Owner, this))
        {
            throw new ArgumentException("the user buffer belongs to another connection", nameof(buffer));
        }
        buffer.CheckRange(bufferOffset, length);
        if (length > limit)
        {
            throw new ArgumentOutOfRangeException(nameof(length), length, $"one request carries at most {limit} bytes on this connection");
        }
    }

    private FuseReply SendCore(FuseOpcode opcode, ulong nodeId, in FuseCaller caller, scoped in FuseArgs args, Span<byte> reply,
        FuseReplyShape shape, CancellationToken cancellation, bool bypassInit,
        GuestBuffer? user = null, int userOffset = 0, int userLength = 0, bool userIsReply = false)
    {
        if (!bypassInit)
        {
            int gate = WaitUntilReady(cancellation);
            if (gate != 0)
            {
                return new FuseReply(gate, 0);
            }
        }
        else if (IsDisconnected)
        {
            return FuseReply.Fail(AbortErrno);
        }

        var request = Rent();
        request.Opcode = opcode;
        request.NodeId = nodeId;
        request.ReplyCapacity = reply.Length;
        request.ReplyShape = shape;
        request.BypassInit = bypassInit;
        request.Caller = caller;
        if (user != null && userLength > 0)
        {
            if (!user.TryAcquire())
            {
                // The memory is gone: I/O on an unmapped address.
                Release(request);
                return FuseReply.Fail(Errno.EFAULT);
            }
            request.UserBuffer = user;
            request.UserOffset = userOffset;
            request.UserLength = userLength;
            request.UserIsReply = userIsReply;
            if (userIsReply)
            {
                request.ReplyCapacity = userLength;
            }
        }
        request.Unique = NextUnique();
        int error = Dispatch(request, caller, args);
        if (error != 0)
        {
            // Never reached the daemon.
            Release(request);
            return new FuseReply(error, 0);
        }
        Wait(request, cancellation);
        int length = 0;
        int result = request.Error;
        if (result == 0)
        {
            length = request.ReplyLength;
            // A reply into a user buffer is already there.
            if (length > 0 && !request.RepliesIntoUserBuffer)
            {
                _transport.CopyReply(request, reply[..length]);
            }
        }
        Release(request);
        return new FuseReply(result, length);
    }

    /// <summary>Registers the request as pending and hands it to the transport. 0, or the errno when it
    /// could not be sent (the request is then not pending and the caller still owns it).</summary>
    private int Dispatch(FuseRequest request, in FuseCaller caller, scoped in FuseArgs args)
    {
        long length = FuseInHeader.Size + (long)args.TotalLength + request.UserPayloadLength;
        if (length > int.MaxValue)
        {
            return -(int)Errno.E2BIG;
        }
        request.RequestLength = (int)length;
        var header = new FuseInHeader
        {
            Len = (uint)length,
            Opcode = (uint)request.Opcode,
            Unique = request.Unique,
            NodeId = request.NodeId,
            Uid = request.IsInterrupt ? 0 : caller.Uid,
            Gid = request.IsInterrupt ? 0 : caller.Gid,
            Pid = request.IsInterrupt ? 0 : caller.Pid,
        };
        if (!request.NoReply && !_pending.TryAdd(request))
        {
            return _pending.IsClosed ? ErrorForClosed() : -(int)Errno.EBUSY;
        }
        if (request.NoReply)
        {
            Interlocked.Increment(ref _noReplyInFlight);
        }
        int rc = _transport.Submit(request, MemoryMarshal.AsBytes(new ReadOnlySpan<FuseInHeader>(in header)), args);
        if (rc != 0)
        {
            if (request.NoReply)
            {
                return rc;
            }
            if (_pending.TryRemove(request))
            {
                return rc;
            }
            // An abort took it meanwhile and ends it: the waiter will see that.
        }
        return 0;
    }

    private int ErrorForClosed() => HasConnectionError ? -(int)Errno.ECONNREFUSED : -_abortErrno;

    /// <summary>fuse_get_req's gate: wait for INIT, then refuse on a dead connection.</summary>
    private int WaitUntilReady(CancellationToken cancellation)
    {
        if (_state != (int)ConnState.Ready)
        {
            try
            {
                _initDone.Wait(cancellation);
            }
            catch (OperationCanceledException)
            {
                return -(int)Errno.EINTR;
            }
        }
        return _state switch
        {
            (int)ConnState.Ready => 0,
            (int)ConnState.InitFailed => -(int)Errno.ECONNREFUSED,
            (int)ConnState.Disconnected => -_abortErrno,
            _ => -(int)Errno.ENOTCONN,
        };
    }

    /// <summary>request_wait_answer: wait; on cancellation withdraw or interrupt, then wait it out.</summary>
    private void Wait(FuseRequest request, CancellationToken cancellation)
    {
        if (!cancellation.CanBeCanceled || NoInterrupt)
        {
            request.Done.Wait();
            return;
        }
        try
        {
            request.Done.Wait(cancellation);
            return;
        }
        catch (OperationCanceledException)
        {
        }
        if (!request.Done.IsSet)
        {
            if (_transport.TryWithdraw(request))
            {
                // The daemon never saw it (FR_PENDING): end it here with EINTR.
                if (_pending.TryRemove(request))
                {
                    request.Error = -(int)Errno.EINTR;
                    request.ReplyLength = 0;
                    request.Done.Set();
                }
            }
            else
            {
                SendInterrupt(request.Unique);
            }
        }
        request.Done.Wait();
    }

    private void SendInterrupt(ulong targetUnique)
    {
        if (NoInterrupt || IsDisconnected || !_pending.Contains(targetUnique))
        {
            return;
        }
        var interrupt = Rent();
        interrupt.Opcode = FuseOpcode.Interrupt;
        interrupt.Unique = targetUnique | InterruptBit;
        interrupt.InterruptTarget = targetUnique;
        interrupt.IsInterrupt = true;
        interrupt.NoReply = true;
        interrupt.IsHighPriority = true;
        interrupt.ReplyCapacity = 0;
        interrupt.ReplyShape = FuseReplyShape.Fixed;
        var arg = new FuseInterruptIn { Unique = targetUnique };
        int rc = Dispatch(interrupt, default, new FuseArgs(MemoryMarshal.AsBytes(new ReadOnlySpan<FuseInterruptIn>(in arg))));
        if (rc != 0)
        {
            Release(interrupt);
            return;
        }
        Interlocked.Increment(ref _interruptsSent);
    }

    // ---------------------------------------------------------------- background

    /// <summary>Queues a background request (Linux fuse_simple_background): the arguments are copied, the
    /// caller does not wait for the reply. Without <paramref name="force"/> the caller waits while
    /// max_background requests are outstanding (fc->blocked); forced requests (RELEASE) never wait.
    /// <paramref name="completion"/>, if given, runs on a transport thread when the request ends.
    /// Returns 0, or a negative errno when the connection is gone.</summary>
    public int SendBackground(FuseOpcode opcode, ulong nodeId, in FuseCaller caller, ReadOnlySpan<byte> args, bool force,
        Action<FuseRequest>? completion = null, int replyCapacity = 0)
    {
        if (opcode is FuseOpcode.Init or FuseOpcode.Forget or FuseOpcode.BatchForget or FuseOpcode.Interrupt)
        {
            throw new ArgumentException($"{opcode} is sent by the connection itself", nameof(opcode));
        }
        int gate = WaitUntilReady(CancellationToken.None);
        if (gate != 0)
        {
            return gate;
        }
        var request = Rent();
        request.Opcode = opcode;
        request.NodeId = nodeId;
        request.Background = true;
        request.Caller = caller;
        request.ReplyCapacity = replyCapacity;
        request.ReplyShape = FuseReplyShape.Variable;
        request.BackgroundCompletion = completion;
        request.EnsureArgCapacity(args.Length);
        args.CopyTo(request.ArgBuffer);
        request.ArgLength = args.Length;
        lock (_bgLock)
        {
            while (!force && _blocked && _state == (int)ConnState.Ready)
            {
                Monitor.Wait(_bgLock);
            }
            if (_state != (int)ConnState.Ready)
            {
                Release(request);
                return ErrorForClosed();
            }
            _numBackground++;
            if (_numBackground >= MaxBackground)
            {
                _blocked = true;
            }
            _bgQueue.Enqueue(request);
            Monitor.PulseAll(_bgLock);
        }
        return 0;
    }

    /// <summary>Queues a FORGET of <paramref name="nlookup"/> lookups of <paramref name="nodeId"/>
    /// (fuse_queue_forget). Forgets go out on the high-priority queue, batched into BATCH_FORGET when
    /// several are waiting; they get no reply.</summary>
    public void QueueForget(ulong nodeId, ulong nlookup)
    {
        if (nlookup == 0)
        {
            return;
        }
        lock (_bgLock)
        {
            if (_state != (int)ConnState.Ready)
            {
                return;
            }
            _forgets.Add(new FuseForgetOne { NodeId = nodeId, Nlookup = nlookup });
            Monitor.PulseAll(_bgLock);
        }
    }

    /// <summary>Queues several forgets at once (an eviction of many nodes); they go out as BATCH_FORGETs.</summary>
    public void QueueForgets(ReadOnlySpan<FuseForgetOne> forgets)
    {
        lock (_bgLock)
        {
            if (_state != (int)ConnState.Ready)
            {
                return;
            }
            foreach (var forget in forgets)
            {
                if (forget.Nlookup != 0)
                {
                    _forgets.Add(forget);
                }
            }
            Monitor.PulseAll(_bgLock);
        }
    }

    private void StartBackgroundThread()
    {
        var thread = new Thread(BackgroundLoop) { IsBackground = true, Name = "fuse-bg" };
        _bgThread = thread;
        thread.Start();
    }

    /// <summary>Sends queued background requests while fewer than max_background are active
    /// (flush_bg_queue), queued forgets, and interrupts the daemon asked to see again (EAGAIN).
    /// Runs on its own thread because a send may block on a full queue, which only a completion
    /// thread can drain.</summary>
    private void BackgroundLoop()
    {
        var forgetBuffer = new byte[FuseBatchForgetIn.Size + MaxForgetsPerBatch * FuseForgetOne.Size];
        var batch = new FuseForgetOne[MaxForgetsPerBatch];
        while (true)
        {
            FuseRequest? next = null;
            int forgetCount = 0;
            ulong reinterrupt = 0;
            lock (_bgLock)
            {
                while (!_bgStop && _forgets.Count == 0 && _reinterrupts.Count == 0
                    && (_bgQueue.Count == 0 || _activeBackground >= MaxBackground))
                {
                    Monitor.Wait(_bgLock);
                }
                if (_bgStop)
                {
                    return;
                }
                if (_reinterrupts.Count > 0)
                {
                    reinterrupt = _reinterrupts[^1];
                    _reinterrupts.RemoveAt(_reinterrupts.Count - 1);
                    _bgSending++;
                }
                else if (_forgets.Count > 0)
                {
                    forgetCount = Math.Min(_forgets.Count, Minor >= 16 ? MaxForgetsPerBatch : 1);
                    _forgets.CopyTo(0, batch, 0, forgetCount);
                    _forgets.RemoveRange(0, forgetCount);
                    _bgSending++;
                }
                else
                {
                    next = _bgQueue.Dequeue();
                    _activeBackground++;
                }
            }
            if (reinterrupt != 0 || forgetCount > 0)
            {
                try
                {
                    if (reinterrupt != 0)
                    {
                        SendInterrupt(reinterrupt);
                    }
                    else
                    {
                        SendForgets(batch.AsSpan(0, forgetCount), forgetBuffer);
                    }
                }
                finally
                {
                    // Dispatch has counted it in _noReplyInFlight by now (or it was dropped).
                    Interlocked.Decrement(ref _bgSending);
                }
            }
            else if (next != null)
            {
                SendQueuedBackground(next);
            }
        }
    }

    private void SendQueuedBackground(FuseRequest request)
    {
        request.Unique = NextUnique();
        int rc = Dispatch(request, request.Caller, new FuseArgs(request.ArgBuffer.AsSpan(0, request.ArgLength)));
        if (rc != 0)
        {
            request.Error = rc;
            request.ReplyLength = 0;
            FinishBackground(request);
        }
    }

    private void SendForgets(ReadOnlySpan<FuseForgetOne> forgets, byte[] buffer)
    {
        var request = Rent();
        request.NoReply = true;
        request.IsHighPriority = true;
        request.Unique = NextUnique();
        int rc;
        if (forgets.Length == 1)
        {
            request.Opcode = FuseOpcode.Forget;
            request.NodeId = forgets[0].NodeId;
            var arg = new FuseForgetIn { Nlookup = forgets[0].Nlookup };
            rc = Dispatch(request, FuseCaller.Kernel, new FuseArgs(MemoryMarshal.AsBytes(new ReadOnlySpan<FuseForgetIn>(in arg))));
            if (rc == 0)
            {
                Interlocked.Increment(ref _forgetsSent);
            }
        }
        else
        {
            request.Opcode = FuseOpcode.BatchForget;
            var head = new FuseBatchForgetIn { Count = (uint)forgets.Length };
            MemoryMarshal.Write(buffer, in head);
            MemoryMarshal.AsBytes(forgets).CopyTo(buffer.AsSpan(FuseBatchForgetIn.Size));
            int length = FuseBatchForgetIn.Size + forgets.Length * FuseForgetOne.Size;
            rc = Dispatch(request, FuseCaller.Kernel, new FuseArgs(buffer.AsSpan(0, length)));
            if (rc == 0)
            {
                Interlocked.Increment(ref _batchForgetsSent);
            }
        }
        if (rc != 0)
        {
            Release(request);
        }
    }

    private void FinishBackground(FuseRequest request)
    {
        lock (_bgLock)
        {
            _numBackground--;
            _activeBackground--;
            if (_numBackground < MaxBackground)
            {
                _blocked = false;
            }
            Monitor.PulseAll(_bgLock);
        }
        try
        {
            request.BackgroundCompletion?.Invoke(request);
        }
        finally
        {
            Release(request);
        }
    }

    /// <summary>Waits until no forget, background request or reply-less request is queued or in flight
    /// (tests use it before checking the daemon's state). False on timeout.</summary>
    public bool Quiesce(TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            bool idle;
            lock (_bgLock)
            {
                idle = _forgets.Count == 0 && _bgQueue.Count == 0 && _numBackground == 0 && _reinterrupts.Count == 0
                    && Volatile.Read(ref _bgSending) == 0;
            }
            if (idle && Interlocked.Read(ref _noReplyInFlight) == 0)
            {
                return true;
            }
            if (IsDisconnected || DateTime.UtcNow > deadline)
            {
                return idle && Interlocked.Read(ref _noReplyInFlight) == 0;
            }
            Thread.Sleep(1);
        }
    }

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

    // ---------------------------------------------------------------- pool

    private FuseRequest Rent()
    {
        var request = t_cached;
        if (request != null && ReferenceEquals(request.Connection, this))
        {
            t_cached = null;
        }
        else
        {
            request = null;
            lock (_pool)
            {
                _pool.TryPop(out request);
            }
            request ??= new FuseRequest { Connection = this };
        }
        request.Reset();
        return request;
    }

    private void Release(FuseRequest request)
    {
        if (!request.DropRef())
        {
            return;
        }
        if (request.NoReply)
        {
            Interlocked.Decrement(ref _noReplyInFlight);
        }
        _transport.ReleaseBuffers(request);
        if (request.UserBuffer != null)
        {
            // The transport is done with the user pages (Linux: the pages are unpinned when the request is freed).
            request.UserBuffer.ReleaseUse();
            request.UserBuffer = null;
        }
        if (t_cached == null)
        {
            t_cached = request;
            return;
        }
        lock (_pool)
        {
            if (_pool.Count < 1024)
            {
                _pool.Push(request);
            }
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
