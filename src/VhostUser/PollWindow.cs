using System.Diagnostics;

namespace Vhostfsd.VhostUser;

/// <summary>How long a ring's worker polls the avail ring after it ran dry before it sleeps on the
/// kick fd: adaptive, after QEMU's IOThread polling (poll-max-ns, grow ×2, shrink to 0).</summary>
/// <remarks>
/// Sleeping costs a wake-up on both sides: the driver's kick (an eventfd write) and the worker's
/// poll, read and scheduler switch. When the driver's next request comes within a few tens of
/// microseconds — a caller at queue depth 1 issuing its next request as soon as the previous one is
/// answered — checking the ring until it comes is cheaper than both. The window grows while the
/// waits it sees are short and drops to zero as soon as a wait is longer than the maximum, so a
/// ring whose guest pauses between requests, or is idle, polls for nothing.
/// </remarks>
public struct PollWindow
{
    /// <summary>The first window after a zero one.</summary>
    public static readonly TimeSpan Smallest = TimeSpan.FromMicroseconds(4);

    private readonly long _maxTicks;
    private readonly long _smallestTicks;
    private long _ticks;

    /// <summary>A window that starts at <paramref name="max"/> (zero: never poll).</summary>
    public PollWindow(TimeSpan max)
    {
        _maxTicks = max <= TimeSpan.Zero ? 0 : ToTicks(max);
        _smallestTicks = Math.Min(_maxTicks, ToTicks(Smallest));
        _ticks = _maxTicks;
    }

    /// <summary>The current window, in <see cref="Stopwatch"/> ticks.</summary>
    public readonly long Ticks => _ticks;

    /// <summary>Adapts the window to a wait that ended with a kick: <paramref name="waitedTicks"/>
    /// from the moment the ring ran dry (polling included) to the kick.</summary>
    public void Waited(long waitedTicks)
    {
        if (waitedTicks > _maxTicks)
        {
            // Requests come further apart than we would poll: polling would only burn CPU.
            _ticks = 0;
        }
        else if (waitedTicks > _ticks)
        {
            // Slept, but not for long: a longer window would have caught the request.
            _ticks = Math.Min(_maxTicks, Math.Max(_ticks * 2, _smallestTicks));
        }
    }

    private static long ToTicks(TimeSpan span) => (long)(span.TotalSeconds * Stopwatch.Frequency);
}
