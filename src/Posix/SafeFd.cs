using Microsoft.Win32.SafeHandles;

namespace Vhostfsd.Posix;

/// <summary>Owns one file descriptor and closes it exactly once.</summary>
public sealed class SafeFd : SafeHandleZeroOrMinusOneIsInvalid
{
    public SafeFd() : base(ownsHandle: true)
    {
        SetHandle(-1);
    }

    public SafeFd(int fd, bool ownsHandle = true) : base(ownsHandle)
    {
        SetHandle(fd);
    }

    /// <summary>The descriptor number. Valid only while this handle is not disposed.</summary>
    public int Fd => (int)handle;

    /// <summary>Takes ownership of a descriptor returned by a raw call; throws if it is negative.</summary>
    public static SafeFd FromResult(int fd, string call)
    {
        PosixException.Check(fd, call);
        return new SafeFd(fd);
    }

    /// <summary>Gives up ownership and returns the descriptor, which the caller must close.</summary>
    public int Detach()
    {
        int fd = (int)handle;
        SetHandleAsInvalid();
        SetHandle(-1);
        return fd;
    }

    protected override bool ReleaseHandle()
    {
        // Linux closes the descriptor even when close() reports EINTR: never retry.
        return Libc.Close((int)handle) == 0 || Libc.LastErrno == Errno.EINTR;
    }

    public override string ToString() => $"fd {(int)handle}";
}
