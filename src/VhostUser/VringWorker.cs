using System.Diagnostics;
using Vhostfsd.Logging;
using Vhostfsd.Posix;
using Vhostfsd.Virtqueue;

namespace Vhostfsd.VhostUser;

/// <summary>The thread that drains one started, enabled <see cref="Vring"/> into its
/// <see cref="IVringHandler"/>: it sleeps on the kick fd (after polling the avail ring for a
/// <see cref="PollWindow"/>) or, in no-fd mode, polls; pops each chain, hands it to the handler as an
/// <see cref="OwnedChain"/>, and signals the driver once per drained batch.</summary>
/// <remarks>
/// It reaches the ring's state only through the ring's internal surface (track and untrack a chain,
/// rent a chain, signal what inline completions left pending, mark the ring broken, the stop fd),
/// all of which take the ring's lock where they must. What it keeps about the chain in hand
/// (<see cref="_handling"/>, <see cref="_completedInline"/>) is its own, never the ring's: a worker
/// given up on while in a handler keeps it to itself and, once the handler returns, leaves without
/// touching the ring, which may have a new worker by then. Two workers therefore never run ring code
/// at once: the ring waits for a worker in its own code, and gives up only on one in a handler.
/// </remarks>
internal sealed class VringWorker
{
    private const int PollIntervalMs = 1;

    /// <summary>How long a polling worker spins between two looks at the avail ring, 1 µs: a time,
    /// not a count of Thread.SpinWait iterations, whose length each runtime calibrates its own way
    /// (SpinWait(20) lasts about 1.2 µs on the JIT here and 0.5 µs in the native build, which then
    /// yielded its CPU 2.4 times as often while it polled).</summary>
    private static readonly long SpinBetweenLooks = Stopwatch.Frequency / 1_000_000;

    // Where the worker thread is, for Vring.StopWorker: it may give up on a worker only while that
    // is inside a handler, and the worker checks on the way out whether it was.
    private const int InRing = 0;
    private const int InHandler = 1;
    private const int Detached = 2;

    private readonly Vring _ring;
    private readonly DeviceQueue _queue;
    private readonly IVringHandler _handler;
    private readonly EventFd? _kick;
    private readonly bool _polling;
    private readonly TimeSpan _pollMax;
    private readonly Logger _log;
    private int _phase = InRing;
    private volatile bool _stopRequested;
    private DescriptorChain? _spare;

    /// <summary>The chain the handler is running on. Written and read on this worker's thread only
    /// (<see cref="IsHandlingHere"/> looks at it there).</summary>
    private DescriptorChain? _handling;

    /// <summary>Set by <see cref="TookBackInline"/> when the handler completed <see cref="_handling"/>
    /// inline: the chain is then this worker's to reuse. Worker's thread only.</summary>
    private bool _completedInline;

    /// <param name="kick">The kick fd to sleep on; null when <paramref name="polling"/>.</param>
    /// <param name="pollMax">The longest window to poll the avail ring for after it ran dry (zero: never).</param>
    public VringWorker(Vring ring, DeviceQueue queue, IVringHandler handler, EventFd? kick, bool polling, TimeSpan pollMax, Logger log)
    {
        _ring = ring;
        _queue = queue;
        _handler = handler;
        _kick = kick;
        _polling = polling;
        _pollMax = pollMax;
        _log = log;
        Thread = new Thread(Run) { Name = $"vring-{ring.Index}", IsBackground = true };
    }

    public Thread Thread { get; }

    public bool IsDetached => Volatile.Read(ref _phase) == Detached;

    /// <summary>Asks the loops to end; the ring signals its stop fd too, to wake a sleeping worker.</summary>
    public void RequestStop() => _stopRequested = true;

    /// <summary>Under the ring's lock, after <see cref="RequestStop"/>: gives up on a worker inside a
    /// handler. False when it is in the ring's own code (it will see the stop soon).</summary>
    public bool TryDetach() => Interlocked.CompareExchange(ref _phase, Detached, InHandler) == InHandler;

    /// <summary>True on this worker's thread while its handler runs on <paramref name="chain"/>: a
    /// completion there is inline (the worker reuses the chain and signals at the end of its batch).</summary>
    public bool IsHandlingHere(DescriptorChain chain) => Thread == Thread.CurrentThread && ReferenceEquals(_handling, chain);

    /// <summary>The ring took the chain in hand back inline (<see cref="IsHandlingHere"/>); worker's thread only.</summary>
    public void TookBackInline() => _completedInline = true;

    /// <summary>For <see cref="RingBacklog.HasMore"/>: on this worker's thread, inside a handler.</summary>
    public bool HasMoreAvailable() => Thread == Thread.CurrentThread && _handling != null && _ring.HasMoreAvailable(this, _queue);

    /// <summary>Back from a handler; false when the worker was given up on meanwhile.</summary>
    private bool LeaveHandler() => Interlocked.CompareExchange(ref _phase, InRing, InHandler) == InHandler;

    private bool ShouldRun => !_stopRequested && !_ring.IsBroken;

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
                _log.Error("vring {Index}: the handler a stopped worker was left in failed: {Error}: {Message}",
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
        while (ShouldRun)
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
            fds[1] = new PollFd { Fd = _ring.StopEvent.Fd, Events = Libc.POLLIN };
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
            if (_stopRequested || (fds[1].REvents & Libc.POLLIN) != 0)
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
        while (ShouldRun)
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
        var stop = new PollFd { Fd = _ring.StopEvent.Fd, Events = Libc.POLLIN };
        while (ShouldRun)
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
                if (!ShouldRun)
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
                if (!_ring.TryTrack(chain, out var owned))
                {
                    return;
                }
                _spare = null;
                if (!Handle(owned))
                {
                    // Given up on while in the handler: the ring may have a new worker by now.
                    // Leave without touching it (the stop was requested: the loops end too).
                    return;
                }
                if (_completedInline)
                {
                    // Completed during HandleChain on this thread: ours to reuse.
                    _spare = chain;
                }
                // Otherwise the handler passed it on (or another thread completed it and pooled it): not ours.
            }
            _ring.SignalIfPending();
        }
        while (_queue.EnableNotifications());
        _ring.SignalIfPending();
    }

    /// <summary>Runs the handler on <paramref name="owned"/>; false when the worker was given up on meanwhile.</summary>
    private bool Handle(OwnedChain owned)
    {
        _handling = owned.Chain;
        _completedInline = false;
        Volatile.Write(ref _phase, InHandler);
        try
        {
            _handler.HandleChain(owned, new RingBacklog(this));
        }
        catch
        {
            _handling = null;
            LeaveHandler();
            // The chain will not be completed: stop waiting for it (a late completion is dropped).
            // Only this chain's own entry, as its completion would, even when the worker was given
            // up on meanwhile.
            _ring.Untrack(in owned);
            throw;
        }
        _handling = null;
        return LeaveHandler();
    }
}
