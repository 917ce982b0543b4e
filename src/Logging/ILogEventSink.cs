namespace Vhostfsd.Logging;

/// <summary>Where events go: stderr, syslog, a test's list. Called on the logging thread; an
/// implementation serialises its own output.</summary>
public interface ILogEventSink
{
    void Emit(LogEvent logEvent);
}
