using System.Globalization;
using System.Text;
using Vhostfsd.Posix;

namespace Vhostfsd.Logging;

/// <summary>A sink that sends each event as one RFC 3164 datagram
/// ("&lt;PRI&gt;Mmm dd hh:mm:ss TAG[PID]: MESSAGE", facility "daemon") over a connected
/// AF_UNIX SOCK_DGRAM socket, normally /dev/log. The socket is connected before the sandbox
/// hides /dev/log and stays usable after it. When a send fails (the syslog daemon went away),
/// the event and every later one go to <see cref="_fallback"/> instead, after one line saying so.</summary>
internal sealed unsafe class SyslogSink : ILogEventSink, IDisposable
{
    /// <summary>LOG_DAEMON.</summary>
    private const int Facility = 3;

    /// <summary>Longest datagram sent; longer messages are cut (syslog daemons accept at least 1 KiB,
    /// most far more).</summary>
    private const int MaxDatagram = 8192;

    private readonly SafeFd _socket;
    private readonly string _tag;
    private readonly int _pid;
    private readonly TextWriter _fallback;
    private readonly object _sync = new();
    private bool _failed;

    private SyslogSink(SafeFd socket, string tag, int pid, TextWriter fallback)
    {
        _socket = socket;
        _tag = tag;
        _pid = pid;
        _fallback = fallback;
    }

    /// <summary>Connects to the syslog socket at <paramref name="path"/>; throws <see cref="PosixException"/>
    /// or <see cref="ArgumentException"/> when that is not possible.</summary>
    public static SyslogSink Connect(string path, string tag, int pid, TextWriter fallback)
    {
        uint length = Libc.MakeUnixAddress(path, out SockAddrUn address);
        var fd = SafeFd.FromResult(Libc.Socket(Libc.AF_UNIX, Libc.SOCK_DGRAM | Libc.SOCK_CLOEXEC, 0), "socket(AF_UNIX, SOCK_DGRAM)");
        try
        {
            PosixException.Check(Libc.Connect(fd.Fd, &address, length), "connect " + path);
            return new SyslogSink(fd, tag, pid, fallback);
        }
        catch
        {
            fd.Dispose();
            throw;
        }
    }

    /// <summary>RFC 5424 severities.</summary>
    internal static int Severity(LogEventLevel level) => level switch
    {
        LogEventLevel.Fatal => 2,
        LogEventLevel.Error => 3,
        LogEventLevel.Warning => 4,
        LogEventLevel.Information => 6,
        _ => 7,
    };

    /// <summary>The datagram for one event.</summary>
    internal static string Format(LogEvent logEvent, string tag, int pid)
    {
        int priority = Facility * 8 + Severity(logEvent.Level);
        var local = logEvent.Timestamp.ToLocalTime();
        // RFC 3164: the day is space-padded to two characters.
        string stamp = local.ToString("MMM", CultureInfo.InvariantCulture) + " "
            + local.Day.ToString(CultureInfo.InvariantCulture).PadLeft(2) + " "
            + local.ToString("HH:mm:ss", CultureInfo.InvariantCulture);
        string message = logEvent.RenderMessage().Replace('\n', ' ');
        return $"<{priority}>{stamp} {tag}[{pid}]: {message}";
    }

    public void Emit(LogEvent logEvent)
    {
        string text = Format(logEvent, _tag, _pid);
        lock (_sync)
        {
            if (!_failed)
            {
                byte[] bytes = Encoding.UTF8.GetBytes(text);
                int length = Math.Min(bytes.Length, MaxDatagram);
                nint sent;
                fixed (byte* p = bytes)
                {
                    sent = Libc.Send(_socket.Fd, p, (nuint)length, Libc.MSG_NOSIGNAL);
                }
                if (sent >= 0)
                {
                    return;
                }
                _failed = true;
                _fallback.WriteLine($"vhostfsd: syslog send failed ({PosixException.Describe(Libc.LastErrno)}); logging to stderr from now on");
            }
            _fallback.WriteLine(text);
            _fallback.Flush();
        }
    }

    public void Dispose() => _socket.Dispose();
}
