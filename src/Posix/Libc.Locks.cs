using System.Runtime.InteropServices;

namespace Vhostfsd.Posix;

/// <summary>struct flock, x86_64 (32 bytes): the argument of F_GETLK/F_SETLK and the OFD variants.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FileLock
{
    public const int Size = 32;
    public short Type;
    public short Whence;
    public long Start;
    /// <summary>0 means "to the end of the file".</summary>
    public long Length;
    /// <summary>-1 for an open-file-description lock.</summary>
    public int Pid;
}

/// <summary>Record locks (open-file-description locks) and flock(2).</summary>
public static unsafe partial class Libc
{
    public const short F_RDLCK = 0;
    public const short F_WRLCK = 1;
    public const short F_UNLCK = 2;
    public const int F_GETLK = 5;
    public const int F_SETLK = 6;
    public const int F_SETLKW = 7;
    public const int F_OFD_GETLK = 36;
    public const int F_OFD_SETLK = 37;
    public const int F_OFD_SETLKW = 38;

    public const int LOCK_SH = 1;
    public const int LOCK_EX = 2;
    public const int LOCK_NB = 4;
    public const int LOCK_UN = 8;

    [LibraryImport(Lib, EntryPoint = "fcntl", SetLastError = true)]
    public static partial int FcntlLock(int fd, int command, FileLock* lockData);

    [LibraryImport(Lib, EntryPoint = "flock", SetLastError = true)]
    public static partial int Flock(int fd, int operation);
}
