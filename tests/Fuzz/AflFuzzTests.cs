using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using Vhostfsd.AflTargets;
using Xunit;
using Xunit.Abstractions;

namespace Vhostfsd.Fuzz;

/// <summary>The coverage-guided targets (tests/AflTargets): every input of their checked-in corpora and
/// every input that once crashed one (tests/AflTargets/regressions) runs clean, in this process, on
/// the uninstrumented build; and each target runs under afl-fuzz for a short budget (AFL_SECONDS,
/// 20 s by default; <c>make fuzz-afl</c> for longer), finding no crash and reaching at least the
/// coverage it reached when its budget was set.</summary>
[Trait("Category", "Fuzz")]
public sealed partial class AflFuzzTests
{
    private readonly ITestOutputHelper _output;

    public AflFuzzTests(ITestOutputHelper output)
    {
        _output = output;
    }

    public static TheoryData<string> Targets => new(AflTarget.All.Select(t => t.Name));

    [Theory]
    [MemberData(nameof(Targets))]
    public void TheCorpusAndEveryPastCrashRunClean(string target)
    {
        var chosen = AflTarget.Named(target);
        int inputs = 0;
        foreach (string kind in new[] { "corpus", "regressions" })
        {
            string dir = Path.Combine(RepositoryRoot(), "tests", "AflTargets", kind, target);
            if (!Directory.Exists(dir))
            {
                continue;
            }
            foreach (string file in Directory.GetFiles(dir).Order(StringComparer.Ordinal))
            {
                chosen.Run(File.ReadAllBytes(file));
                inputs++;
            }
        }
        Assert.True(inputs >= 3, $"{target}: only {inputs} checked-in inputs");
    }

    /// <summary>Edges each target reached in a 20-second run on this machine, with room for a slow run:
    /// far below means the instrumentation or the harness lost most of the code.</summary>
    private static readonly Dictionary<string, int> EdgeFloor = new()
    {
        ["fuse-request"] = 600,
        ["descriptor-chain"] = 150,
        ["vhost-user"] = 350,
        ["xattrmap"] = 100,
    };

    [Theory]
    [MemberData(nameof(Targets))]
    public void UnderAflFuzzNoInputCrashesTheTarget(string target)
    {
        int seconds = int.TryParse(Environment.GetEnvironmentVariable("AFL_SECONDS"), NumberStyles.Integer, CultureInfo.InvariantCulture, out int s) && s > 0 ? s : 20;
        string root = RepositoryRoot();
        var start = new ProcessStartInfo(Path.Combine(root, "scripts", "fuzz-afl.sh"), [target, seconds.ToString(CultureInfo.InvariantCulture)])
        {
            WorkingDirectory = root,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        // The test run built everything already; the configuration is this assembly's.
        start.Environment["AFL_NO_BUILD"] = "1";
        start.Environment["CONFIG"] = Path.GetFileName(Path.GetDirectoryName(AppContext.BaseDirectory.TrimEnd('/'))!);
        using var process = Process.Start(start)!;
        var stderr = process.StandardError.ReadToEndAsync();
        string stdout = process.StandardOutput.ReadToEnd();
        Assert.True(process.WaitForExit(TimeSpan.FromSeconds(seconds * 3 + 180)), "afl-fuzz did not finish");
        string output = stdout + stderr.Result;
        _output.WriteLine(output);
        Assert.True(process.ExitCode == 0, $"fuzz-afl {target} failed (exit {process.ExitCode}):\n{output}");
        var match = Summary().Match(output);
        Assert.True(match.Success, "no summary line:\n" + output);
        long execs = long.Parse(match.Groups["execs"].Value, CultureInfo.InvariantCulture);
        int edges = int.Parse(match.Groups["edges"].Value, CultureInfo.InvariantCulture);
        Assert.True(execs > 1000, $"only {execs} executions: {match.Value}");
        Assert.True(edges >= EdgeFloor[target], $"{target} reached {edges} edges, below its floor of {EdgeFloor[target]}: {match.Value}");
    }

    [GeneratedRegex(@"afl (?<target>\S+): (?<execs>\d+) execs in .*edges (?<edges>\d+) .*crashes 0, hangs \d+")]
    private static partial Regex Summary();

    private static string RepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "scripts", "fuzz-afl.sh")))
            {
                return dir.FullName;
            }
        }
        throw new InvalidOperationException("the repository root (with scripts/fuzz-afl.sh) is not above " + AppContext.BaseDirectory);
    }
}
