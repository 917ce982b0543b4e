using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Text;

namespace Vhostfsd.Fuzz.Engine;

/// <summary>One oracle violation, with what is needed to replay it (FUZZ_SEED + FUZZ_CASE).</summary>
public sealed record FuzzFailure(string Target, long CaseIndex, ulong RunSeed, string Seed, string Mutations, string Problem)
{
    public override string ToString() =>
        $"{Target} case {CaseIndex} (replay: FUZZ_SEED={RunSeed} FUZZ_CASE={CaseIndex}) seed {Seed} [{Mutations}]: {Problem}";
}

/// <summary>Counts cases and their outcomes for one target, and keeps the failures.</summary>
public sealed class FuzzReport
{
    private const int KeptFailures = 25;
    private readonly ConcurrentDictionary<string, long> _outcomes = new();
    private readonly ConcurrentQueue<FuzzFailure> _failures = new();
    private readonly Stopwatch _clock = Stopwatch.StartNew();
    private long _failureCount;
    private long _cases;

    public FuzzReport(string target, ulong runSeed)
    {
        Target = target;
        RunSeed = runSeed;
    }

    public string Target { get; }
    public ulong RunSeed { get; }
    public long Cases => Interlocked.Read(ref _cases);
    public long FailureCount => Interlocked.Read(ref _failureCount);
    public IReadOnlyCollection<FuzzFailure> Failures => _failures;
    public IReadOnlyDictionary<string, long> Outcomes => _outcomes;
    public TimeSpan Elapsed { get; private set; }

    /// <summary>Set when a case overran its deadline: the run stopped there.</summary>
    public bool Hung { get; internal set; }

    internal void CaseDone() => Interlocked.Increment(ref _cases);

    public void Count(string outcome, long n = 1) => _outcomes.AddOrUpdate(outcome, n, (_, v) => v + n);

    public long CountOf(string outcome) => _outcomes.TryGetValue(outcome, out long v) ? v : 0;

    public void Fail(long caseIndex, string seed, string mutations, string problem)
    {
        Interlocked.Increment(ref _failureCount);
        Count("FAILURE");
        if (_failures.Count < KeptFailures)
        {
            _failures.Enqueue(new FuzzFailure(Target, caseIndex, RunSeed, seed, mutations, problem));
        }
    }

    internal void Stop() => Elapsed = _clock.Elapsed;

    /// <summary>"target: N cases in T s (R/s), seed S; outcome=count ...; F failures".</summary>
    public string Summary()
    {
        var sb = new StringBuilder();
        double seconds = Math.Max(Elapsed.TotalSeconds, 0.001);
        sb.Append(CultureInfo.InvariantCulture, $"{Target}: {Cases} cases in {seconds:F1} s ({Cases / seconds:F0}/s), seed {RunSeed}; ");
        var keys = new List<string>(_outcomes.Keys);
        keys.Sort(StringComparer.Ordinal);
        foreach (string key in keys)
        {
            sb.Append(CultureInfo.InvariantCulture, $"{key}={_outcomes[key]} ");
        }
        sb.Append(CultureInfo.InvariantCulture, $"; {FailureCount} failure(s)");
        if (Hung)
        {
            sb.Append(" (HUNG)");
        }
        return sb.ToString();
    }

    /// <summary>The summary plus every kept failure, for an assertion message.</summary>
    public string Details()
    {
        var sb = new StringBuilder(Summary());
        foreach (var f in _failures)
        {
            sb.AppendLine().Append("  ").Append(f);
        }
        return sb.ToString();
    }
}
