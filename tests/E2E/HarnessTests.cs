using Xunit;

namespace Vhostfsd.E2E;

/// <summary>The parts of the harness that judge a run, checked without booting anything
/// (no E2E trait: these run in `make test-unit` too).</summary>
public sealed class HarnessTests
{
    private const string PassingConsole =
        "\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS (version 1.16.2)\r\n" +
        "Booting from ROM..\x1bc\x1b[?7l\x1b[2J\r\n" +
        "E2E-BOOT kernel 6.1.0-56-amd64 uptime 3.79s\r\n" +
        "E2E-STEP modules OK\r\n" +
        "E2E-STEP mount OK (0.05s)\r\n" +
        "E2E-INFO request-queues 2\r\n" +
        "E2E-MD5 big.bin aa5450958da7a4f27c1eae6146ac972c\r\n" +
        "E2E-STEP xattr SKIP (the daemon runs without xattr support)\r\n" +
        "E2E-DMESG 6 [    4.259485] fuse: init (API version 7.38)\r\n" +
        "E2E-DMESG 5 [    4.296942] virtiofs virtio0: virtio_fs_setup_dax: No cache capability\r\n" +
        "E2E-DONE rc=0 uptime 15.95s\r\n" +
        "[   11.131495] reboot: Power down\r\n";

    [Fact]
    public void Console_ParsesMarkersBehindTerminalEscapes()
    {
        var console = GuestConsole.Parse(PassingConsole);

        Assert.True(console.Booted);
        Assert.Equal("OK", console.Steps["modules"]);
        Assert.Equal("OK", console.Steps["mount"]);
        Assert.Equal("SKIP", console.Steps["xattr"]);
        Assert.Equal("2", console.Info["request-queues"]);
        Assert.Equal("aa5450958da7a4f27c1eae6146ac972c", console.Md5["big.bin"]);
        Assert.Equal(0, console.DoneStatus);
        Assert.Empty(console.Failures);
        Assert.Equal(2, console.KernelLog.Count);
        Assert.Empty(console.KernelErrors());
        Assert.Empty(console.KernelCrashLines);
        Assert.DoesNotContain(console.Lines, l => l.Contains('\x1b') || l.Contains('\r'));
    }

    [Fact]
    public void Console_ReportsFailuresKernelErrorsAndCrashes()
    {
        var console = GuestConsole.Parse(
            "E2E-BOOT kernel x\n" +
            "E2E-FAIL mv source still exists after mv\n" +
            "E2E-DMESG 3 [    5.1] virtio-fs: virtio_fs_enqueue_req failed\n" +
            "E2E-DMESG 4 [    5.2] WARNING: CPU: 0 PID: 1 at fs/fuse/dev.c:100\n" +
            "[    6.0] BUG: kernel NULL pointer dereference, address: 0000000000000000\n" +
            "E2E-DONE rc=1 uptime 9s\n");

        Assert.Equal(["mv source still exists after mv"], console.Failures);
        Assert.Equal(1, console.DoneStatus);
        Assert.Equal(2, console.KernelErrors().Count());
        Assert.Contains(console.KernelCrashLines, l => l.Contains("NULL pointer", StringComparison.Ordinal));
        Assert.False(console.Steps.ContainsKey("mv"));
    }

    [Fact]
    public void Console_WithoutDoneLine_HasNoStatus()
    {
        var console = GuestConsole.Parse("E2E-BOOT kernel x\nE2E-STEP mount OK\n");
        Assert.Null(console.DoneStatus);
    }

    [Fact]
    public void ReferenceLog_OnlyTheDisconnectLineIsBenign()
    {
        var errors = DaemonLog.ErrorLines(DaemonKind.Reference,
            "virtio_loop: Unexpected poll revents 11\n" +
            "fv_queue_thread: Invalid request\n" +
            "Listening on /tmp/x/vfs.sock as 3.\n" +
            "Communication attempt on fd 3.\n" +
            "Execing /usr/lib/qemu/virtiofsd (/usr/lib/qemu/virtiofsd --fd=3)\n");
        Assert.Equal(["fv_queue_thread: Invalid request"], errors);
        Assert.Empty(DaemonLog.ErrorLines(DaemonKind.Reference, "virtio_loop: Unexpected poll revents 11\n\n"));
    }

    [Theory]
    [InlineData("[12:00:01 ERR] queue 1: descriptor loop", true)]
    [InlineData("[2026-01-01 12:00:01.123 +00:00 FTL] cannot map memory", true)]
    [InlineData("[2026-01-01T12:00:01.123+00:00 ERR] queue 1 broken", true)]
    [InlineData("2026-01-01 12:00:01.123 +00:00 [ERR] cannot map memory", true)]
    [InlineData("Unhandled exception. System.InvalidOperationException: boom", true)]
    [InlineData("[12:00:01 INF] listening on /tmp/vfs.sock", false)]
    [InlineData("[12:00:01 WRN] guest asked for ERR] in a name", false)]
    [InlineData("[12:00:01 INF] name [x ERR] from the guest", false)]
    [InlineData("[12:00:01 DBG] LOOKUP returned error -2", false)]
    public void VhostfsdLog_ErrorAndFatalLevelsCount(string line, bool isError)
    {
        Assert.Equal(isError, DaemonLog.ErrorLines(DaemonKind.Vhostfsd, line + "\n").Count == 1);
    }
}
