using Xunit;
using Xunit.Abstractions;

// Each test boots a QEMU guest that takes a CPU for ~20 s; running them side by side only
// makes every one of them slower and flakier.
[assembly: CollectionBehavior(DisableTestParallelization = true)]

// QEMU, virtiofsd and the guest image are Linux-only.
[assembly: System.Runtime.Versioning.SupportedOSPlatform("linux")]

namespace Vhostfsd.E2E;

/// <summary>A real Linux guest (Debian's kernel, busybox initramfs) under QEMU 7.2 TCG
/// mounts the share through vhost-user-fs-pci and runs scripts/e2e/guest/suite.sh.
/// The same suite runs against the reference C virtiofsd and against vhostfsd.</summary>
[Collection(RealGuestCollection.Name)]
[Trait("Category", "E2E")]
public sealed class GuestSuiteTests(ITestOutputHelper output)
{
    private static readonly string[] StepsOfEveryRun =
    [
        "modules", "mount", "queues", "ls", "stat", "cat", "write", "mkdir", "mv", "rm", "symlink",
        "chmod", "truncate", "bigfile", "many-files", "umount",
    ];

    [Fact]
    public void ReferenceVirtiofsd_OneQueue_PassesTheSuite() =>
        RunAndCheck(new GuestRunOptions("reference-1q-xattr", DaemonKind.Reference, RequestQueues: 1, Xattr: true));

    [Fact]
    public void Vhostfsd_OneQueue_PassesTheSuite() =>
        RunAndCheck(new GuestRunOptions("vhostfsd-1q", DaemonKind.Vhostfsd, RequestQueues: 1, Xattr: false));

    [Fact]
    public void Vhostfsd_TwoRequestQueues_PassesTheSuite() =>
        RunAndCheck(new GuestRunOptions("vhostfsd-2q", DaemonKind.Vhostfsd, RequestQueues: 2, Xattr: false));

    [Fact]
    public void Vhostfsd_WithXattr_PassesTheSuiteAndXattrs() =>
        RunAndCheck(new GuestRunOptions("vhostfsd-1q-xattr", DaemonKind.Vhostfsd, RequestQueues: 1, Xattr: true));

    [Fact]
    public void Vhostfsd_SocketActivatedWithFd3_PassesTheSuite() =>
        RunAndCheck(new GuestRunOptions("vhostfsd-1q-fd3", DaemonKind.Vhostfsd, RequestQueues: 1, Xattr: false, SocketActivation: true));

    private void RunAndCheck(GuestRunOptions options)
    {
        var run = GuestRun.Execute(options, output);
        var problems = Judge(run);
        if (problems.Count > 0)
        {
            output.WriteLine(run.Transcript());
        }
        else
        {
            foreach (var line in run.Console.Lines)
            {
                if (line.Contains("E2E-", StringComparison.Ordinal))
                {
                    output.WriteLine(line);
                }
            }
        }
        Assert.True(problems.Count == 0,
            $"{options.Name}: {problems.Count} problem(s):\n  - " + string.Join("\n  - ", problems) +
            $"\n(logs: {run.OutDirectory})");
    }

    /// <summary>Every way the run differs from a clean pass.</summary>
    private static List<string> Judge(GuestRun run)
    {
        var problems = new List<string>();
        var console = run.Console;
        var result = run.Result;

        if (result.GetValueOrDefault("daemon_exit") == "early")
        {
            problems.Add($"the daemon exited with status {run.ResultValue("daemon_rc")} before it listened: " +
                LastLines(run.DaemonLogText, 5));
            return problems;
        }
        if (result.GetValueOrDefault("timed_out") == "1")
        {
            problems.Add($"the guest did not power off within {GuestRun.GuestTimeoutSeconds} s; last step reported: {LastStep(console)}");
        }
        if (result.GetValueOrDefault("stalled") == "1")
        {
            problems.Add($"the guest console was silent for {GuestRun.StallSeconds} s (a request never answered?); last step reported: {LastStep(console)}");
        }
        if (result.GetValueOrDefault("daemon_died_first") == "1")
        {
            problems.Add($"the daemon exited (status {run.ResultValue("daemon_rc")}) while the guest was running; last step reported: {LastStep(console)}");
        }
        if (!console.Booted)
        {
            // Nothing ran in the guest: say why QEMU or the daemon stopped, not which steps are absent.
            problems.Add("the guest never reached /init (no E2E-BOOT on the console)");
            problems.Add($"QEMU exited with status {run.ResultValue("qemu_rc")}: {LastLines(run.QemuLogText, 3)}");
            problems.Add($"the daemon ended ({run.ResultValue("daemon_exit")}, status {run.ResultValue("daemon_rc")}): {LastLines(run.DaemonLogText, 5)}");
            return problems;
        }
        foreach (var failure in console.Failures)
        {
            problems.Add("guest step failed: " + failure);
        }
        var expected = new List<string>(StepsOfEveryRun);
        if (run.Options.Xattr)
        {
            expected.Add("xattr");
        }
        foreach (var step in expected)
        {
            if (console.Steps.GetValueOrDefault(step) != "OK")
            {
                problems.Add($"step '{step}' did not report OK ({console.Steps.GetValueOrDefault(step) ?? "absent"})");
            }
        }
        if (!run.Options.Xattr && console.Steps.GetValueOrDefault("xattr") != "SKIP")
        {
            problems.Add("the xattr step ran although the daemon has no xattr support");
        }
        if (console.DoneStatus != 0)
        {
            problems.Add($"the guest script finished with {(console.DoneStatus?.ToString() ?? "no E2E-DONE line")}");
        }
        var queues = console.Info.GetValueOrDefault("request-queues");
        if (queues != run.Options.RequestQueues.ToString(System.Globalization.CultureInfo.InvariantCulture))
        {
            problems.Add($"the guest driver set up {queues ?? "?"} request queue(s), the device has {run.Options.RequestQueues}");
        }
        foreach (var line in console.KernelErrors())
        {
            problems.Add("guest kernel log: " + line);
        }
        foreach (var line in console.KernelCrashLines)
        {
            problems.Add("guest kernel crash text: " + line);
        }
        if (result.GetValueOrDefault("qemu_rc") != "0")
        {
            problems.Add($"QEMU exited with status {run.ResultValue("qemu_rc")}");
        }
        if (result.GetValueOrDefault("daemon_exit") != "self")
        {
            problems.Add($"the daemon did not exit by itself after the guest disconnected ({run.ResultValue("daemon_exit")})");
        }
        else if (result.GetValueOrDefault("daemon_rc") != "0")
        {
            problems.Add($"the daemon exited with status {run.ResultValue("daemon_rc")}");
        }
        foreach (var line in DaemonLog.ErrorLines(run.Options.Daemon, run.DaemonLogText))
        {
            problems.Add("daemon logged an error: " + line);
        }
        if (console.Steps.GetValueOrDefault("mount") == "OK")
        {
            problems.AddRange(HostShare.CheckAfterSuite(run.ShareDirectory, console, run.Options.Xattr));
        }
        return problems;
    }

    private static string LastStep(GuestConsole console)
    {
        for (var i = console.Lines.Count - 1; i >= 0; i--)
        {
            var line = console.Lines[i];
            var at = line.IndexOf("E2E-STEP ", StringComparison.Ordinal);
            if (at < 0)
            {
                at = line.IndexOf("E2E-FAIL ", StringComparison.Ordinal);
            }
            if (at >= 0)
            {
                return line[at..];
            }
        }
        return console.Booted ? "none (booted)" : "none (not booted)";
    }

    private static string LastLines(string text, int n)
    {
        var lines = text.TrimEnd().Split('\n');
        return string.Join(" | ", lines[Math.Max(0, lines.Length - n)..]);
    }
}

/// <summary>The real-guest tests share one xunit collection so they never overlap.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class RealGuestCollection
{
    public const string Name = "Real guest under QEMU";
}
