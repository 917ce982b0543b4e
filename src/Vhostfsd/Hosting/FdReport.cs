using System.Globalization;
using System.Text;
using Vhostfsd.Logging;
using Vhostfsd.Posix;

namespace Vhostfsd.Hosting;

/// <summary>At debug level, the daemon lists its open fds before and after the session, read through
/// <see cref="DaemonSettings.ProcSelfFd"/> (which works inside the sandbox too): the fault tests
/// compare the two lists to show that a session leaves no descriptor behind, whatever ended it.</summary>
internal static unsafe class FdReport
{
    /// <summary>Logs "open fds {When}: N [fd=target ...]" when debug logging is on.</summary>
    public static void Log(SafeFd? procSelfFd, string when, Logger log)
    {
        if (!log.IsEnabled(LogEventLevel.Debug) || procSelfFd is null || procSelfFd.IsInvalid)
        {
            return;
        }
        byte* dot = stackalloc byte[2];
        dot[0] = (byte)'.';
        dot[1] = 0;
        int dir = Libc.OpenAt(procSelfFd.Fd, dot, Libc.O_RDONLY | Libc.O_DIRECTORY | Libc.O_CLOEXEC, 0);
        if (dir < 0)
        {
            log.Debug("open fds {When}: unknown ({Errno})", when, Libc.LastErrno.ToString());
            return;
        }
        var fds = new List<int>();
        byte[] buffer = new byte[16384];
        fixed (byte* b = buffer)
        {
            nint n;
            while ((n = Libc.Getdents64(dir, b, (nuint)buffer.Length)) > 0)
            {
                for (int at = 0; at < n;)
                {
                    // struct linux_dirent64: ino (8), off (8), reclen (2), type (1), name.
                    ushort reclen = *(ushort*)(b + at + 16);
                    string name = new((sbyte*)(b + at + 19));
                    if (int.TryParse(name, NumberStyles.None, CultureInfo.InvariantCulture, out int fd) && fd != dir)
                    {
                        fds.Add(fd);
                    }
                    at += reclen;
                }
            }
        }
        fds.Sort();
        var text = new StringBuilder();
        byte* target = stackalloc byte[512];
        byte* number = stackalloc byte[16];
        foreach (int fd in fds)
        {
            fd.TryFormat(new Span<byte>(number, 15), out int digits);
            number[digits] = 0;
            nint length = Libc.ReadlinkAt(dir, number, target, 511);
            text.Append(' ').Append(fd).Append('=').Append(length > 0 ? Encoding.UTF8.GetString(target, (int)length) : "?");
        }
        Libc.Close(dir);
        log.Debug("open fds {When}: {Count} [{List} ]", when, fds.Count, text.ToString());
    }
}
