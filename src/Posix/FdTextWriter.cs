using System.Text;

namespace Vhostfsd.Posix;

/// <summary>A UTF-8 text writer straight onto a file descriptor (the daemon's stdout and stderr):
/// text is kept until a line ends or <see cref="Flush"/>, then written with write(2), whole.
/// Not thread-safe: callers that share one lock it. The descriptor is not closed.</summary>
public sealed unsafe class FdTextWriter : TextWriter
{
    /// <summary>The process's standard output and error.</summary>
    public static readonly FdTextWriter StandardOutput = new(1);
    public static readonly FdTextWriter StandardError = new(2);

    private readonly int _fd;
    private readonly StringBuilder _pending = new();

    public FdTextWriter(int fd)
    {
        _fd = fd;
        CoreNewLine = ['\n'];
    }

    public override Encoding Encoding => Encoding.UTF8;

    public override void Write(char value) => _pending.Append(value);

    public override void Write(string? value) => _pending.Append(value);

    public override void Write(ReadOnlySpan<char> buffer) => _pending.Append(buffer);

    public override void WriteLine(string? value)
    {
        _pending.Append(value).Append('\n');
        Flush();
    }

    public override void WriteLine()
    {
        _pending.Append('\n');
        Flush();
    }

    /// <summary>Writes what is pending. A closed or full descriptor (EPIPE, EBADF...) loses the
    /// text: output must never stop the daemon.</summary>
    public override void Flush()
    {
        if (_pending.Length == 0)
        {
            return;
        }
        byte[] bytes = Encoding.UTF8.GetBytes(_pending.ToString());
        _pending.Clear();
        fixed (byte* start = bytes)
        {
            int done = 0;
            while (done < bytes.Length)
            {
                nint n = Libc.Write(_fd, start + done, (nuint)(bytes.Length - done));
                if (n > 0)
                {
                    done += (int)n;
                }
                else if (n < 0 && Libc.LastErrno == Errno.EINTR)
                {
                    continue;
                }
                else
                {
                    return;
                }
            }
        }
    }
}
