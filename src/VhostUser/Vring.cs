using Vhostfsd.Logging;
using Vhostfsd.Posix;
using Vhostfsd.Virtqueue;

namespace Vhostfsd.VhostUser;

/// <summary>One virtqueue of a vhost-user back-end: the state the front-end configured (size, base,
/// ring addresses, features, kick/call/err eventfds, enabled), the <see cref="DeviceQueue"/> over the
/// rings, the chains in flight, and the <see cref="VringWorker"/> that drains it while it runs.</summary>
/// <remarks>
/// Rules (vhost-user.rst "Ring states"): a ring is started once it has ring addresses and a kick fd
/// (or the no-fd flag: then the worker polls); GET_VRING_BASE stops it. A started ring is processed
/// only while enabled. The worker runs exactly while the ring is started, enabled and not broken.
/// <para>Threads: configuration happens on the back-end's message thread. The worker pops; completions
/// come from the worker (batched: one call signal per drained batch) or from any other thread
/// (signalled at once). <see cref="_lock"/> serializes used-ring publishing, notification decisions,
/// eventfd swaps and in-flight bookkeeping.</para>
/// <para>Chains go out as <see cref="OwnedChain"/>s and come back through
/// <see cref="IChainCompletion.Complete"/>. In-flight chains are tracked by head index, and told
/// apart from later pops into the same <see cref="DescriptorChain"/> by their generation. A head
/// popped while its previous chain is still in flight means the driver reused a descriptor it does
/// not own: the ring is broken. A completion for a hand-out the ring no longer tracks (completed
/// already, or its ring was stopped and the wait for it timed out) is dropped.</para>
/// <para>One worker at a time: a worker told to stop is waited for while it is in the ring's own code
/// (bounded work); one stuck in a handler past <see cref="VhostUserBackendOptions.WorkerStopTimeout"/>
/// is given up on (detached) and, when the handler returns, exits without touching the ring, so a
/// new worker can take the ring meanwhile.</para>
/// </remarks>
public sealed class Vring : IChainCompletion, IDisposable
{
    private readonly object _lock = new();
    private readonly Logger _log;
    private readonly VhostUserBackendOptions _options;
    private readonly Action<Vring>? _onBroken;
    private readonly IVhostUserDevice _device;
    private readonly EventFd _stopEvent = EventFd.Create(nonBlocking: true);
    private readonly ChainPool _pool;

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
    private VringWorker? _worker;

    // Shared with the worker and completers; guarded by _lock.
    private DeviceQueue? _queue;
    private EventFd? _call;
    private EventFd? _err;
    private DescriptorChain?[] _inFlight = [];
    private int _inFlightCount;
    private bool _signalPending;
    private volatile bool _broken;
    private int _brokenLogged;

    internal Vring(int index, IVhostUserDevice device, VhostUserBackendOptions options, Logger log, Action<Vring>? onBroken)
    {
        Index = index;
        _device = device;
        ushort maxSize = device.MaxQueueSize;
        MaxSize = maxSize;
        _num = maxSize;
        _options = options;
        _log = log;
        _onBroken = onBroken;
        _pool = new ChainPool(options.MaxChainSegments);
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

    // ---- completion (any thread) ----

    /// <summary>Publishes the chain as used with <paramref name="bytesWritten"/> bytes written into
    /// its writable buffers and signals the driver when it wants it. On the worker thread, inside
    /// <see cref="IVringHandler.HandleChain"/> on that chain, the signal waits for the end of the
    /// batch; from anywhere else it goes out at once. A hand-out the ring no longer tracks (completed
    /// already, or its ring was stopped meanwhile) is dropped.</summary>
    void IChainCompletion.Complete(in OwnedChain owned, uint bytesWritten)
    {
        var chain = owned.Chain;
        ArgumentNullException.ThrowIfNull(chain);
        // Inline: the ring's worker, inside HandleChain, completing the chain it is handling; the
        // worker then reuses the chain and signals at the end of its batch. Anything else (another
        // thread, a chain passed on, a worker that was given up on) completes as an outsider.
        var worker = _worker;
        bool inline = worker != null && worker.IsHandlingHere(chain);
        bool stale = false;
        lock (_lock)
        {
            if (inline && worker!.IsDetached)
            {
                // Given up on while in the handler: it will end its batch without signalling.
                inline = false;
            }
            if (!TryUntrackLocked(in owned))
            {
                stale = true;
            }
            else
            {
                var queue = _queue;
                if (queue != null && queue.IsConfigured && !_broken)
                {
                    if (bytesWritten > chain.WritableBytes)
                    {
                        // A handler bug must not let the driver read past what it offered.
                        bytesWritten = (uint)chain.WritableBytes;
                    }
                    queue.PushUsed(chain.Head, bytesWritten);
                    if (inline)
                    {
                        _signalPending = true;
                    }
                    else if (NeedsSignalLocked(queue))
                    {
                        _call?.Signal();
                    }
                }
            }
        }
        if (stale)
        {
            if (owned.IsCurrent)
            {
                // Abandoned when its ring stopped: still this holder's, so its memory view goes now.
                chain.Release();
            }
            // Otherwise completed already: the chain object may be in another hand-out by now.
            if (_log.IsEnabled(LogEventLevel.Debug))
            {
                _log.Debug("vring {Index}: dropped a completion for head {Head}: the ring was stopped or the chain already completed", Index, chain.Head);
            }
            return;
        }
        chain.Release();
        if (inline)
        {
            worker!.TookBackInline();
        }
        else
        {
            _pool.Return(chain, keepAtMost: Math.Max((int)_num, 16));
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

    // ---- the worker's surface (its thread) ----

    /// <summary>The fd that wakes a sleeping worker when it is asked to stop.</summary>
    internal EventFd StopEvent => _stopEvent;

    /// <summary>A chain to pop into: a pooled one, or a new one while handlers hold chains.</summary>
    internal DescriptorChain RentChain() => _pool.Rent();

    /// <summary>Records <paramref name="chain"/>, just popped, as in flight and hands it out. False
    /// when its head is in flight already: the driver reused a descriptor it does not own, and the
    /// ring is broken.</summary>
    internal bool TryTrack(DescriptorChain chain, out OwnedChain owned)
    {
        lock (_lock)
        {
            ushort head = chain.Head;
            if (_inFlight[head] != null)
            {
                MarkBrokenLocked($"the driver made head {head} available again while it is in flight");
            }
            else
            {
                _inFlight[head] = chain;
                _inFlightCount++;
                owned = new OwnedChain(chain, this);
                return true;
            }
        }
        _onBroken?.Invoke(this);
        owned = default;
        return false;
    }

    /// <summary>Stops waiting for a chain that will not be completed (its handler threw); a late
    /// completion of it is dropped. Only that hand-out's own entry, as its completion would.</summary>
    internal void Untrack(in OwnedChain owned)
    {
        lock (_lock)
        {
            TryUntrackLocked(in owned);
        }
    }

    private bool TryUntrackLocked(in OwnedChain owned)
    {
        var chain = owned.Chain;
        ushort head = chain.Head;
        if (head >= _inFlight.Length || !ReferenceEquals(_inFlight[head], chain) || !owned.IsCurrent)
        {
            return false;
        }
        _inFlight[head] = null;
        _inFlightCount--;
        if (_inFlightCount == 0)
        {
            Monitor.PulseAll(_lock);
        }
        return true;
    }

    /// <summary>End of a drained batch: signals the driver for the chains completed inline, when it wants it.</summary>
    internal void SignalIfPending()
    {
        lock (_lock)
        {
            if (_signalPending)
            {
                _signalPending = false;
                if (NeedsSignalLocked(_queue!))
                {
                    _call?.Signal();
                }
            }
        }
    }

    /// <summary>Whether chains wait in <paramref name="queue"/> (the worker's), for a worker not
    /// given up on. Under the lock, where <see cref="StopWorker"/> detaches: a worker given up on
    /// must not read a ring that another worker may be popping from or that may have moved.</summary>
    internal bool HasMoreAvailable(VringWorker worker, DeviceQueue queue)
    {
        lock (_lock)
        {
            return !worker.IsDetached && queue.HasAvailable();
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

    /// <summary>Stores the ring addresses once <see cref="VringAddressRules"/> accepts them for the
    /// current size; a started ring moves to them.</summary>
    internal string? SetAddress(in VringAddress address, GuestMemory memory)
    {
        string? refused = VringAddressRules.Check(Index, in address, _num, memory);
        if (refused != null)
        {
            return refused;
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

    // ---- worker start and stop (message thread) ----

    private void UpdateWorker()
    {
        bool shouldRun = _started && _enabled && !_broken && _queue is { IsConfigured: true };
        if (shouldRun && _worker == null && _handler != null)
        {
            var pollMax = _device.MayPoll(Index) ? _options.PollMax : TimeSpan.Zero;
            var worker = new VringWorker(this, _queue!, _handler, _kick, _kickPolling, pollMax, _log);
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
        worker.RequestStop();
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

    private void MarkBrokenLocked(string reason)
    {
        _broken = true;
        if (Interlocked.Exchange(ref _brokenLogged, 1) == 0)
        {
            _log.Error("vring {Index} is broken: {Reason}; it is no longer processed", Index, reason);
            _err?.Signal();
        }
    }

    /// <summary>Stops processing the ring for good (until it is started again): signals ERR, logs once,
    /// and tells the back-end (DEVICE_NEEDS_RESET). Any thread.</summary>
    internal void MarkBroken(string reason)
    {
        lock (_lock)
        {
            MarkBrokenLocked(reason);
        }
        _onBroken?.Invoke(this);
    }

    /// <summary>Stops the worker, abandons chains in flight and closes every fd.</summary>
    public void Dispose()
    {
        Stop();
        SetErr(null);
        _stopEvent.Dispose();
        _pool.Clear();
    }
}
