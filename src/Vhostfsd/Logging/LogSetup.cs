using System.Globalization;
using System.Text;
using Vhostfsd.Cli;

namespace Vhostfsd.Logging;

/// <summary>Builds the daemon's logger from --log-level / -d / --syslog.</summary>
internal static class LogSetup
{
    /// <summary>Where --syslog sends; a test hook may point it elsewhere (never set in production).</summary>
    public const string SyslogSocketEnvironment = "VHOSTFSD_SYSLOG_SOCKET";
    public const string DefaultSyslogSocket = "/dev/log";

    public static LogEventLevel? ToLevel(DaemonLogLevel level) => level switch
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
    public static Logger Create(DaemonLogLevel level, bool syslog, int syslogPid, TextWriter stderr, List<string> notes)
    {
        LogEventLevel? minimum = ToLevel(level);
        if (minimum == null)
        {
            return Logger.None;
        }
        if (syslog)
        {
            string path = Environment.GetEnvironmentVariable(SyslogSocketEnvironment) ?? DefaultSyslogSocket;
            try
            {
                return new Logger(minimum, SyslogSink.Connect(path, "vhostfsd", syslogPid, stderr));
            }
            catch (Exception e) when (e is Posix.PosixException or ArgumentException)
            {
                notes.Add($"can't log to syslog ({e.Message}); logging to stderr");
            }
        }
        return new Logger(minimum, new StderrSink(stderr));
    }

    /// <summary>One stderr line: "[2025-01-31T12:00:00.000+00:00 INF] message" (levels VRB, DBG,
    /// INF, WRN, ERR, FTL).</summary>
    internal static string FormatLine(LogEvent logEvent)
    {
        var line = new StringBuilder(128);
        line.Append('[').Append(logEvent.Timestamp.ToString("yyyy-MM-ddTHH:mm:ss.fffzzz", CultureInfo.InvariantCulture))
            .Append(' ').Append(LevelCode(logEvent.Level)).Append("] ");
        logEvent.Render(line);
        return line.ToString();
    }

    private static string LevelCode(LogEventLevel level) => level switch
    {
        LogEventLevel.Verbose => "VRB",
        LogEventLevel.Debug => "DBG",
        LogEventLevel.Information => "INF",
        LogEventLevel.Warning => "WRN",
        LogEventLevel.Error => "ERR",
        _ => "FTL",
    };

    /// <summary>Writes events to stderr; one lock per line so the lines of concurrent threads never
    /// interleave.</summary>
    private sealed class StderrSink(TextWriter writer) : ILogEventSink
    {
        public void Emit(LogEvent logEvent)
        {
            string line = FormatLine(logEvent);
            lock (writer)
            {
                writer.WriteLine(line);
                writer.Flush();
            }
        }
    }
}
