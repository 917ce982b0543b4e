using System.Globalization;

namespace Vhostfsd.Fuzz.Engine;

/// <summary>How much to run. CI runs the defaults each test passes in; by hand, environment variables
/// scale it: FUZZ_CASES (cases per target), FUZZ_SECONDS (time cap per target), FUZZ_SEED (run seed),
/// FUZZ_CASE (replay only that case index), FUZZ_FROM (with FUZZ_CASE: replay the cases from this index
/// up to it, for a target whose cases build on the state the earlier ones left; 0 replays the run
/// exactly), FUZZ_SKIP (with FUZZ_CASE: mutations of that case to leave out, "0,2"),
/// FUZZ_MINIMISE=1 (with FUZZ_CASE: shrink a failing case to the fewest mutations that still fail),
/// FUZZ_REPORT (a file the summaries are appended to).</summary>
public readonly record struct FuzzBudget(long Cases, TimeSpan MaxDuration, ulong RunSeed, long? OnlyCase)
{
    /// <summary>With <see cref="OnlyCase"/>: the first case to run (the ones before it rebuild the target's state).</summary>
    public long? From { get; init; }

    /// <summary>Indices of the mutations the replayed case leaves out.</summary>
    public IReadOnlySet<int> Skip { get; init; } = new HashSet<int>();

    /// <summary>Minimise the replayed case if it fails.</summary>
    public bool Minimise { get; init; }

    /// <summary>Cases that run even past <see cref="MaxDuration"/>: a test whose check needs the seed's
    /// early cases (a kind of request that first succeeds at a known index) stays true on a slow machine.</summary>
    public long MinCases { get; init; }

    public const ulong DefaultSeed = 0x5EED_F5_2025;

    public static FuzzBudget FromEnvironment(long defaultCases, TimeSpan defaultDuration)
    {
        long cases = long.TryParse(Environment.GetEnvironmentVariable("FUZZ_CASES"), NumberStyles.Integer, CultureInfo.InvariantCulture, out long c) && c > 0
            ? c : defaultCases;
        TimeSpan duration = double.TryParse(Environment.GetEnvironmentVariable("FUZZ_SECONDS"), NumberStyles.Float, CultureInfo.InvariantCulture, out double s) && s > 0
            ? TimeSpan.FromSeconds(s)
            : Environment.GetEnvironmentVariable("FUZZ_CASES") is not null ? TimeSpan.FromDays(1) : defaultDuration;
        ulong seed = ulong.TryParse(Environment.GetEnvironmentVariable("FUZZ_SEED"), NumberStyles.Integer, CultureInfo.InvariantCulture, out ulong sd)
            ? sd : DefaultSeed;
        long? only = long.TryParse(Environment.GetEnvironmentVariable("FUZZ_CASE"), NumberStyles.Integer, CultureInfo.InvariantCulture, out long oc) ? oc : null;
        var skip = new HashSet<int>();
        foreach (string item in (Environment.GetEnvironmentVariable("FUZZ_SKIP") ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            skip.Add(int.Parse(item, CultureInfo.InvariantCulture));
        }
        // A replay runs one case, so the tests' "enough cases ran" checks ask for one.
        long? from = long.TryParse(Environment.GetEnvironmentVariable("FUZZ_FROM"), NumberStyles.Integer, CultureInfo.InvariantCulture, out long f) && only is long o && f >= 0 && f <= o
            ? f : null;
        return new FuzzBudget(only is null ? cases : 1, duration, seed, only)
        {
            From = from,
            Skip = only is null ? new HashSet<int>() : skip,
            Minimise = only is not null && Environment.GetEnvironmentVariable("FUZZ_MINIMISE") is "1" or "true",
        };
    }
}

/// <summary>Runs a target's cases on a dedicated thread under a watchdog: each case has a deadline;
/// a case that overruns it is reported as a hang and ends the run (its thread is left behind).</summary>
public static class FuzzRunner
{
    /// <param name="body">Runs one case with its own generator; records outcomes and failures through the
    /// <see cref="FuzzCase"/>. An exception escaping it is a failure of the case.</param>
    public static FuzzReport Run(string target, FuzzBudget budget, TimeSpan caseDeadline, Action<FuzzCase> body) =>
        Run(target, budget, caseDeadline, body, record: true);

    private static FuzzReport Run(string target, FuzzBudget budget, TimeSpan caseDeadline, Action<FuzzCase> body, bool record)
    {
        var report = new FuzzReport(target, budget.RunSeed);
        FuzzCase? current = null;
        long caseStarted = Environment.TickCount64;
        var done = new ManualResetEventSlim();
        var deadline = DateTime.UtcNow + budget.MaxDuration;
        var thread = new Thread(() =>
        {
            try
            {
                long first = budget.From ?? budget.OnlyCase ?? 0;
                long last = budget.OnlyCase is long o ? o + 1 : budget.Cases;
                for (long i = first; i < last && (i < budget.MinCases || DateTime.UtcNow < deadline); i++)
                {
                    var fuzzCase = new FuzzCase(i, new FuzzRng(FuzzRng.CaseSeed(budget.RunSeed, i)), report)
                    {
                        Skip = i == budget.OnlyCase ? budget.Skip : new HashSet<int>(),
                    };
                    Volatile.Write(ref caseStarted, Environment.TickCount64);
                    Volatile.Write(ref current, fuzzCase);
                    try
                    {
                        body(fuzzCase);
                    }
                    catch (Exception e)
                    {
                        fuzzCase.Fail("the case threw " + e);
                    }
                    report.CaseDone();
                    if (report.FailureCount >= 25)
                    {
                        break;
                    }
                }
            }
            finally
            {
                done.Set();
            }
        })
        { IsBackground = true, Name = "fuzz-" + target };
        thread.Start();
        while (!done.Wait(100))
        {
            long started = Volatile.Read(ref caseStarted);
            if (Environment.TickCount64 - started > (long)caseDeadline.TotalMilliseconds)
            {
                report.Hung = true;
                var hung = Volatile.Read(ref current);
                report.Fail(hung?.Index ?? -1, hung?.SeedName ?? "?", hung?.MutationText ?? "?", $"no answer within the case deadline of {caseDeadline.TotalSeconds:F0} s (hang)");
                break;
            }
        }
        report.Stop();
        if (record)
        {
            Record(report.Summary());
        }
        return report;
    }

    /// <summary>As <see cref="Run"/>, without a line in FUZZ_REPORT (a minimisation's attempts).</summary>
    internal static FuzzReport RunQuietly(string target, FuzzBudget budget, TimeSpan caseDeadline, Action<FuzzCase> body) =>
        Run(target, budget, caseDeadline, body, record: false);

    /// <summary>Appends a line to FUZZ_REPORT, when set.</summary>
    public static void Record(string line)
    {
        string? file = Environment.GetEnvironmentVariable("FUZZ_REPORT");
        if (!string.IsNullOrEmpty(file))
        {
            File.AppendAllText(file, line + Environment.NewLine);
        }
    }
}

/// <summary>One case: its index, generator, the seed it started from and the mutations applied
/// (for the failure report), and the report it counts into.</summary>
public sealed class FuzzCase
{
    public FuzzCase(long index, FuzzRng rng, FuzzReport report)
    {
        Index = index;
        Rng = rng;
        Report = report;
    }

    public long Index { get; }
    public FuzzRng Rng { get; }
    public FuzzReport Report { get; }

    /// <summary>Mutations (by their index within the case) to leave out.</summary>
    public IReadOnlySet<int> Skip { get; init; } = new HashSet<int>();

    /// <summary>Mutations drawn so far (skipped ones included): the next one's index.</summary>
    public int MutationCount { get; set; }

    /// <summary>The bytes the case sent (a target sets it), shown by a minimisation.</summary>
    public byte[]? Input { get; set; }

    /// <summary>Name of the seed (or seeds) the case was built from.</summary>
    public string SeedName { get; set; } = "?";

    /// <summary>Mutations applied, appended by the mutator.</summary>
    public List<string> Mutations { get; } = new();

    public string MutationText
    {
        get
        {
            lock (Mutations)
            {
                return string.Join(' ', Mutations);
            }
        }
    }

    public void Count(string outcome) => Report.Count(outcome);

    public void Fail(string problem) => Report.Fail(Index, SeedName, MutationText, problem);
}

/// <summary>Shrinks a failing case: replays it, each time on a fresh target, leaving out one mutation
/// after another and keeping out every one whose absence still fails, until none can go (the seed
/// alone, unmutated, when that fails already). The result names the FUZZ_SKIP that replays it.</summary>
public static class FuzzMinimiser
{
    /// <summary>After a replay (FUZZ_CASE) that failed, with FUZZ_MINIMISE=1: the minimisation, also
    /// written to FUZZ_REPORT; otherwise null.</summary>
    public static string? IfAsked(FuzzReport report, FuzzBudget budget, TimeSpan caseDeadline, Func<(Action<FuzzCase> Body, IDisposable Owner)> fresh)
    {
        if (!budget.Minimise || report.FailureCount == 0)
        {
            return null;
        }
        string result = Minimise(report.Target, budget, caseDeadline, fresh);
        FuzzRunner.Record(result);
        return result;
    }

    /// <param name="fresh">Makes a new target: its case body and what to dispose afterwards.</param>
    public static string Minimise(string target, FuzzBudget budget, TimeSpan caseDeadline, Func<(Action<FuzzCase> Body, IDisposable Owner)> fresh)
    {
        long index = budget.OnlyCase ?? throw new ArgumentException("minimising needs FUZZ_CASE", nameof(budget));
        var skip = new HashSet<int>(budget.Skip);
        var first = Attempt(target, budget, caseDeadline, fresh, skip);
        if (!Fails(first.Report, index))
        {
            return $"{target} case {index} does not fail when replayed {(budget.From is long from ? $"from case {from}" : "alone")} on a fresh target: nothing to minimise"
                + (budget.From is null ? " (FUZZ_FROM=0 replays the cases before it too)" : "");
        }
        int count = first.Mutations;
        var best = first;
        var all = new HashSet<int>(Enumerable.Range(0, count));
        var unmutated = Attempt(target, budget, caseDeadline, fresh, all);
        if (Fails(unmutated.Report, index))
        {
            skip = all;
            best = unmutated;
        }
        else
        {
            for (int i = 0; i < count; i++)
            {
                if (skip.Contains(i))
                {
                    continue;
                }
                var trial = new HashSet<int>(skip) { i };
                var attempt = Attempt(target, budget, caseDeadline, fresh, trial);
                if (Fails(attempt.Report, index))
                {
                    skip = trial;
                    best = attempt;
                }
            }
        }
        var failure = best.Report.Failures.First(f => f.CaseIndex == index);
        string skipText = string.Join(',', skip.Order());
        string input = best.Input is { } bytes ? Convert.ToHexString(bytes.AsSpan(0, Math.Min(bytes.Length, 4096))) + (bytes.Length > 4096 ? "..." : "") : "?";
        return $"{target} case {index} minimised to {count - skip.Count} of {count} mutation(s) " +
            $"(replay: FUZZ_SEED={budget.RunSeed} FUZZ_CASE={index}{(budget.From is long start ? " FUZZ_FROM=" + start : "")}{(skip.Count > 0 ? " FUZZ_SKIP=" + skipText : "")}): " +
            $"seed {failure.Seed} [{failure.Mutations}]: {failure.Problem}{Environment.NewLine}  input ({best.Input?.Length ?? 0} bytes): {input}";
    }

    private static bool Fails(FuzzReport report, long index) => report.Failures.Any(f => f.CaseIndex == index);

    private static (FuzzReport Report, int Mutations, byte[]? Input) Attempt(string target, FuzzBudget budget, TimeSpan caseDeadline,
        Func<(Action<FuzzCase> Body, IDisposable Owner)> fresh, HashSet<int> skip)
    {
        var (body, owner) = fresh();
        int mutations = 0;
        byte[]? input = null;
        try
        {
            var report = FuzzRunner.RunQuietly(target, budget with { Skip = skip, Minimise = false }, caseDeadline, c =>
            {
                try
                {
                    body(c);
                }
                finally
                {
                    if (c.Index == budget.OnlyCase)
                    {
                        mutations = c.MutationCount;
                        input = c.Input;
                    }
                }
            });
            return (report, mutations, input);
        }
        finally
        {
            owner.Dispose();
        }
    }
}
