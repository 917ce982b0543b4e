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
    public long Units { get; init; }
    public double ElapsedSeconds { get; init; }
    public required LatencyHistogram Latency { get; init; }
}

/// <summary>Runs N caller threads over a workload: each thread creates its <see cref="CallerWork"/> (so queue
/// selection and per-thread pools are the thread's own for the whole cell), then a warm-up phase and a measured
/// phase start on a barrier. Each step is timed; the measured phase's elapsed time runs from the first caller's
/// start to the last caller's end.</summary>
public static class CallerRunner
{
    public static Measurement Run(int callers, Func<int, CallerWork> create, Budget budget, Action? beforeMeasure = null, Action? afterMeasure = null)
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
                for (int phase = 0; phase < 2; phase++)
                {
                    gate.SignalAndWait();
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
        // Warm-up.
        SetPhase(budget.Warmup, budget.ByOps ? Math.Max(1, budget.Ops / 10 / callers) : 0);
        gate.SignalAndWait();
        gate.SignalAndWait();
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
