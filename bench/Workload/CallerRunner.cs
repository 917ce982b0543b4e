using System.Diagnostics;

namespace Vhostfsd.Bench;

/// <summary>How long one measurement runs: a time budget, or a number of steps shared by the callers.</summary>
public sealed record Budget(TimeSpan Warmup, TimeSpan Duration, long Ops)
{
    public bool ByOps => Ops > 0;
}

/// <summary>What the callers did in the measured phase.</summary>
public sealed class Measurement
{
    public long Steps { get; init; }
    /// <summary>Warm-up actually run (longer than asked when the daemon was still compiling).</summary>
    public double WarmupSeconds { get; init; }
    public long Units { get; init; }
    public double ElapsedSeconds { get; init; }
    public required LatencyHistogram Latency { get; init; }
}

/// <summary>Runs N caller threads over a workload: each thread creates its <see cref="CallerWork"/> (so queue
/// selection and per-thread pools are the thread's own for the whole cell), then a warm-up phase and a measured
/// phase start on a barrier. Each step is timed; the measured phase's elapsed time runs from the first caller's
/// start to the last caller's end.
/// <para>The warm-up lasts at least its budget, then goes on in <see cref="WarmupSlice"/> steps while
/// <c>settled</c> says the daemon is not yet in its steady state (a .NET daemon's JIT recompiles its hot
/// methods in the background for a few seconds after start), for at most <see cref="MaxExtraWarmup"/>.</para></summary>
public static class CallerRunner
{
    public static readonly TimeSpan WarmupSlice = TimeSpan.FromSeconds(0.5);
    public static readonly TimeSpan MaxExtraWarmup = TimeSpan.FromSeconds(15);

    public static Measurement Run(int callers, Func<int, CallerWork> create, Budget budget, Action? beforeMeasure = null, Action? afterMeasure = null,
        Func<bool>? settled = null)
    {
        var works = new CallerWork?[callers];
        var histograms = new LatencyHistogram[callers];
        var steps = new long[callers];
        var units = new long[callers];
        var starts = new long[callers];
        var ends = new long[callers];
        for (int i = 0; i < callers; i++)
        {
            histograms[i] = new LatencyHistogram();
        }
        Exception? failure = null;
        var failed = new StrongBox<bool>();
        long deadline = 0;
        long perCallerOps = 0;
        bool done = false;
        using var gate = new Barrier(callers + 1);

        void Fail(Exception e)
        {
            Interlocked.CompareExchange(ref failure, e, null);
            Volatile.Write(ref failed.Value, true);
        }

        var threads = new Thread[callers];
        for (int c = 0; c < callers; c++)
        {
            int caller = c;
            threads[c] = new Thread(() =>
            {
                try
                {
                    works[caller] = create(caller);
                }
                catch (Exception e)
                {
                    Fail(e);
                }
                gate.SignalAndWait();
                while (true)
                {
                    gate.SignalAndWait();
                    if (Volatile.Read(ref done))
                    {
                        break;
                    }
                    if (!Volatile.Read(ref failed.Value) && works[caller] is CallerWork work)
                    {
                        try
                        {
                            RunPhase(work, histograms[caller], Volatile.Read(ref deadline), Volatile.Read(ref perCallerOps), failed,
                                out steps[caller], out units[caller], out starts[caller], out ends[caller]);
                        }
                        catch (Exception e)
                        {
                            Fail(e);
                        }
                    }
                    gate.SignalAndWait();
                }
                try
                {
                    works[caller]?.Dispose();
                }
                catch (Exception e)
                {
                    Fail(e);
                }
            })
            { IsBackground = true, Name = $"bench-caller-{caller}" };
            threads[c].Start();
        }

        gate.SignalAndWait(); // created
        // Warm-up, extended while the daemon is not settled.
        long warmupStart = Stopwatch.GetTimestamp();
        SetPhase(budget.Warmup, budget.ByOps ? Math.Max(1, budget.Ops / 10 / callers) : 0);
        gate.SignalAndWait();
        gate.SignalAndWait();
        if (settled != null && !budget.ByOps)
        {
            long extraDeadline = Stopwatch.GetTimestamp() + (long)(MaxExtraWarmup.TotalSeconds * Stopwatch.Frequency);
            while (!Volatile.Read(ref failed.Value) && Stopwatch.GetTimestamp() < extraDeadline && !settled())
            {
                SetPhase(WarmupSlice, 0);
                gate.SignalAndWait();
                gate.SignalAndWait();
            }
        }
        double warmupSeconds = (Stopwatch.GetTimestamp() - warmupStart) / (double)Stopwatch.Frequency;
        foreach (var h in histograms)
        {
            h.Clear();
        }
        // Measured phase.
        beforeMeasure?.Invoke();
        SetPhase(budget.Duration, budget.ByOps ? Math.Max(1, budget.Ops / callers) : 0);
        gate.SignalAndWait();
        gate.SignalAndWait();
        afterMeasure?.Invoke();
        Volatile.Write(ref done, true);
        gate.SignalAndWait();
        foreach (var t in threads)
        {
            t.Join();
        }
        if (failure != null)
        {
            throw failure is BenchFailure ? new BenchFailure(failure.Message) : new BenchFailure($"{failure.GetType().Name}: {failure.Message}");
        }
        var total = new LatencyHistogram();
        long first = long.MaxValue;
        long last = long.MinValue;
        for (int i = 0; i < callers; i++)
        {
            total.Add(histograms[i]);
            first = Math.Min(first, starts[i]);
            last = Math.Max(last, ends[i]);
        }
        return new Measurement
        {
            Steps = steps.Sum(),
            Units = units.Sum(),
            WarmupSeconds = warmupSeconds,
            ElapsedSeconds = (last - first) / (double)Stopwatch.Frequency,
            Latency = total,
        };

        void SetPhase(TimeSpan duration, long ops)
        {
            Volatile.Write(ref perCallerOps, ops);
            Volatile.Write(ref deadline, ops > 0 ? long.MaxValue : Stopwatch.GetTimestamp() + (long)(duration.TotalSeconds * Stopwatch.Frequency));
        }
    }

    private static void RunPhase(CallerWork work, LatencyHistogram histogram, long deadline, long ops, StrongBox<bool> failed,
        out long steps, out long units, out long start, out long end)
    {
        steps = 0;
        units = 0;
        double nsPerTick = 1e9 / Stopwatch.Frequency;
        start = Stopwatch.GetTimestamp();
        long now = start;
        while (now < deadline && (ops == 0 || steps < ops) && !Volatile.Read(ref failed.Value))
        {
            long before = now;
            units += work.Step();
            now = Stopwatch.GetTimestamp();
            histogram.Record((long)((now - before) * nsPerTick));
            steps++;
        }
        end = now;
    }

    private sealed class StrongBox<T>
    {
        public T Value = default!;
    }
}
