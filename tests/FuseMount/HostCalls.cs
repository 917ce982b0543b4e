using System.Text;
using Vhostfsd.Posix;

namespace Vhostfsd.FuseMount.Tests;

/// <summary>The host system calls the tests make on the mount point, where .NET has no API for
/// them; each throws <see cref="PosixException"/> on failure.</summary>
internal static unsafe class HostCalls
{
    private static byte[] Z(string text) => Encoding.UTF8.GetBytes(text + "\0");

    public static Statx Lstat(string path)
    {
        Statx st;
        fixed (byte* p = Z(path))
        {
            PosixException.Check(Libc.StatxAt(Libc.AT_FDCWD, p, Libc.AT_SYMLINK_NOFOLLOW, Libc.STATX_BASIC_STATS, &st), "statx " + path);
        }
        return st;
    }

    public static void Link(string existing, string newPath)
    {
        fixed (byte* from = Z(existing))
        fixed (byte* to = Z(newPath))
        {
            PosixException.Check(Libc.LinkAt(Libc.AT_FDCWD, from, Libc.AT_FDCWD, to, 0), "link " + newPath);
        }
    }

    public static void Chown(string path, uint uid, uint gid)
    {
        fixed (byte* p = Z(path))
        {
            PosixException.Check(Libc.FchownAt(Libc.AT_FDCWD, p, uid, gid, 0), "chown " + path);
        }
    }

    public static void SetXattr(string path, string name, string value)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(value);
        fixed (byte* p = Z(path))
        fixed (byte* n = Z(name))
        fixed (byte* v = bytes)
        {
            PosixException.Check(Libc.Setxattr(p, n, v, (nuint)bytes.Length, 0), "setxattr " + path);
        }
    }

    /// <summary>The value, or null when the attribute does not exist (ENODATA).</summary>
    public static string? GetXattr(string path, string name)
    {
        byte* buffer = stackalloc byte[4096];
        fixed (byte* p = Z(path))
        fixed (byte* n = Z(name))
        {
            nint length = Libc.Getxattr(p, n, buffer, 4096);
            if (length < 0 && Libc.LastErrno == Errno.ENODATA)
            {
                return null;
            }
            PosixException.Check((long)length, "getxattr " + path);
            return Encoding.UTF8.GetString(buffer, (int)length);
        }
    }

    public static List<string> ListXattr(string path)
    {
        byte* buffer = stackalloc byte[4096];
        fixed (byte* p = Z(path))
        {
            nint length = Libc.Listxattr(p, buffer, 4096);
            PosixException.Check((long)length, "listxattr " + path);
            return Encoding.UTF8.GetString(buffer, (int)length).Split('\0', StringSplitOptions.RemoveEmptyEntries).ToList();
        }
    }

    public static void RemoveXattr(string path, string name)
    {
        fixed (byte* p = Z(path))
        fixed (byte* n = Z(name))
        {
            PosixException.Check(Libc.Removexattr(p, n), "removexattr " + path);
        }
    }

    /// <summary>open(O_RDONLY | O_DIRECTORY): .NET opens no directories.</summary>
    public static SafeFd OpenDirectory(string path)
    {
        fixed (byte* p = Z(path))
        {
            return SafeFd.FromResult(Libc.Open(p, Libc.O_RDONLY | Libc.O_DIRECTORY | Libc.O_CLOEXEC, 0), "open " + path);
        }
    }

    public static StatFs Statfs(string path)
    {
        using var directory = OpenDirectory(path);
        StatFs st;
        PosixException.Check(Libc.Fstatfs(directory.Fd, &st), "fstatfs " + path);
        return st;
    }

    /// <summary>F_SETLK (non-blocking) of a whole-file lock of <paramref name="type"/> on an fd;
    /// false when another owner's lock conflicts.</summary>
    public static bool TryLock(Microsoft.Win32.SafeHandles.SafeFileHandle file, short type)
    {
        var lk = new FileLock { Type = type, Whence = 0, Start = 0, Length = 0 };
        if (Libc.FcntlLock((int)file.DangerousGetHandle(), Libc.F_SETLK, &lk) == 0)
        {
            return true;
        }
        if (Libc.LastErrno is Errno.EAGAIN or Errno.EACCES)
        {
            return false;
        }
        PosixException.ThrowLast("fcntl F_SETLK");
        return false;
    }
}
