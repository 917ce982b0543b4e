using Vhostfsd.Fuzz.Engine;
using Vhostfsd.Fuzz.Targets;
using Xunit;
using Xunit.Abstractions;

namespace Vhostfsd.Fuzz;

/// <summary>Target (d): FUSE requests through a real vhostfsd process over vhost-user.</summary>
[Trait("Category", "Fuzz")]
public sealed class EndToEndFuzzTests
{
    private readonly ITestOutputHelper _output;

    public EndToEndFuzzTests(ITestOutputHelper output)
    {
        _output = output;
    }

    /// <summary>Each configuration is a real daemon started as an operator would: under setpriv in
    /// supplementary groups (the daemon must drop them), with the options that change what a request
    /// may do to the host.</summary>
    [Theory]
    [InlineData("setpriv-groups-xattrmap-security-label")]
    [InlineData("setpriv-groups-posix-acl")]
    [InlineData("readonly-file-handles-mandatory")]
    public void RequestsThroughTheDaemonAreAnsweredAndTheHostChangesOnlyAsTheRequesterMay(string configuration)
    {
        var config = FuzzConfiguration.Named(configuration);
        var budget = FuzzBudget.FromEnvironment(defaultCases: 20_000, defaultDuration: TimeSpan.FromSeconds(12));
        var target = new EndToEndTarget(config);
        FuzzReport report;
        try
        {
            report = FuzzRunner.Run("end-to-end " + config.Name, budget, TimeSpan.FromSeconds(60), target.RunCase);
            string? ended = target.EndSession();
            _output.WriteLine(report.Summary() + $"; daemons started {target.Sessions}, exit codes [{string.Join(',', target.ExitCodes)}]");
            string? minimised = FuzzMinimiser.IfAsked(report, budget, TimeSpan.FromSeconds(60), () =>
            {
                var fresh = new EndToEndTarget(config);
                return (fresh.RunCase, fresh);
            });
            Assert.True(report.FailureCount == 0, report.Details() + (minimised is null ? "" : Environment.NewLine + minimised));
            Assert.Null(ended);
            Assert.Null(target.CheckSentinel());
            Assert.True(report.Cases >= Math.Min(budget.Cases, 100), "too few cases ran: " + report.Summary());
            Assert.True(report.CountOf("ok") > 0, report.Summary());
            Assert.All(target.ExitCodes, code => Assert.Equal(0, code));
        }
        finally
        {
            target.Dispose();
        }
    }
}
