using System.Globalization;

namespace Vhostfsd.Fuzz.Engine;

/// <summary>How much to run. CI runs the defaults each test passes in; by hand, environment variables
/// scale it: FUZZ_CASES (cases per target), FUZZ_SECONDS (time cap per target), FUZZ_SEED (run seed),
/// FUZZ_CASE (replay only that case index), FUZZ_REPORT (a file the summaries are appended to).</summary>
public readonly record struct FuzzBudget(long Cases, TimeSpan MaxDuration, ulong RunSeed, long? OnlyCase)
{
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
        // A replay runs one case, so the tests' "enough cases ran" checks ask for one.
        return new FuzzBudget(only is null ? cases : 1, duration, seed, only);
    }
}

/// <summary>Runs a target's cases on a dedicated thread under a watchdog: each case has a deadline;
/// a case that overruns it is reported as a hang and ends the run (its thread is left behind).</summary>
public static class FuzzRunner
{
    /// <param name="body">Runs one case with its own generator; records outcomes and failures through the
    /// <see cref="FuzzCase"/>. An exception escaping it is a failure of the case.</param>
    public static FuzzReport Run(string target, FuzzBudget budget, TimeSpan caseDeadline, Action<FuzzCase> body)
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
                long first = budget.OnlyCase ?? 0;
                long last = budget.OnlyCase is long o ? o + 1 : budget.Cases;
                for (long i = first; i < last && DateTime.UtcNow < deadline; i++)
                {
                    var fuzzCase = new FuzzCase(i, new FuzzRng(FuzzRng.CaseSeed(budget.RunSeed, i)), report);
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
        string? file = Environment.GetEnvironmentVariable("FUZZ_REPORT");
        if (!string.IsNullOrEmpty(file))
        {
            File.AppendAllText(file, report.Summary() + Environment.NewLine);
        }
        return report;
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
