using System.Diagnostics.CodeAnalysis;
using Serilog;
using Serilog.Core;
using Serilog.Events;

namespace Vhostfsd.Logging;

/// <summary>The daemon's logger: Serilog's, except that events carry no trace or span id.
/// Serilog stamps every event it builds with the ids of <c>System.Diagnostics.Activity.Current</c>;
/// the first read runs Activity's type initializer (its id generators, random state and the
/// async-local slot), which keeps about 0.8 MiB resident in each of the daemon's processes
/// for ids nothing here produces or reads. Events built here go to the same sinks through
/// <see cref="Logger.Write(LogEvent)"/>, which dispatches without looking at Activity.</summary>
internal sealed class UntracedLogger : ILogger, IDisposable
{
    private readonly Logger _inner;

    public UntracedLogger(Logger inner)
    {
        _inner = inner;
    }

    public bool IsEnabled(LogEventLevel level) => _inner.IsEnabled(level);

    public void Write(LogEvent logEvent) => _inner.Write(logEvent);

    // Every level method and generic overload of ILogger ends here (its default bodies pass
    // the values on as an array).
    public void Write(LogEventLevel level, Exception? exception, string messageTemplate, params object?[]? propertyValues)
    {
        if (!_inner.IsEnabled(level))
        {
            return;
        }
        if (_inner.BindMessageTemplate(messageTemplate, propertyValues, out MessageTemplate? template, out IEnumerable<LogEventProperty>? properties))
        {
            _inner.Write(new LogEvent(DateTimeOffset.Now, level, exception, template, properties));
        }
    }

    public bool BindMessageTemplate(string messageTemplate, object?[]? propertyValues,
        [NotNullWhen(true)] out MessageTemplate? parsedTemplate, [NotNullWhen(true)] out IEnumerable<LogEventProperty>? boundProperties) =>
        _inner.BindMessageTemplate(messageTemplate, propertyValues, out parsedTemplate, out boundProperties);

    public bool BindProperty(string? propertyName, object? value, bool destructureObjects, [NotNullWhen(true)] out LogEventProperty? property) =>
        _inner.BindProperty(propertyName, value, destructureObjects, out property);

    public void Dispose() => _inner.Dispose();
}
