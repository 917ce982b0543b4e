using System.Globalization;
using System.Text.RegularExpressions;
using System.Text;
using Vhostfsd.Logging;
using Vhostfsd.Posix;

namespace Vhostfsd.Tests;

public class LoggingTests
{
    private static string[] Args(TempTree tree, params string[] extra) =>
        ["--socket-path", tree.Socket, "--shared-dir", tree.Share, "--sandbox=none", .. extra];

    private static string RunUntilListening(TempTree tree, IReadOnlyDictionary<string, string?>? environment, params string[] extra)
    {
        using var daemon = DaemonProcess.Start(Args(tree, extra), environment);
        // Wait for the socket rather than a log line: some levels log nothing.
        var deadline = DateTime.UtcNow + DaemonProcess.Timeout;
        while (!File.Exists(tree.PidFile) || !File.Exists(tree.Socket))
        {
            Assert.True(DateTime.UtcNow < deadline && !daemon.HasExited, "the daemon did not start:\n" + daemon.Stderr);
            Thread.Sleep(20);
        }
        Thread.Sleep(300);
        daemon.Signal(Libc.SIGTERM);
        Assert.Equal(0, daemon.WaitForExit());
        return daemon.Stderr;
    }

    [Fact]
    public void Info_is_the_default_and_lines_have_a_timestamp_and_level()
    {
        using var tree = new TempTree();
        string stderr = RunUntilListening(tree, null);
        Assert.Matches(@"^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d INF\] Listening on ", stderr.Split('\n').First(l => l.Contains("Listening")));
        Assert.DoesNotContain("DBG]", stderr);
    }

    [Theory]
    [InlineData("--log-level=error")]
    [InlineData("--log-level=off")]
    [InlineData("-o", "log_level=err")]
    public void Quiet_levels_drop_info(params string[] level)
    {
        using var tree = new TempTree();
        string stderr = RunUntilListening(tree, null, level);
        Assert.DoesNotContain("INF]", stderr);
        Assert.DoesNotContain("WRN]", stderr);
    }

    [Theory]
    [InlineData("-d")]
    [InlineData("--log-level=debug")]
    [InlineData("--log-level=trace")]
    public void Verbose_levels_add_debug(params string[] level)
    {
        using var tree = new TempTree();
        string stderr = RunUntilListening(tree, null, level);
        Assert.Contains("DBG]", stderr);
    }

    [Fact]
    public void Rust_log_overrides_the_command_line_as_with_virtiofsd()
    {
        using var tree = new TempTree();
        string stderr = RunUntilListening(tree, new Dictionary<string, string?> { ["RUST_LOG"] = "error" }, "--log-level=debug");
        Assert.DoesNotContain("INF]", stderr);
        Assert.DoesNotContain("DBG]", stderr);
    }

    [Fact]
    public unsafe void Syslog_sends_rfc3164_datagrams()
    {
        using var tree = new TempTree();
        string logPath = Path.Combine(tree.Root, "log");
        int fd = Libc.Socket(Libc.AF_UNIX, Libc.SOCK_DGRAM | Libc.SOCK_CLOEXEC, 0);
        uint length = Libc.MakeUnixAddress(logPath, out SockAddrUn address);
        Assert.Equal(0, Libc.Bind(fd, &address, length));
        try
        {
            string stderr = RunUntilListening(tree, new Dictionary<string, string?> { [LogSetup.SyslogSocketEnvironment] = logPath }, "--syslog");
            Assert.DoesNotContain("Listening on", stderr);
            var messages = new List<string>();
            byte[] buffer = new byte[8192];
            while (true)
            {
                nint n;
                fixed (byte* p = buffer)
                {
                    var iov = new IoVec(p, (nuint)buffer.Length);
                    var msg = new MsgHdr { Iov = &iov, IovLen = 1 };
                    n = Libc.RecvMsg(fd, &msg, Libc.MSG_DONTWAIT);
                }
                if (n <= 0)
                {
                    break;
                }
                messages.Add(Encoding.UTF8.GetString(buffer, 0, (int)n));
            }
            // <daemon.info> "Mmm dd hh:mm:ss vhostfsd[PID]: text"
            string listening = Assert.Single(messages, m => m.Contains("Listening on"));
            Assert.Matches(@"^<30>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d vhostfsd\[\d+\]: Listening on ", listening);
            Assert.Contains(messages, m => m.StartsWith("<28>", StringComparison.Ordinal) || m.StartsWith("<30>", StringComparison.Ordinal));
        }
        finally
        {
            Libc.Close(fd);
        }
    }

    [Fact]
    public void Syslog_without_a_syslog_daemon_falls_back_to_stderr()
    {
        using var tree = new TempTree();
        string stderr = RunUntilListening(tree, new Dictionary<string, string?> { [LogSetup.SyslogSocketEnvironment] = Path.Combine(tree.Root, "nolog") }, "--syslog");
        Assert.Contains("WRN] can't log to syslog", stderr);
        Assert.Contains("INF] Listening on", stderr);
    }

    [Theory]
    [InlineData(LogEventLevel.Fatal, 26)]
    [InlineData(LogEventLevel.Error, 27)]
    [InlineData(LogEventLevel.Warning, 28)]
    [InlineData(LogEventLevel.Information, 30)]
    [InlineData(LogEventLevel.Debug, 31)]
    [InlineData(LogEventLevel.Verbose, 31)]
    public void Syslog_priority_is_facility_daemon_plus_severity(LogEventLevel level, int priority)
    {
        var time = new DateTimeOffset(2025, 3, 7, 9, 5, 1, TimeSpan.Zero);
        var e = new LogEvent(time, level, null, "hello {Name}", ["world"]);
        string text = SyslogSink.Format(e, "vhostfsd", 42);
        var local = time.ToLocalTime();
        string stamp = local.ToString("MMM", CultureInfo.InvariantCulture) + " " + local.Day.ToString(CultureInfo.InvariantCulture).PadLeft(2) + " " + local.ToString("HH:mm:ss", CultureInfo.InvariantCulture);
        Assert.Equal($"<{priority}>{stamp} vhostfsd[42]: hello world", text);
        Assert.Matches(new Regex(@"^<\d+>\w{3} [ \d]\d "), text);
    }

    private sealed class CapturingSink : ILogEventSink
    {
        public List<LogEvent> Events { get; } = [];

        public void Emit(LogEvent logEvent) => Events.Add(logEvent);
    }

    /// <summary>The level gate, the exception, and the values reaching the sink by position.</summary>
    [Fact]
    public void The_logger_passes_events_at_its_level_and_above_with_their_values()
    {
        var sink = new CapturingSink();
        using var log = new Logger(LogEventLevel.Information, sink);
        log.Debug("dropped {Value}", 2);
        log.Information("kept {Value} and {Name}", 3, "three");
        log.Warning(new InvalidOperationException("boom"), "with an exception");
        log.Error("generic {Value}", 4L);

        Assert.False(log.IsEnabled(LogEventLevel.Debug));
        Assert.True(log.IsEnabled(LogEventLevel.Information));
        Assert.Equal(3, sink.Events.Count);
        LogEvent kept = sink.Events[0];
        Assert.Equal(LogEventLevel.Information, kept.Level);
        Assert.Equal("kept {Value} and {Name}", kept.MessageTemplate);
        Assert.Equal([3, "three"], kept.Values);
        Assert.Equal("kept 3 and three", kept.RenderMessage());
        Assert.IsType<InvalidOperationException>(sink.Events[1].Exception);
        Assert.Equal(LogEventLevel.Error, sink.Events[2].Level);
        Assert.Equal(4L, sink.Events[2].Values[0]);
        Assert.False(Logger.None.IsEnabled(LogEventLevel.Fatal));
    }

    [Theory]
    [InlineData("flags 0x{Flags:x} size {Size}", new object[] { 0x1au, 8 }, "flags 0x1a size 8")]
    [InlineData("{{literal}} {Name}", new object[] { "x" }, "{literal} x")]
    [InlineData("{Missing} {Also}", new object[] { 1 }, "1 {Also}")]
    [InlineData("not a hole: {a b} {1}", new object[] { "v" }, "not a hole: {a b} v")]
    [InlineData("unclosed {Name", new object[] { "v" }, "unclosed {Name")]
    [InlineData("{Value}", new object[] { 1.5 }, "1.5")]
    [InlineData("{Mode}", new object[] { SandboxModeForLog.Namespace }, "Namespace")]
    public void Templates_render_values_in_order_with_their_formats(string template, object[] values, string expected)
    {
        var e = new LogEvent(DateTimeOffset.UnixEpoch, LogEventLevel.Information, null, template, values);
        Assert.Equal(expected, e.RenderMessage());
    }

    public enum SandboxModeForLog
    {
        Namespace,
    }

    [Fact]
    public void A_null_is_written_as_null_and_a_sequence_as_a_list()
    {
        var e = new LogEvent(DateTimeOffset.UnixEpoch, LogEventLevel.Information, null, "{A} {B}", [null, new[] { "a", "b" }]);
        Assert.Equal("null [a, b]", e.RenderMessage());
    }

    [Fact]
    public void Control_characters_in_a_value_are_escaped_so_it_cannot_forge_a_line()
    {
        string forged = "x\n[2025-01-31T12:00:00.000+00:00 ERR] forged\r\t\u001b[31m\u007f";
        var e = new LogEvent(DateTimeOffset.UnixEpoch, LogEventLevel.Warning, null, "refused {Name}", [forged]);
        Assert.Equal("refused x\\n[2025-01-31T12:00:00.000+00:00 ERR] forged\\r\\t\\x1b[31m\\x7f", e.RenderMessage());
        Assert.DoesNotContain('\n', LogSetup.FormatLine(e));
    }

    [Fact]
    public void A_stderr_line_has_the_timestamp_and_a_three_letter_level()
    {
        var time = new DateTimeOffset(2025, 1, 31, 12, 0, 0, 5, TimeSpan.FromHours(1));
        var e = new LogEvent(time, LogEventLevel.Warning, null, "disk {Name} is {Percent}% full", ["sda", 97]);
        Assert.Equal("[2025-01-31T12:00:00.005+01:00 WRN] disk sda is 97% full", LogSetup.FormatLine(e));
    }
}
