namespace Vhostfsd.Posix;

/// <summary>The host kernel's FUSE device, /dev/fuse (linux/fuse.h, fs/fuse/dev.c).</summary>
public static unsafe partial class Libc
{
    /// <summary>FUSE_DEV_IOC_CLONE = _IOR(229, 0, uint32_t): attaches a fresh /dev/fuse open to the
    /// connection of the fd whose number the argument points at. Each clone has its own queue of
    /// requests being processed, so a reply must be written to the fd its request was read from.</summary>
    public const ulong FUSE_DEV_IOC_CLONE = 0x8004E500;

    /// <summary>statfs f_type of a FUSE mount.</summary>
    public const long FUSE_SUPER_MAGIC = 0x65735546;
}

/// <summary>Opens /dev/fuse: the session fd that mount(2) is given (fd=N), and clones of it.</summary>
public static unsafe class DevFuse
{
    public const string Path = "/dev/fuse";

    /// <summary>Opens /dev/fuse read-write, close-on-exec. Throws <see cref="PosixException"/>.</summary>
    public static SafeFd Open()
    {
        byte* path = stackalloc byte[Path.Length + 1];
        for (int i = 0; i < Path.Length; i++)
        {
            path[i] = (byte)Path[i];
        }
        path[Path.Length] = 0;
        // SAFETY: path is a NUL-terminated ASCII string on the stack.
        int fd = Libc.Open(path, Libc.O_RDWR | Libc.O_CLOEXEC, 0);
        return SafeFd.FromResult(fd, "open " + Path);
    }

    /// <summary>Opens /dev/fuse and attaches it to the connection of <paramref name="sessionFd"/>
    /// (FUSE_DEV_IOC_CLONE). Throws <see cref="PosixException"/>.</summary>
    public static SafeFd Clone(int sessionFd)
    {
        SafeFd clone = Open();
        uint session = (uint)sessionFd;
        // SAFETY: the ioctl reads one uint32 from the local's address during the call.
        if (Libc.Ioctl(clone.Fd, Libc.FUSE_DEV_IOC_CLONE, (nint)(&session)) < 0)
        {
            var errno = Libc.LastErrno;
            clone.Dispose();
            throw new PosixException("ioctl FUSE_DEV_IOC_CLONE", errno);
        }
        return clone;
    }
}
