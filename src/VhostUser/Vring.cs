using System.Diagnostics;
using Serilog;
using Serilog.Events;
using Vhostfsd.Posix;
using Vhostfsd.Virtqueue;

namespace Vhostfsd.VhostUser;

/// <summary>One virtqueue of a vhost-user back-end: the state the front-end configured (size, base,
/// ring addresses, kick/call/err eventfds, enabled), the <see cref="DeviceQueue"/> over the rings,
/// and the worker thread that drains it into the device's <see cref="IVringHandler"/>.</summary>
/// <remarks>
/// Rules (vhost-user.rst "Ring states"): a ring is started once it has ring addresses and a kick fd
/// (or the no-fd flag: then the worker polls); GET_VRING_BASE stops it. A started ring is processed
/// only while enabled. The worker runs exactly while the ring is started, enabled and not broken.
/// <para>Threads: configuration happens on the back-end's message thread. The worker pops; completions
/// come from the worker (batched: one call signal per drained batch) or from any other thread
/// (signalled at once). <see cref="_lock"/> serializes used-ring publishing, notification decisions,
/// eventfd swaps and in-flight bookkeeping.</para>
/// <para>In-flight chains are tracked by head index. A head popped while its previous chain is still
/// in flight means the driver reused a descriptor it does not own: the ring is broken. A chain
/// completed after its ring was stopped (and its wait for in-flight chains timed out) is dropped.</para>
/// <para>One worker at a time: a worker told to stop is waited for while it is in the ring's own code
/// (bounded work); one stuck in a handler past <see cref="VhostUserBackendOptions.WorkerStopTimeout"/>
/// is given up on (detached) and, when the handler returns, exits without touching the ring, so a
/// new worker can take the ring meanwhile. What a worker keeps about the chain in hand lives in
/// its <see cref="Worker"/>, never in the ring.</para>
/// </remarks>
public sealed class Vring : IDisposable
{
    private const int PollIntervalMs = 1;

    /// <summary>How long a polling worker spins between two looks at the avail ring, 1 µs: a time,
    /// not a count of Thread.SpinWait iterations, whose length each runtime calibrates its own way
    /// (SpinWait(20) lasts about 1.2 µs on the JIT here and 0.5 µs in the native build, which then
    /// yielded its CPU 2.4 times as often while it polled).</summary>
    private static readonly long SpinBetweenLooks = Stopwatch.Frequency / 1_000_000;

    private readonly object _lock = new();
    private readonly ILogger _log;
    private readonly VhostUserBackendOptions _options;
    private readonly Action<Vring>? _onBroken;
    private readonly IVhostUserDevice _device;
    private readonly EventFd _stopEvent = EventFd.Create(nonBlocking: true);
    private readonly Stack<DescriptorChain> _pool = new();

    // Message-thread state.
    private ushort _num;
    private ushort _base;
    private VringAddress _address;
    private bool _hasAddress;
    private EventFd? _kick;
    private bool _kickPolling;
    private bool _enabled;
    private bool _started;
    private bool _eventIdx;
    private bool _indirect;
    private bool _notifyOnEmpty;
    private bool _protocolFeatures;
    private GuestMemory? _memory;
    private IVringHandler? _handler;
    private Worker? _worker;

    // Shared with the worker and completers; guarded by _lock.
    private DeviceQueue? _queue;
    private EventFd? _call;
    private EventFd? _err;
    private DescriptorChain?[] _inFlight = [];
    private int _inFlightCount;
    private bool _signalPending;
    private volatile bool _broken;
    private int _brokenLogged;

    internal Vring(int index, IVhostUserDevice device, VhostUserBackendOptions options, ILogger log, Action<Vring>? onBroken)
    {
        Index = index;
        _device = device;
        ushort maxSize = device.MaxQueueSize;
        MaxSize = maxSize;
        _num = maxSize;
        _options = options;
        _log = log;
        _onBroken = onBroken;
    }

    public int Index { get; }

    /// <summary>Largest size SET_VRING_NUM accepts for this ring.</summary>
    public ushort MaxSize { get; }

    /// <summary>Size set by SET_VRING_NUM (the device's maximum until then).</summary>
    public ushort Size => _num;

    public bool IsStarted => _started;
    public bool IsEnabled => _enabled;
    public bool IsBroken => _broken;

    /// <summary>True when the kick is the no-fd flag: the worker polls the avail ring.</summary>
    public bool IsPolling => _kickPolling;

    /// <summary>True while a worker thread drains this ring.</summary>
    public bool IsProcessing => _worker != null;

    /// <summary>Chains popped and not yet completed.</summary>
    public int InFlightCount
    {
        get
        {
            lock (_lock)
            {
                return _inFlightCount;
            }
        }
    }

    /// <summary>Avail index the ring starts from (SET_VRING_BASE, or where GET_VRING_BASE stopped it).</summary>
    public ushort Base => _base;
    public bool HasAddress => _hasAddress;
    /// <summary>The ring addresses SET_VRING_ADDR gave (VMM user addresses); meaningful when <see cref="HasAddress"/>.</summary>
    public VringAddress Address => _address;
    public bool HasKick => _kick != null || _kickPolling;
    public bool HasCall { get { lock (_lock) { return _call != null; } } }
    public bool HasErr { get { lock (_lock) { return _err != null; } } }

    /// <summary>True when more chains wait in the avail ring behind the one being handled. Only
    /// meaningful on this ring's worker thread inside <see cref="IVringHandler.HandleChain"/> (false
    /// anywhere else, and once the worker was given up on): a handler asks it before handing a long
    /// request to another thread, which pays off only when the worker has other requests to get on
    /// with meanwhile.</summary>
    public bool HasMoreAvailable
    {
        get
        {
            var worker = _worker;
            if (worker == null || worker.Thread != Thread.CurrentThread || worker.Handling == null)
            {
                return false;
            }
            // Under the lock, where StopWorker detaches: a worker given up on must not read a ring
            // that another worker may be popping from or that may have moved.
            lock (_lock)
            {
                return !worker.IsDetached && worker.HasAvailable();
            }
        }
    }

    // ---- completion (any thread) ----

    /// <summary>Publishes <paramref name="chain"/> as used with <paramref name="bytesWritten"/> bytes
    /// written into its writable buffers and signals the driver when it wants it. On the worker thread,
    /// inside <see cref="IVringHandler.HandleChain"/>, the signal waits for the end of the batch; from
    /// any other thread it goes out at once. A chain of a ring that was stopped meanwhile is dropped.
    /// Each chain is completed once; the chain must not be used afterwards.</summary>
    public void Complete(DescriptorChain chain, uint bytesWritten)
    {
        ArgumentNullException.ThrowIfNull(chain);
        // Inline: the ring's worker, inside HandleChain, completing the chain it is handling; the
        // worker then reuses the chain and signals at the end of its batch. Anything else (another
        // thread, a kept chain, a worker that was given up on) completes as an outsider.
        var worker = _worker;
        bool inline = worker != null && worker.Thread == Thread.CurrentThread && ReferenceEquals(worker.Handling, chain);
        bool stale = false;
        lock (_lock)
        {
            if (inline && worker!.IsDetached)
            {
                // Given up on while in the handler: it will end its batch without signalling.
                inline = false;
            }
            ushort head = chain.Head;
            if (head >= _inFlight.Length || !ReferenceEquals(_inFlight[head], chain))
            {
                stale = true;
            }
            else
            {
                _inFlight[head] = null;
                _inFlightCount--;
                var queue = _queue;
                if (queue != null && queue.IsConfigured && !_broken)
                {
                    if (bytesWritten > chain.WritableBytes)
                    {
                        // A handler bug must not let the driver read past what it offered.
                        bytesWritten = (uint)chain.WritableBytes;
                    }
                    queue.PushUsed(head, bytesWritten);
                    if (inline)
                    {
                        _signalPending = true;
                    }
                    else if (NeedsSignalLocked(queue))
                    {
                        _call?.Signal();
                    }
                }
                if (_inFlightCount == 0)
                {
                    Monitor.PulseAll(_lock);
                }
            }
        }
        chain.Release();
        if (inline)
        {
            worker!.CompletedInline = true;
        }
        else if (!stale)
        {
            ReturnToPool(chain);
        }
        else if (_log.IsEnabled(LogEventLevel.Debug))
        {
            _log.Debug("vring {Index}: dropped a completion for head {Head}: the ring was stopped or the chain already completed", Index, chain.Head);
        }
    }

    private bool NeedsSignalLocked(DeviceQueue queue)
    {
        bool needs = queue.NeedsNotification();
        if (!needs && _notifyOnEmpty && !_eventIdx && _inFlightCount == 0 && !queue.HasAvailable())
        {
            // NOTIFY_ON_EMPTY: notify when the device ran out of buffers, even if suppressed.
            needs = true;
        }
        return needs;
    }

    private DescriptorChain RentChain()
    {
        lock (_pool)
        {
            if (_pool.Count > 0)
            {
                return _pool.Pop();
            }
        }
        // Grows only while chains are kept by the handler; bounded by the ring size (heads are unique).
        return new DescriptorChain(_options.MaxChainSegments);
    }

    private void ReturnToPool(DescriptorChain chain)
    {
        lock (_pool)
        {
            if (_pool.Count < Math.Max((int)_num, 16))
            {
                _pool.Push(chain);
            }
        }
    }

    // ---- configuration (message thread) ----

    internal string? SetNum(uint num)
    {
        if (_started)
        {
            return $"vring {Index} is started";
        }
        if (num == 0 || num > MaxSize || (num & (num - 1)) != 0)
        {
            return $"vring {Index} size {num} is not a power of 2 in 1..{MaxSize}";
        }
        _num = (ushort)num;
        return null;
    }

    internal string? SetBase(uint value)
    {
        if (_started)
        {
            return $"vring {Index} is started";
        }
        if (value > ushort.MaxValue)
        {
            return $"vring {Index} base {value} is not a 16-bit index";
        }
        _base = (ushort)value;
        return null;
    }

    /// <summary>Checks the three rings lie in <paramref name="memory"/> (VMM user addresses) with the
    /// current size and the spec's alignments, then stores them; a started ring moves to them.</summary>
    internal string? SetAddress(in VringAddress address, GuestMemory memory)
    {
        if ((address.Flags & ~VhostUserLimits.VringAddrFlagLog) != 0)
        {
            return $"vring {Index} address flags 0x{address.Flags:x} unknown";
        }
        if ((address.DescriptorTable & (SplitRing.DescAlign - 1)) != 0
            || (address.AvailableRing & (SplitRing.AvailAlign - 1)) != 0
            || (address.UsedRing & (SplitRing.UsedAlign - 1)) != 0)
        {
            return $"vring {Index} rings misaligned (desc 0x{address.DescriptorTable:x}, avail 0x{address.AvailableRing:x}, used 0x{address.UsedRing:x})";
        }
        string? outside = CheckRingsInMemory(address, _num, memory);
        if (outside != null)
        {
            return outside;
        }
        _address = address;
        _hasAddress = true;
        _memory = memory;
        if (_started)
        {
            Reconfigure(memory);
        }
        else
        {
            TryStart();
        }
        return null;
    }

    private string? CheckRingsInMemory(in VringAddress address, ushort size, GuestMemory memory)
    {
        using var view = memory.Acquire();
        if (!view.TryTranslateUser(address.DescriptorTable, SplitRing.DescTableBytes(size), out _))
        {
            return $"vring {Index} descriptor table 0x{address.DescriptorTable:x} (+{SplitRing.DescTableBytes(size)}) is outside guest memory";
        }
        if (!view.TryTranslateUser(address.AvailableRing, SplitRing.AvailRingBytes(size), out _))
        {
            return $"vring {Index} avail ring 0x{address.AvailableRing:x} (+{SplitRing.AvailRingBytes(size)}) is outside guest memory";
        }
        if (!view.TryTranslateUser(address.UsedRing, SplitRing.UsedRingBytes(size), out _))
        {
            return $"vring {Index} used ring 0x{address.UsedRing:x} (+{SplitRing.UsedRingBytes(size)}) is outside guest memory";
        }
        return null;
    }

    internal void SetKick(EventFd? kick, bool polling)
    {
        if (_worker != null)
        {
            // The worker waits on the old fd: restart it on the new one.
            StopWorker();
        }
        _kick?.Dispose();
        _kick = kick;
        _kickPolling = polling;
        TryStart();
        UpdateWorker();
    }

    internal void SetCall(EventFd? call)
    {
        EventFd? old;
        lock (_lock)
        {
            old = _call;
            _call = call;
        }
        old?.Dispose();
    }

    internal void SetErr(EventFd? err)
    {
        EventFd? old;
        lock (_lock)
        {
            old = _err;
            _err = err;
        }
        old?.Dispose();
    }

    internal void SetEnabled(bool enabled)
    {
        _enabled = enabled;
        UpdateWorker();
    }

    /// <summary>Takes the negotiated virtio features (ring format, notification rules, and whether
    /// rings start enabled). A started ring applies them through <see cref="Reconfigure"/>.</summary>
    internal void SetFeatures(ulong features)
    {
        _eventIdx = (features & VirtioFeatures.RingEventIdx) != 0;
        _indirect = (features & VirtioFeatures.RingIndirectDesc) != 0;
        _notifyOnEmpty = (features & VirtioFeatures.NotifyOnEmpty) != 0;
        _protocolFeatures = (features & VirtioFeatures.ProtocolFeatures) != 0;
    }

    /// <summary>After a memory table or feature change: a started ring re-translates its rings
    /// (the worker pauses meanwhile; chains in flight stay valid, their views pin their memory).</summary>
    internal void Reconfigure(GuestMemory memory)
    {
        _memory = memory;
        if (!_started)
        {
            TryStart();
            return;
        }
        bool wasRunning = _worker != null;
        StopWorker();
        lock (_lock)
        {
            var queue = _queue!;
            ushort nextAvail = queue.NextAvail;
            if (!queue.TryConfigureUser(memory, _address.DescriptorTable, _address.AvailableRing, _address.UsedRing, _eventIdx, _indirect))
            {
                MarkBrokenLocked("its rings are no longer inside guest memory");
            }
            else
            {
                queue.NextAvail = nextAvail;
            }
        }
        if (wasRunning)
        {
            UpdateWorker();
        }
    }

    private void TryStart()
    {
        if (_started || !_hasAddress || !HasKick || _memory == null)
        {
            return;
        }
        lock (_lock)
        {
            if (_queue == null || _queue.Size != _num)
            {
                _queue = new DeviceQueue(_num);
                _queue.MaxIndirectEntries = Math.Clamp(_options.MaxChainSegments, (int)_num, 65536);
                _inFlight = new DescriptorChain?[_num];
            }
            _inFlightCount = 0;
            _broken = false;
            _brokenLogged = 0;
            if (!_queue.TryConfigureUser(_memory, _address.DescriptorTable, _address.AvailableRing, _address.UsedRing, _eventIdx, _indirect))
            {
                // Memory changed since SET_VRING_ADDR checked the rings.
                MarkBrokenLocked("its rings are outside guest memory");
            }
            else
            {
                _queue.NextAvail = _base;
            }
        }
        _started = true;
        if (!_protocolFeatures)
        {
            // Without VHOST_USER_F_PROTOCOL_FEATURES a ring is enabled as it starts.
            _enabled = true;
        }
        _handler = _device.GetVringHandler(Index);
        if (_log.IsEnabled(LogEventLevel.Debug))
        {
            _log.Debug("vring {Index} started: size {Size}, base {Base}, {Mode}", Index, _num, _base, _kickPolling ? "polling" : "kick fd");
        }
        UpdateWorker();
    }

    /// <summary>GET_VRING_BASE: stops the ring (the worker quiesces, chains in flight get
    /// <see cref="VhostUserBackendOptions.InFlightDrainTimeout"/> to complete), drops the kick and
    /// call fds, and returns the index of the next avail entry.</summary>
    internal ushort Stop()
    {
        StopWorker();
        if (_started)
        {
            WaitForInFlight();
            lock (_lock)
            {
                _base = _queue!.NextAvail;
                _queue.Reset();
                _inFlightCount = 0;
                Array.Clear(_inFlight);
                _signalPending = false;
            }
            _started = false;
            _handler = null;
        }
        _kick?.Dispose();
        _kick = null;
        _kickPolling = false;
        SetCall(null);
        return _base;
    }

    /// <summary>RESET_DEVICE: stops the ring and forgets everything the front-end set.</summary>
    internal void ResetState()
    {
        Stop();
        SetErr(null);
        _num = MaxSize;
        _base = 0;
        _address = default;
        _hasAddress = false;
        _enabled = false;
        _broken = false;
    }

    private void WaitForInFlight()
    {
        lock (_lock)
        {
            var deadline = Environment.TickCount64 + (long)_options.InFlightDrainTimeout.TotalMilliseconds;
            while (_inFlightCount > 0)
            {
                long remaining = deadline - Environment.TickCount64;
                if (remaining <= 0)
                {
                    _log.Warning("vring {Index}: {Count} chain(s) still in flight after {Timeout}; they are abandoned",
                        Index, _inFlightCount, _options.InFlightDrainTimeout);
                    Array.Clear(_inFlight);
                    _inFlightCount = 0;
                    break;
                }
                Monitor.Wait(_lock, (int)Math.Min(remaining, int.MaxValue));
            }
        }
    }

    // ---- worker ----

    private void UpdateWorker()
    {
        bool shouldRun = _started && _enabled && !_broken && _queue is { IsConfigured: true };
        if (shouldRun && _worker == null && _handler != null)
        {
            var worker = new Worker(this, _queue!, _handler, _kick, _kickPolling, _device.MayPoll(Index) ? _options.PollMax : TimeSpan.Zero);
            _worker = worker;
            worker.Thread.Start();
        }
        else if (!shouldRun && _worker != null)
        {
            StopWorker();
        }
    }

    /// <summary>Asks the worker to stop and joins it, or gives up on it while it is stuck in a
    /// handler (detached: it exits when the handler returns, touching nothing of the ring). Chains it
    /// handed out stay in flight.</summary>
    private void StopWorker()
    {
        var worker = _worker;
        if (worker == null)
        {
            return;
        }
        worker.StopRequested = true;
        _stopEvent.Signal();
        while (!worker.Thread.Join(_options.WorkerStopTimeout))
        {
            bool detached;
            lock (_lock)
            {
                detached = worker.TryDetach();
            }
            if (detached)
            {
                _log.Error("vring {Index}: the worker did not stop within {Timeout} (a handler is blocked); it is left behind and will exit when the handler returns",
                    Index, _options.WorkerStopTimeout);
                break;
            }
            // Out of a handler the worker only does bounded work and sees the stop request: a new
            // worker must not join it in the ring's code, so wait on.
            _log.Warning("vring {Index}: the worker has not stopped after {Timeout}; waiting on", Index, _options.WorkerStopTimeout);
        }
        _stopEvent.Consume();
        _worker = null;
    }

    private void Untrack(DescriptorChain chain)
    {
        lock (_lock)
        {
            ushort head = chain.Head;
            if (head < _inFlight.Length && ReferenceEquals(_inFlight[head], chain))
            {
                _inFlight[head] = null;
                _inFlightCount--;
                if (_inFlightCount == 0)
                {
                    Monitor.PulseAll(_lock);
                }
            }
        }
    }

    private void MarkBrokenLocked(string reason)
    {
        _broken = true;
        if (Interlocked.Exchange(ref _brokenLogged, 1) == 0)
        {
            _log.Error("vring {Index} is broken: {Reason}; it is no longer processed", Index, reason);
            _err?.Signal();
        }
    }

    private void MarkBroken(string reason)
    {
        lock (_lock)
        {
            MarkBrokenLocked(reason);
        }
        _onBroken?.Invoke(this);
    }

    /// <summary>One worker thread and what it keeps about the chain in hand. The ring points at its
    /// current worker; a worker given up on keeps its own state and never reaches the ring's again.</summary>
    private sealed class Worker
    {
        // Where the worker thread is, for StopWorker: it may give up on a worker only while that is
        // inside a handler, and the worker checks on the way out whether it was.
        private const int InRing = 0;
        private const int InHandler = 1;
        private const int Detached = 2;

        public readonly Thread Thread;
        public volatile bool StopRequested;

        /// <summary>The chain HandleChain is running on. Written and read on the worker's thread only
        /// (<see cref="Complete"/> looks at it there).</summary>
        public DescriptorChain? Handling;

        /// <summary>Set by <see cref="Complete"/> when the handler completed <see cref="Handling"/>
        /// inline: the chain is then the worker's to reuse. Worker's thread only.</summary>
        public bool CompletedInline;

        private int _phase = InRing;
        private readonly Vring _ring;
        private readonly DeviceQueue _queue;
        private readonly IVringHandler _handler;
        private readonly EventFd? _kick;
        private readonly bool _polling;
        private readonly TimeSpan _pollMax;
        private DescriptorChain? _spare;

        public Worker(Vring ring, DeviceQueue queue, IVringHandler handler, EventFd? kick, bool polling, TimeSpan pollMax)
        {
            _pollMax = pollMax;
            _ring = ring;
            _queue = queue;
            _handler = handler;
            _kick = kick;
            _polling = polling;
            Thread = new Thread(Run) { Name = $"vring-{ring.Index}", IsBackground = true };
        }

        /// <summary>Worker thread only, under the ring's lock (see <see cref="HasMoreAvailable"/>).</summary>
        public bool HasAvailable() => _queue.HasAvailable();

        public bool IsDetached => Volatile.Read(ref _phase) == Detached;

        /// <summary>StopWorker, under the ring's lock, after the stop request: gives up on a worker
        /// inside a handler. False when it is in the ring's own code (it will see the stop soon).</summary>
        public bool TryDetach() => Interlocked.CompareExchange(ref _phase, Detached, InHandler) == InHandler;

        /// <summary>Back from a handler; false when the worker was given up on meanwhile.</summary>
        private bool LeaveHandler() => Interlocked.CompareExchange(ref _phase, InRing, InHandler) == InHandler;

        private void Run()
        {
            try
            {
                // Chains may have been published while the ring was stopped or disabled.
                Drain();
                if (_polling)
                {
                    PollLoop();
                }
                else
                {
                    KickLoop();
                }
            }
            catch (Exception e)
            {
                if (IsDetached)
                {
                    // Given up on: the ring has moved on (perhaps to a new worker) and is not this one's to break.
                    _ring._log.Error("vring {Index}: the handler a stopped worker was left in failed: {Error}: {Message}",
                        _ring.Index, e.GetType().Name, e.Message);
                }
                else
                {
                    // Never let an exception escape a worker: the ring is broken instead.
                    _ring.MarkBroken($"the worker failed: {e.GetType().Name}: {e.Message}");
                }
            }
            finally
            {
                _spare?.Release();
            }
        }

        private unsafe void KickLoop()
        {
            Span<PollFd> fds = stackalloc PollFd[2];
            var window = new PollWindow(_pollMax);
            // When the last drain began: the window stretches after long ones.
            long drainStart = Stopwatch.GetTimestamp();
            while (!StopRequested && !_ring._broken)
            {
                // The ring just ran dry (or the worker just started).
                long dryAt = Stopwatch.GetTimestamp();
                long busy = dryAt - drainStart;
                long windowTicks = window.After(busy);
                if (windowTicks > 0 && PollForMore(dryAt, dryAt + windowTicks, out drainStart))
                {
                    Drain();
                    continue;
                }
                fds[0] = new PollFd { Fd = _kick!.Fd, Events = Libc.POLLIN };
                fds[1] = new PollFd { Fd = _ring._stopEvent.Fd, Events = Libc.POLLIN };
                int n;
                fixed (PollFd* p = fds)
                {
                    // SAFETY: p points at the two PollFd entries of the stack span.
                    n = Libc.Poll(p, 2, -1);
                }
                if (n < 0)
                {
                    if (Libc.LastErrno == Errno.EINTR)
                    {
                        // Nothing was drained: the next window is not stretched by this sleep.
                        drainStart = Stopwatch.GetTimestamp();
                        continue;
                    }
                    _ring.MarkBroken("poll on its kick fd failed: " + PosixException.Describe(Libc.LastErrno));
                    return;
                }
                if (StopRequested || (fds[1].REvents & Libc.POLLIN) != 0)
                {
                    return;
                }
                if ((fds[0].REvents & (Libc.POLLERR | Libc.POLLNVAL | Libc.POLLHUP)) != 0)
                {
                    _ring.MarkBroken("its kick fd reported an error");
                    return;
                }
                if ((fds[0].REvents & Libc.POLLIN) != 0)
                {
                    drainStart = Stopwatch.GetTimestamp();
                    window.Waited(drainStart - dryAt, busy);
                    _kick.Consume();
                    Drain();
                }
            }
        }

        /// <summary>Checks the avail ring from <paramref name="start"/> until <paramref name="deadline"/>
        /// (<see cref="Stopwatch"/> timestamps) with the driver's kicks suppressed. True when chains
        /// are there to drain; false when none came: notifications are enabled again and the worker
        /// may sleep. <paramref name="now"/>: the last timestamp it read, just before the check
        /// that saw chains.</summary>
        private bool PollForMore(long start, long deadline, out long now)
        {
            _queue.DisableNotifications();
            now = start;
            int round = 0;
            while (!StopRequested && !_ring._broken)
            {
                if (_queue.HasAvailable())
                {
                    return true;
                }
                if (now >= deadline)
                {
                    break;
                }
                // Give the CPU away now and then: the driver may be waiting for it.
                if ((++round & 3) == 0)
                {
                    Thread.Yield();
                }
                else
                {
                    long until = now + SpinBetweenLooks;
                    do
                    {
                        Thread.SpinWait(1);
                    }
                    while (Stopwatch.GetTimestamp() < until);
                }
                // Read after the yield, which may have lasted a time slice: when chains are seen
                // next, now is when, and the drain that follows is not charged for the yield.
                now = Stopwatch.GetTimestamp();
            }
            // A chain published just before the driver saw notifications enabled again is drained, not slept on.
            return _queue.EnableNotifications();
        }

        private unsafe void PollLoop()
        {
            var idle = new SpinWait();
            var stop = new PollFd { Fd = _ring._stopEvent.Fd, Events = Libc.POLLIN };
            while (!StopRequested && !_ring._broken)
            {
                if (_queue.HasAvailable())
                {
                    idle.Reset();
                    Drain();
                    continue;
                }
                if (!idle.NextSpinWillYield)
                {
                    idle.SpinOnce();
                    continue;
                }
                // Idle: sleep a little on the stop fd so a stop request is still seen at once.
                Libc.Poll(&stop, 1, PollIntervalMs);
            }
        }

        private void Drain()
        {
            do
            {
                _queue.DisableNotifications();
                while (true)
                {
                    if (StopRequested || _ring._broken)
                    {
                        return;
                    }
                    var chain = _spare ?? _ring.RentChain();
                    _spare = chain;
                    var result = _queue.TryPop(chain);
                    if (result == PopResult.Empty)
                    {
                        break;
                    }
                    if (result == PopResult.Malformed)
                    {
                        _ring.MarkBroken($"malformed chain at head {chain.Head}: {chain.Error}");
                        return;
                    }
                    if (!Track(chain))
                    {
                        return;
                    }
                    _spare = null;
                    Handling = chain;
                    CompletedInline = false;
                    Volatile.Write(ref _phase, InHandler);
                    try
                    {
                        _handler.HandleChain(_ring, chain);
                    }
                    catch
                    {
                        Handling = null;
                        LeaveHandler();
                        // The chain will not be completed: stop waiting for it (a late completion is
                        // dropped). Only this chain's own entry, as its completion would, even when
                        // the worker was given up on meanwhile.
                        _ring.Untrack(chain);
                        throw;
                    }
                    Handling = null;
                    if (!LeaveHandler())
                    {
                        // Given up on while in the handler: the ring may have a new worker by now.
                        // Leave without touching it (StopRequested is set: the loops end too).
                        return;
                    }
                    if (CompletedInline)
                    {
                        // Completed during HandleChain on this thread: ours to reuse.
                        _spare = chain;
                    }
                    // Otherwise the handler kept it (or another thread completed it and pooled it): not ours.
                }
                SignalIfPending();
            }
            while (_queue.EnableNotifications());
            SignalIfPending();
        }

        private bool Track(DescriptorChain chain)
        {
            lock (_ring._lock)
            {
                ushort head = chain.Head;
                if (_ring._inFlight[head] != null)
                {
                    _ring.MarkBrokenLocked($"the driver made head {head} available again while it is in flight");
                }
                else
                {
                    _ring._inFlight[head] = chain;
                    _ring._inFlightCount++;
                    return true;
                }
            }
            _ring._onBroken?.Invoke(_ring);
            return false;
        }

        private void SignalIfPending()
        {
            lock (_ring._lock)
            {
                if (_ring._signalPending)
                {
                    _ring._signalPending = false;
                    if (_ring.NeedsSignalLocked(_queue))
                    {
                        _ring._call?.Signal();
                    }
                }
            }
        }
    }

    /// <summary>Stops the worker, abandons chains in flight and closes every fd.</summary>
    public void Dispose()
    {
        Stop();
        SetErr(null);
        _stopEvent.Dispose();
        lock (_pool)
        {
            _pool.Clear();
        }
    }
}
