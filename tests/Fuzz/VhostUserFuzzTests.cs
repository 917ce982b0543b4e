using Vhostfsd.Fuzz.Engine;
using Vhostfsd.Fuzz.Targets;
using Xunit;
using Xunit.Abstractions;

namespace Vhostfsd.Fuzz;

/// <summary>Target (a): vhost-user message sequences against the back-end over a socketpair.</summary>
[Trait("Category", "Fuzz")]
public sealed class VhostUserFuzzTests
{
    private readonly ITestOutputHelper _output;

    public VhostUserFuzzTests(ITestOutputHelper output)
    {
        _output = output;
    }

    [Fact]
    public void MutatedSessionsEndCleanlyWithoutLeaks()
    {
        var budget = FuzzBudget.FromEnvironment(defaultCases: 3000, defaultDuration: TimeSpan.FromSeconds(25));
        ProcessFds.Snapshot();
        var target = new VhostUserTarget();
        var report = FuzzRunner.Run("vhost-user", budget, TimeSpan.FromSeconds(40), target.RunCase);
        _output.WriteLine(report.Summary());
        string? minimised = FuzzMinimiser.IfAsked(report, budget, TimeSpan.FromSeconds(40), () =>
        {
            var fresh = new VhostUserTarget();
            return (fresh.RunCase, new NothingToDispose());
        });
        Assert.True(report.FailureCount == 0, report.Details() + (minimised is null ? "" : Environment.NewLine + minimised));
        Assert.True(report.Cases >= Math.Min(budget.Cases, 50), "too few cases ran: " + report.Summary());
        if (budget.OnlyCase is null)
        {
            // The run reached working rings, refused sessions and both ways a session ends.
            Assert.True(report.CountOf("ring-answered") > 0, report.Summary());
            Assert.True(report.CountOf("session:protocol-error") > 0 && report.CountOf("session:disconnected") > 0, report.Summary());
        }
    }
}

/// <summary>For a target that holds nothing beyond its cases.</summary>
internal sealed class NothingToDispose : IDisposable
{
    public void Dispose()
    {
    }
}
