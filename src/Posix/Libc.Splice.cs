using System.Runtime.InteropServices;

namespace Vhostfsd.Posix;

/// <summary>Pipes and splice(2): moving file pages between a file, a pipe and /dev/fuse by reference.</summary>
public static unsafe partial class Libc
{
    /// <summary>splice(2) flags (linux/splice.h).</summary>
    public const uint SPLICE_F_MOVE = 1;
    public const uint SPLICE_F_NONBLOCK = 2;
    public const uint SPLICE_F_MORE = 4;

    /// <summary>fcntl commands on pipes (linux/fcntl.h: F_LINUX_SPECIFIC_BASE + 7 and + 8).</summary>
    public const int F_SETPIPE_SZ = 1031;
    public const int F_GETPIPE_SZ = 1032;

    /// <summary>splice(2): moves up to <paramref name="length"/> bytes from <paramref name="fdIn"/> to
    /// <paramref name="fdOut"/>, one of which is a pipe. An offset pointer is null for a pipe, or the
    /// file position to use (and advance) instead of the fd's own.</summary>
    [LibraryImport(Lib, EntryPoint = "splice", SetLastError = true)]
    public static partial nint Splice(int fdIn, long* offsetIn, int fdOut, long* offsetOut, nuint length, uint flags);
}
