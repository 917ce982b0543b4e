using System.Diagnostics;

namespace Vhostfsd.VhostUser;

/// <summary>How long a ring's worker polls the avail ring after it ran dry before it sleeps on the
/// kick fd: adaptive, after QEMU's IOThread polling (poll-max-ns, grow ×2), but halving instead of
/// dropping to zero, and stretched after long work.</summary>
/// <remarks>
/// Sleeping costs a wake-up on both sides: the driver's kick (an eventfd write) and the worker's
/// poll, read and scheduler switch. When the driver's next request comes within a few tens of
/// microseconds — a caller at queue depth 1 issuing its next request as soon as the previous one is
/// answered — checking the ring until it comes is cheaper than both. The window grows while the
/// waits it sees are short and halves each time a wait is longer than the maximum, so a ring whose
/// guest pauses between requests, or is idle, stops polling after a few such waits. Halving rather
/// than zeroing matters for a stream whose requests now and then come just past the window: a wait
/// measured after the worker slept includes the worker's own wake-up, so once zeroed the window
/// needed five sleeps to double back and often fell again on the way (docs/performance.md,
/// "Polling the ring").
/// </remarks>
public struct PollWindow
{
    /// <summary>The first window after a zero one.</summary>
    public static readonly TimeSpan Smallest = TimeSpan.FromMicroseconds(4);

    /// <summary>How many times the maximum a window may stretch to after a long drain.</summary>
    public const int LongestStretch = 16;

    private readonly long _maxTicks;
    private readonly long _smallestTicks;
    private readonly long _longestTicks;
    private long _ticks;

    /// <summary>A window that starts at <paramref name="max"/> (zero: never poll).</summary>
    public PollWindow(TimeSpan max)
    {
        _maxTicks = max <= TimeSpan.Zero ? 0 : ToTicks(max);
        _smallestTicks = Math.Min(_maxTicks, ToTicks(Smallest));
        _longestTicks = _maxTicks * LongestStretch;
        _ticks = _maxTicks;
    }

    /// <summary>The current window, in <see cref="Stopwatch"/> ticks.</summary>
    public readonly long Ticks => _ticks;

    /// <summary>The window for a ring that just ran dry after <paramref name="busyTicks"/> of work:
    /// the current window, stretched by how much longer than the maximum that work took (up to
    /// <see cref="LongestStretch"/> times).</summary>
    /// <remarks>After a long request the driver's next one comes later: the caller was put to
    /// sleep meanwhile, so its answer wakes it (and, in a guest, the interrupt handler that
    /// completes the request) before the next request is issued. Stretching the window with the
    /// work it follows keeps a stream of 1 MiB requests polled, while polling never costs more
    /// than the work itself did.</remarks>
    public readonly long After(long busyTicks) => _ticks == 0 ? 0 : (long)(_ticks * Stretch(busyTicks));

    /// <summary>Adapts the window to a wait that ended with a kick, after <paramref name="busyTicks"/>
    /// of work: <paramref name="waitedTicks"/> from the moment the ring ran dry (polling included)
    /// to the kick, measured against the window stretched as <see cref="After"/> stretches it.</summary>
    public void Waited(long waitedTicks, long busyTicks) => Adapt((long)(waitedTicks / Stretch(busyTicks)));

    private readonly double Stretch(long busyTicks) =>
        _maxTicks == 0 ? 1 : Math.Max(1, Math.Min(busyTicks, _longestTicks) / (double)_maxTicks);

    /// <summary>Adapts the window to a wait already measured against the unstretched maximum.</summary>
    private void Adapt(long waitedTicks)
    {
        if (waitedTicks > _maxTicks)
        {
            // Requests come further apart than we would poll: halve, and stop polling when a
            // window would be shorter than the smallest step.
            _ticks = _ticks / 2 < _smallestTicks ? 0 : _ticks / 2;
        }
        else if (waitedTicks > _ticks)
        {
            // Slept, but not for long: a longer window would have caught the request.
            _ticks = Math.Min(_maxTicks, Math.Max(_ticks * 2, _smallestTicks));
        }
    }

    private static long ToTicks(TimeSpan span) => (long)(span.TotalSeconds * Stopwatch.Frequency);
}
