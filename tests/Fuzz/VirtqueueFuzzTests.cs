using Vhostfsd.Fuzz.Engine;
using Vhostfsd.Fuzz.Targets;
using Vhostfsd.Virtqueue;
using Xunit;
using Xunit.Abstractions;

namespace Vhostfsd.Fuzz;

/// <summary>Target (b): descriptor chains against the device queue, checked against an independent model.</summary>
[Trait("Category", "Fuzz")]
public sealed class VirtqueueFuzzTests
{
    private readonly ITestOutputHelper _output;

    public VirtqueueFuzzTests(ITestOutputHelper output)
    {
        _output = output;
    }

    [Fact]
    public void DescriptorChainsMatchTheModelAndStayInsideGuestMemory()
    {
        var budget = FuzzBudget.FromEnvironment(defaultCases: 30_000, defaultDuration: TimeSpan.FromSeconds(25));
        using var target = new VirtqueueTarget();
        var report = FuzzRunner.Run("virtqueue", budget, TimeSpan.FromSeconds(10), target.RunCase);
        _output.WriteLine(report.Summary());
        string? minimised = FuzzMinimiser.IfAsked(report, budget, TimeSpan.FromSeconds(10), () =>
        {
            var fresh = new VirtqueueTarget();
            return (fresh.RunCase, fresh);
        });
        Assert.True(report.FailureCount == 0, report.Details() + (minimised is null ? "" : Environment.NewLine + minimised));
        Assert.True(report.Cases >= Math.Min(budget.Cases, 200), $"only {report.Cases} cases ran: " + report.Summary());
        // The run reached well-formed chains, the racing mode and every way a chain can be refused.
        Assert.True(report.CountOf("popped") > 0 && report.CountOf("race-popped") + report.CountOf("race-refused") > 0, report.Summary());
        if (budget.OnlyCase is null)
        {
            foreach (ChainError error in Enum.GetValues<ChainError>())
            {
                if (error != ChainError.None)
                {
                    Assert.True(report.CountOf("refused:" + error) > 0, $"no case was refused with {error}: " + report.Summary());
                }
            }
        }
    }
}
