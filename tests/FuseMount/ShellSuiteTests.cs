using System.Diagnostics;
using Vhostfsd.E2E;
using Xunit.Abstractions;

namespace Vhostfsd.FuseMount.Tests;

/// <summary>The real-guest suite (scripts/e2e/guest/suite.sh), run on the host against a --fuse-mount
/// mount point with E2E_TRANSPORT=fuse, and the same checks of what it leaves in the share as after
/// a guest run (tests/E2E).</summary>
public sealed class ShellSuiteTests(ITestOutputHelper output)
{
    private static readonly string[] Passed =
        ["mount", "ls", "stat", "cat", "write", "mkdir", "mv", "rm", "symlink", "chmod", "truncate", "bigfile", "many-files", "xattr"];

    [Fact]
    public void The_guest_suite_passes_on_the_host_mount()
    {
        using var m = MountedShare.Start(["--xattr"], HostShare.Prepare);
        var start = new ProcessStartInfo("/bin/sh") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        // Markers a step prints for the host go to fd 3, which the step's own capture leaves alone.
        start.ArgumentList.Add("-c");
        start.ArgumentList.Add("exec 3>&1; exec /bin/sh \"$0\"");
        start.ArgumentList.Add(Path.Combine(RepositoryLayout.Root, "scripts", "e2e", "guest", "suite.sh"));
        start.Environment["E2E_TRANSPORT"] = "fuse";
        start.Environment["E2E_MOUNT"] = m.MountPoint;
        start.Environment["E2E_XATTR"] = "1";
        start.Environment["E2E_CONSOLE"] = "/dev/fd/3";
        using var suite = Process.Start(start)!;
        var stderr = suite.StandardError.ReadToEndAsync();
        string stdout = suite.StandardOutput.ReadToEnd();
        Assert.True(suite.WaitForExit(300_000), "the suite did not finish in 5 minutes");
        output.WriteLine(stdout);
        output.WriteLine(stderr.Result);

        var console = GuestConsole.Parse(stdout);
        Assert.Empty(console.Failures);
        foreach (string step in Passed)
        {
            Assert.True(console.Steps.GetValueOrDefault(step) == "OK", $"step {step}: {console.Steps.GetValueOrDefault(step) ?? "absent"}");
        }
        Assert.Equal(0, suite.ExitCode);
        Assert.Empty(HostShare.CheckAfterSuite(m.Share, console, xattr: true));
        Assert.Equal(0, m.Stop());
    }
}
