namespace Vhostfsd.Logging;

/// <summary>The daemon's logger: a minimum level and one sink. The level methods take a message
/// template and its values (see <see cref="LogEvent.RenderMessage"/>); the overloads with up to
/// three typed values build nothing, not even the values' array, when the level is off, so a
/// debug line on a busy path costs one comparison.</summary>
public sealed class Logger : IDisposable
{
    /// <summary>Writes nothing.</summary>
    public static readonly Logger None = new(null, null);

    private readonly LogEventLevel? _minimum;
    private readonly ILogEventSink? _sink;

    /// <summary>A logger that passes events at <paramref name="minimum"/> and above to
    /// <paramref name="sink"/>; with a null level or sink it writes nothing.</summary>
    public Logger(LogEventLevel? minimum, ILogEventSink? sink)
    {
        _minimum = sink == null ? null : minimum;
        _sink = sink;
    }

    public bool IsEnabled(LogEventLevel level) => _minimum is { } minimum && level >= minimum;

    /// <summary>Builds the event (stamped now) and passes it to the sink, when the level is on.</summary>
    public void Write(LogEventLevel level, Exception? exception, string messageTemplate, params object?[] values)
    {
        if (IsEnabled(level))
        {
            _sink!.Emit(new LogEvent(DateTimeOffset.Now, level, exception, messageTemplate, values));
        }
    }

    /// <summary>Disposes the sink when it holds something (a socket).</summary>
    public void Dispose() => (_sink as IDisposable)?.Dispose();

    public void Verbose(string messageTemplate) => Write(LogEventLevel.Verbose, null, messageTemplate, []);

    public void Verbose<T0>(string messageTemplate, T0 value0)
    {
        if (IsEnabled(LogEventLevel.Verbose))
        {
            Write(LogEventLevel.Verbose, null, messageTemplate, [value0]);
        }
    }

    public void Verbose<T0, T1>(string messageTemplate, T0 value0, T1 value1)
    {
        if (IsEnabled(LogEventLevel.Verbose))
        {
            Write(LogEventLevel.Verbose, null, messageTemplate, [value0, value1]);
        }
    }

    public void Verbose<T0, T1, T2>(string messageTemplate, T0 value0, T1 value1, T2 value2)
    {
        if (IsEnabled(LogEventLevel.Verbose))
        {
            Write(LogEventLevel.Verbose, null, messageTemplate, [value0, value1, value2]);
        }
    }

    public void Verbose(string messageTemplate, params object?[] values) => Write(LogEventLevel.Verbose, null, messageTemplate, values);

    public void Verbose(Exception? exception, string messageTemplate, params object?[] values) => Write(LogEventLevel.Verbose, exception, messageTemplate, values);

    public void Debug(string messageTemplate) => Write(LogEventLevel.Debug, null, messageTemplate, []);

    public void Debug<T0>(string messageTemplate, T0 value0)
    {
        if (IsEnabled(LogEventLevel.Debug))
        {
            Write(LogEventLevel.Debug, null, messageTemplate, [value0]);
        }
    }

    public void Debug<T0, T1>(string messageTemplate, T0 value0, T1 value1)
    {
        if (IsEnabled(LogEventLevel.Debug))
        {
            Write(LogEventLevel.Debug, null, messageTemplate, [value0, value1]);
        }
    }

    public void Debug<T0, T1, T2>(string messageTemplate, T0 value0, T1 value1, T2 value2)
    {
        if (IsEnabled(LogEventLevel.Debug))
        {
            Write(LogEventLevel.Debug, null, messageTemplate, [value0, value1, value2]);
        }
    }

    public void Debug(string messageTemplate, params object?[] values) => Write(LogEventLevel.Debug, null, messageTemplate, values);

    public void Debug(Exception? exception, string messageTemplate, params object?[] values) => Write(LogEventLevel.Debug, exception, messageTemplate, values);

    public void Information(string messageTemplate) => Write(LogEventLevel.Information, null, messageTemplate, []);

    public void Information<T0>(string messageTemplate, T0 value0)
    {
        if (IsEnabled(LogEventLevel.Information))
        {
            Write(LogEventLevel.Information, null, messageTemplate, [value0]);
        }
    }

    public void Information<T0, T1>(string messageTemplate, T0 value0, T1 value1)
    {
        if (IsEnabled(LogEventLevel.Information))
        {
            Write(LogEventLevel.Information, null, messageTemplate, [value0, value1]);
        }
    }

    public void Information<T0, T1, T2>(string messageTemplate, T0 value0, T1 value1, T2 value2)
    {
        if (IsEnabled(LogEventLevel.Information))
        {
            Write(LogEventLevel.Information, null, messageTemplate, [value0, value1, value2]);
        }
    }

    public void Information(string messageTemplate, params object?[] values) => Write(LogEventLevel.Information, null, messageTemplate, values);

    public void Information(Exception? exception, string messageTemplate, params object?[] values) => Write(LogEventLevel.Information, exception, messageTemplate, values);

    public void Warning(string messageTemplate) => Write(LogEventLevel.Warning, null, messageTemplate, []);

    public void Warning<T0>(string messageTemplate, T0 value0)
    {
        if (IsEnabled(LogEventLevel.Warning))
        {
            Write(LogEventLevel.Warning, null, messageTemplate, [value0]);
        }
    }

    public void Warning<T0, T1>(string messageTemplate, T0 value0, T1 value1)
    {
        if (IsEnabled(LogEventLevel.Warning))
        {
            Write(LogEventLevel.Warning, null, messageTemplate, [value0, value1]);
        }
    }

    public void Warning<T0, T1, T2>(string messageTemplate, T0 value0, T1 value1, T2 value2)
    {
        if (IsEnabled(LogEventLevel.Warning))
        {
            Write(LogEventLevel.Warning, null, messageTemplate, [value0, value1, value2]);
        }
    }

    public void Warning(string messageTemplate, params object?[] values) => Write(LogEventLevel.Warning, null, messageTemplate, values);

    public void Warning(Exception? exception, string messageTemplate, params object?[] values) => Write(LogEventLevel.Warning, exception, messageTemplate, values);

    public void Error(string messageTemplate) => Write(LogEventLevel.Error, null, messageTemplate, []);

    public void Error<T0>(string messageTemplate, T0 value0)
    {
        if (IsEnabled(LogEventLevel.Error))
        {
            Write(LogEventLevel.Error, null, messageTemplate, [value0]);
        }
    }

    public void Error<T0, T1>(string messageTemplate, T0 value0, T1 value1)
    {
        if (IsEnabled(LogEventLevel.Error))
        {
            Write(LogEventLevel.Error, null, messageTemplate, [value0, value1]);
        }
    }

    public void Error<T0, T1, T2>(string messageTemplate, T0 value0, T1 value1, T2 value2)
    {
        if (IsEnabled(LogEventLevel.Error))
        {
            Write(LogEventLevel.Error, null, messageTemplate, [value0, value1, value2]);
        }
    }

    public void Error(string messageTemplate, params object?[] values) => Write(LogEventLevel.Error, null, messageTemplate, values);

    public void Error(Exception? exception, string messageTemplate, params object?[] values) => Write(LogEventLevel.Error, exception, messageTemplate, values);

    public void Fatal(string messageTemplate) => Write(LogEventLevel.Fatal, null, messageTemplate, []);

    public void Fatal<T0>(string messageTemplate, T0 value0)
    {
        if (IsEnabled(LogEventLevel.Fatal))
        {
            Write(LogEventLevel.Fatal, null, messageTemplate, [value0]);
        }
    }

    public void Fatal<T0, T1>(string messageTemplate, T0 value0, T1 value1)
    {
        if (IsEnabled(LogEventLevel.Fatal))
        {
            Write(LogEventLevel.Fatal, null, messageTemplate, [value0, value1]);
        }
    }

    public void Fatal<T0, T1, T2>(string messageTemplate, T0 value0, T1 value1, T2 value2)
    {
        if (IsEnabled(LogEventLevel.Fatal))
        {
            Write(LogEventLevel.Fatal, null, messageTemplate, [value0, value1, value2]);
        }
    }

    public void Fatal(string messageTemplate, params object?[] values) => Write(LogEventLevel.Fatal, null, messageTemplate, values);

    public void Fatal(Exception? exception, string messageTemplate, params object?[] values) => Write(LogEventLevel.Fatal, exception, messageTemplate, values);
}
