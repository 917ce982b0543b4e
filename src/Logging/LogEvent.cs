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
    /// are (never quoted, control characters escaped), null as "null", a sequence as "[a, b]"; a hole with no value left stays as written.</summary>
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
                AppendText(text, s);
                break;
            case IFormattable formattable:
                AppendText(text, formattable.ToString(format, CultureInfo.InvariantCulture));
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
                AppendText(text, value.ToString() ?? "");
                break;
        }
    }

    /// <summary>Appends a value's text with its control characters escaped ("\n", "\x1b"): a
    /// value may come from the guest or the VMM (a name, a reason), and a line break in it must
    /// not start what reads as another log line, nor an escape sequence drive the terminal.</summary>
    private static void AppendText(StringBuilder text, string value)
    {
        foreach (char c in value)
        {
            switch (c)
            {
                case '\n':
                    text.Append("\\n");
                    break;
                case '\r':
                    text.Append("\\r");
                    break;
                case '\t':
                    text.Append("\\t");
                    break;
                case < ' ' or '\x7f':
                    text.Append("\\x").Append(((int)c).ToString("x2", CultureInfo.InvariantCulture));
                    break;
                default:
                    text.Append(c);
                    break;
            }
        }
    }
}
