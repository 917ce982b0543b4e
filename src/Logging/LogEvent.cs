using System.Globalization;
using System.Text;

namespace Vhostfsd.Logging;

/// <summary>One thing logged: a message template such as "vring {Index} started: size {Size}"
/// and the values for its holes, in order. Rendering is left to the sink, so an event that no sink
/// writes is never formatted.</summary>
public sealed class LogEvent
{
    public LogEvent(DateTimeOffset timestamp, LogEventLevel level, Exception? exception, string messageTemplate, object?[] values)
    {
        Timestamp = timestamp;
        Level = level;
        Exception = exception;
        MessageTemplate = messageTemplate;
        Values = values;
    }

    public DateTimeOffset Timestamp { get; }
    public LogEventLevel Level { get; }
    public Exception? Exception { get; }
    public string MessageTemplate { get; }

    /// <summary>The values for the template's holes, by position.</summary>
    public IReadOnlyList<object?> Values { get; }

    /// <summary>The message with every hole filled: "{Name}" takes the next value, "{Name:x}" formats
    /// it with "x" (invariant culture), "{{" and "}}" are literal braces. Strings are written as they
    /// are (never quoted), null as "null", a sequence as "[a, b]"; a hole with no value left stays as written.</summary>
    public string RenderMessage()
    {
        var text = new StringBuilder(MessageTemplate.Length + 16 * Values.Count);
        Render(text);
        return text.ToString();
    }

    /// <summary>Appends the rendered message to <paramref name="text"/>.</summary>
    public void Render(StringBuilder text)
    {
        string template = MessageTemplate;
        int next = 0;
        int i = 0;
        while (i < template.Length)
        {
            char c = template[i];
            if (c == '{' && i + 1 < template.Length && template[i + 1] == '{')
            {
                text.Append('{');
                i += 2;
                continue;
            }
            if (c == '}' && i + 1 < template.Length && template[i + 1] == '}')
            {
                text.Append('}');
                i += 2;
                continue;
            }
            int close = c == '{' ? template.IndexOf('}', i + 1) : -1;
            if (close < 0 || !IsHole(template.AsSpan(i + 1, close - i - 1)))
            {
                text.Append(c);
                i++;
                continue;
            }
            ReadOnlySpan<char> hole = template.AsSpan(i + 1, close - i - 1);
            if (next >= Values.Count)
            {
                text.Append(template, i, close - i + 1);
            }
            else
            {
                int colon = hole.IndexOf(':');
                AppendValue(text, Values[next++], colon < 0 ? null : hole[(colon + 1)..].ToString());
            }
            i = close + 1;
        }
    }

    /// <summary>A hole is a name (letters, digits, '_', an optional leading '@' or '$') with an
    /// optional ":format"; anything else between braces is text.</summary>
    private static bool IsHole(ReadOnlySpan<char> hole)
    {
        int colon = hole.IndexOf(':');
        ReadOnlySpan<char> name = colon < 0 ? hole : hole[..colon];
        if (name.Length > 0 && (name[0] == '@' || name[0] == '$'))
        {
            name = name[1..];
        }
        if (name.IsEmpty)
        {
            return false;
        }
        foreach (char c in name)
        {
            if (!char.IsAsciiLetterOrDigit(c) && c != '_')
            {
                return false;
            }
        }
        return true;
    }

    private static void AppendValue(StringBuilder text, object? value, string? format)
    {
        switch (value)
        {
            case null:
                text.Append("null");
                break;
            case string s:
                text.Append(s);
                break;
            case IFormattable formattable:
                text.Append(formattable.ToString(format, CultureInfo.InvariantCulture));
                break;
            case System.Collections.IEnumerable sequence:
                text.Append('[');
                bool first = true;
                foreach (object? item in sequence)
                {
                    text.Append(first ? "" : ", ");
                    AppendValue(text, item, format);
                    first = false;
                }
                text.Append(']');
                break;
            default:
                text.Append(value.ToString());
                break;
        }
    }
}
