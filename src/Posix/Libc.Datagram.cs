using System.Runtime.InteropServices;

namespace Vhostfsd.Posix;

/// <summary>Datagram sockets (the syslog transport: AF_UNIX SOCK_DGRAM to /dev/log).</summary>
public static unsafe partial class Libc
{
    public const int SOCK_DGRAM = 2;

    [LibraryImport(Lib, EntryPoint = "send", SetLastError = true)]
    public static partial nint Send(int fd, byte* buffer, nuint length, int flags);
}
