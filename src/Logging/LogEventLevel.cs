namespace Vhostfsd.Logging;

/// <summary>How important a log event is, least first. The names are those Serilog uses, which
/// the daemon's log lines and their readers grew up with.</summary>
public enum LogEventLevel
{
    Verbose,
    Debug,
    Information,
    Warning,
    Error,
    Fatal,
}
