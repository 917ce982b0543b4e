namespace Vhostfsd.Posix;

/// <summary>Linux errno values (x86_64 / generic). C names are kept on purpose: they are what
/// the FUSE protocol carries (as a negative number) and what every reader searches for.</summary>
public enum Errno
{
    OK = 0,
    EPERM = 1,
    ENOENT = 2,
    ESRCH = 3,
    EINTR = 4,
    EIO = 5,
    ENXIO = 6,
    E2BIG = 7,
    ENOEXEC = 8,
    EBADF = 9,
    ECHILD = 10,
    EAGAIN = 11,
    ENOMEM = 12,
    EACCES = 13,
    EFAULT = 14,
    ENOTBLK = 15,
    EBUSY = 16,
    EEXIST = 17,
    EXDEV = 18,
    ENODEV = 19,
    ENOTDIR = 20,
    EISDIR = 21,
    EINVAL = 22,
    ENFILE = 23,
    EMFILE = 24,
    ENOTTY = 25,
    ETXTBSY = 26,
    EFBIG = 27,
    ENOSPC = 28,
    ESPIPE = 29,
    EROFS = 30,
    EMLINK = 31,
    EPIPE = 32,
    EDOM = 33,
    ERANGE = 34,
    EDEADLK = 35,
    ENAMETOOLONG = 36,
    ENOLCK = 37,
    ENOSYS = 38,
    ENOTEMPTY = 39,
    ELOOP = 40,
    ENOMSG = 42,
    EIDRM = 43,
    ENOSTR = 60,
    ENODATA = 61,
    ETIME = 62,
    ENOSR = 63,
    EREMOTE = 66,
    ENOLINK = 67,
    EPROTO = 71,
    EBADMSG = 74,
    EOVERFLOW = 75,
    EBADFD = 77,
    EILSEQ = 84,
    EUSERS = 87,
    ENOTSOCK = 88,
    EDESTADDRREQ = 89,
    EMSGSIZE = 90,
    EPROTOTYPE = 91,
    ENOPROTOOPT = 92,
    EPROTONOSUPPORT = 93,
    EOPNOTSUPP = 95,
    EAFNOSUPPORT = 97,
    EADDRINUSE = 98,
    EADDRNOTAVAIL = 99,
    ENETDOWN = 100,
    ECONNABORTED = 103,
    ECONNRESET = 104,
    ENOBUFS = 105,
    EISCONN = 106,
    ENOTCONN = 107,
    ETIMEDOUT = 110,
    ECONNREFUSED = 111,
    EALREADY = 114,
    EINPROGRESS = 115,
    ESTALE = 116,
    EDQUOT = 122,
    ECANCELED = 125,
    EOWNERDEAD = 130,
}

/// <summary>A failed libc call: the call's name and its errno.</summary>
public sealed class PosixException : Exception
{
    public PosixException(string call, Errno errno)
        : base($"{call}: {Describe(errno)}")
    {
        Call = call;
        Errno = errno;
    }

    public string Call { get; }
    public Errno Errno { get; }

    /// <summary>Throws for the errno of the last P/Invoke on this thread.</summary>
    [System.Diagnostics.CodeAnalysis.DoesNotReturn]
    public static void ThrowLast(string call) => throw new PosixException(call, Libc.LastErrno);

    /// <summary>Returns <paramref name="result"/> when it is not negative; throws with the last errno otherwise.</summary>
    public static int Check(int result, string call)
    {
        if (result < 0)
        {
            ThrowLast(call);
        }
        return result;
    }

    public static long Check(long result, string call)
    {
        if (result < 0)
        {
            ThrowLast(call);
        }
        return result;
    }

    public static string Describe(Errno errno) => $"{errno} ({(int)errno}): {Libc.StrError(errno)}";
}
