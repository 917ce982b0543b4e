using System.Runtime.InteropServices;

namespace Vhostfsd.Posix;

/// <summary>libc bindings. One file per call family; every binding is source-generated,
/// blittable and records errno. Raw calls return the C result (negative on failure) so that
/// hot paths can turn errno into a FUSE reply without an exception.</summary>
public static unsafe partial class Libc
{
    internal const string Lib = "libc";

    /// <summary>errno of the last binding called on this thread.</summary>
    public static Errno LastErrno => (Errno)Marshal.GetLastPInvokeError();

    /// <summary>-errno of the last binding called on this thread (the FUSE reply form).</summary>
    public static int NegErrno => -Marshal.GetLastPInvokeError();

    [LibraryImport(Lib, EntryPoint = "close", SetLastError = true)]
    public static partial int Close(int fd);

    [LibraryImport(Lib, EntryPoint = "read", SetLastError = true)]
    public static partial nint Read(int fd, byte* buf, nuint count);

    [LibraryImport(Lib, EntryPoint = "write", SetLastError = true)]
    public static partial nint Write(int fd, byte* buf, nuint count);

    [LibraryImport(Lib, EntryPoint = "dup", SetLastError = true)]
    public static partial int Dup(int fd);

    [LibraryImport(Lib, EntryPoint = "dup3", SetLastError = true)]
    public static partial int Dup3(int oldFd, int newFd, int flags);

    [LibraryImport(Lib, EntryPoint = "fcntl", SetLastError = true)]
    public static partial int Fcntl(int fd, int cmd, nint arg);

    [LibraryImport(Lib, EntryPoint = "pipe2", SetLastError = true)]
    public static partial int Pipe2(int* fds, int flags);

    [LibraryImport(Lib, EntryPoint = "getpid")]
    public static partial int GetPid();

    [LibraryImport(Lib, EntryPoint = "gettid")]
    public static partial int GetTid();

    [LibraryImport(Lib, EntryPoint = "__xpg_strerror_r")]
    private static partial int StrErrorR(int errnum, byte* buf, nuint len);

    /// <summary>The C library's message for an errno.</summary>
    public static string StrError(Errno errno)
    {
        byte* buf = stackalloc byte[256];
        // SAFETY: buf has 256 bytes; the XSI variant always NUL-terminates within len.
        if (StrErrorR((int)errno, buf, 256) != 0)
        {
            return "Unknown error " + (int)errno;
        }
        return Marshal.PtrToStringUTF8((nint)buf) ?? string.Empty;
    }

    // fcntl commands and flags (asm-generic values used by x86_64).
    public const int F_DUPFD_CLOEXEC = 1030;
    public const int F_GETFD = 1;
    public const int F_SETFD = 2;
    public const int F_GETFL = 3;
    public const int F_SETFL = 4;
    public const int FD_CLOEXEC = 1;

    // open(2) flags, x86_64.
    public const int O_RDONLY = 0x0;
    public const int O_WRONLY = 0x1;
    public const int O_RDWR = 0x2;
    public const int O_ACCMODE = 0x3;
    public const int O_CREAT = 0x40;
    public const int O_EXCL = 0x80;
    public const int O_NOCTTY = 0x100;
    public const int O_TRUNC = 0x200;
    public const int O_APPEND = 0x400;
    public const int O_NONBLOCK = 0x800;
    public const int O_DSYNC = 0x1000;
    public const int O_ASYNC = 0x2000;
    public const int O_DIRECT = 0x4000;
    public const int O_LARGEFILE = 0x8000;
    public const int O_DIRECTORY = 0x10000;
    public const int O_NOFOLLOW = 0x20000;
    public const int O_NOATIME = 0x40000;
    public const int O_CLOEXEC = 0x80000;
    public const int O_SYNC = 0x101000;
    public const int O_PATH = 0x200000;
    public const int O_TMPFILE = 0x410000;

    /// <summary>Reads exactly into <paramref name="buffer"/> or returns -errno / the short count at EOF.</summary>
    public static int ReadSome(int fd, Span<byte> buffer)
    {
        fixed (byte* p = buffer)
        {
            while (true)
            {
                nint n = Read(fd, p, (nuint)buffer.Length);
                if (n < 0 && LastErrno == Errno.EINTR)
                {
                    continue;
                }
                return n < 0 ? NegErrno : (int)n;
            }
        }
    }

    /// <summary>Writes all of <paramref name="buffer"/>; returns 0 or -errno.</summary>
    public static int WriteAll(int fd, ReadOnlySpan<byte> buffer)
    {
        fixed (byte* p = buffer)
        {
            int done = 0;
            while (done < buffer.Length)
            {
                nint n = Write(fd, p + done, (nuint)(buffer.Length - done));
                if (n < 0)
                {
                    if (LastErrno == Errno.EINTR)
                    {
                        continue;
                    }
                    return NegErrno;
                }
                done += (int)n;
            }
            return 0;
        }
    }
}
