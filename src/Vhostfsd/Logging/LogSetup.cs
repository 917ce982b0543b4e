using System.Globalization;
using Serilog;
using Serilog.Core;
using Serilog.Events;
using Vhostfsd.Cli;

namespace Vhostfsd.Logging;

/// <summary>Builds the daemon's Serilog logger from --log-level / -d / --syslog.</summary>
internal static class LogSetup
{
    /// <summary>Where --syslog sends; a test hook may point it elsewhere (never set in production).</summary>
    public const string SyslogSocketEnvironment = "VHOSTFSD_SYSLOG_SOCKET";
    public const string DefaultSyslogSocket = "/dev/log";

    /// <summary>The stderr line format: "[2025-01-31T12:00:00.000+00:00 INF] message".
    /// Levels print as VRB, DBG, INF, WRN, ERR, FTL.</summary>
    public const string OutputTemplate = "[{Timestamp:yyyy-MM-ddTHH:mm:ss.fffzzz} {Level:u3}] {Message:lj}{NewLine}";

    public static LogEventLevel? ToSerilog(DaemonLogLevel level) => level switch
    {
        DaemonLogLevel.Off => null,
        DaemonLogLevel.Error => LogEventLevel.Error,
        DaemonLogLevel.Warn => LogEventLevel.Warning,
        DaemonLogLevel.Info => LogEventLevel.Information,
        DaemonLogLevel.Debug => LogEventLevel.Debug,
        _ => LogEventLevel.Verbose,
    };

    /// <summary>The level in force: RUST_LOG overrides the command line when it is a plain level
    /// name, as with the Rust virtiofsd (scripts set RUST_LOG=error to quiet it).</summary>
    public static DaemonLogLevel EffectiveLevel(DaemonLogLevel fromCommandLine, out string? note)
    {
        note = null;
        string? rustLog = Environment.GetEnvironmentVariable("RUST_LOG");
        if (string.IsNullOrWhiteSpace(rustLog))
        {
            return fromCommandLine;
        }
        if (CommandLine.TryParseLogLevel(rustLog, out DaemonLogLevel level))
        {
            note = $"log level {level.ToString().ToLowerInvariant()} from RUST_LOG";
            return level;
        }
        note = $"RUST_LOG='{rustLog}' is not a plain level name and is ignored";
        return fromCommandLine;
    }

    /// <summary>Creates the logger. <paramref name="syslogPid"/> is the pid written in syslog lines
    /// (the host pid, even inside a pid namespace).</summary>
    public static UntracedLogger Create(DaemonLogLevel level, bool syslog, int syslogPid, TextWriter stderr, List<string> notes) =>
        new(CreateSerilog(level, syslog, syslogPid, stderr, notes));

    private static Logger CreateSerilog(DaemonLogLevel level, bool syslog, int syslogPid, TextWriter stderr, List<string> notes)
    {
        LogEventLevel? minimum = ToSerilog(level);
        var configuration = new LoggerConfiguration();
        if (minimum == null)
        {
            return configuration.CreateLogger();
        }
        configuration.MinimumLevel.Is(minimum.Value);
        if (syslog)
        {
            string path = Environment.GetEnvironmentVariable(SyslogSocketEnvironment) ?? DefaultSyslogSocket;
            try
            {
                configuration.WriteTo.Sink(SyslogSink.Connect(path, "vhostfsd", syslogPid, stderr));
                return configuration.CreateLogger();
            }
            catch (Exception e) when (e is Posix.PosixException or ArgumentException)
            {
                notes.Add($"can't log to syslog ({e.Message}); logging to stderr");
            }
        }
        configuration.WriteTo.Sink(new StderrSink(stderr));
        return configuration.CreateLogger();
    }

    /// <summary>Writes events to stderr with <see cref="OutputTemplate"/>; one lock per line so the
    /// lines of concurrent threads never interleave.</summary>
    private sealed class StderrSink : ILogEventSink
    {
        private readonly TextWriter _writer;
        private readonly Serilog.Formatting.Display.MessageTemplateTextFormatter _formatter =
            new(OutputTemplate, CultureInfo.InvariantCulture);

        public StderrSink(TextWriter writer)
        {
            _writer = writer;
        }

        public void Emit(LogEvent logEvent)
        {
            var line = new StringWriter(CultureInfo.InvariantCulture);
            _formatter.Format(logEvent, line);
            lock (_writer)
            {
                _writer.Write(line.ToString());
                _writer.Flush();
            }
        }
    }
}
