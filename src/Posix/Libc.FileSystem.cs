using System.Runtime.InteropServices;

namespace Vhostfsd.Posix;

/// <summary>struct statx_timestamp (16 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct StatxTimestamp
{
    public long Sec;
    public uint Nsec;
    public int Reserved;
}

/// <summary>struct statx (256 bytes, the kernel's layout).</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct Statx
{
    public const int Size = 256;
    public uint Mask;
    public uint BlkSize;
    public ulong Attributes;
    public uint Nlink;
    public uint Uid;
    public uint Gid;
    public ushort Mode;
    public ushort Spare0;
    public ulong Ino;
    public ulong FileSize;
    public ulong Blocks;
    public ulong AttributesMask;
    public StatxTimestamp Atime;
    public StatxTimestamp Btime;
    public StatxTimestamp Ctime;
    public StatxTimestamp Mtime;
    public uint RdevMajor;
    public uint RdevMinor;
    public uint DevMajor;
    public uint DevMinor;
    public ulong MntId;
    public uint DioMemAlign;
    public uint DioOffsetAlign;
    public fixed ulong Spare3[12];

    /// <summary>st_dev as glibc's makedev() encodes it.</summary>
    public readonly ulong Dev => Libc.MakeDev(DevMajor, DevMinor);
}

/// <summary>struct open_how for openat2 (24 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct OpenHow
{
    public const int Size = 24;
    public ulong Flags;
    public ulong Mode;
    public ulong Resolve;
}

/// <summary>struct timespec, x86_64 (16 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct Timespec
{
    public long Sec;
    public long Nsec;
}

/// <summary>struct statfs, x86_64 (120 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct StatFs
{
    public const int Size = 120;
    public long Type;
    public long BlockSize;
    public ulong Blocks;
    public ulong BlocksFree;
    public ulong BlocksAvailable;
    public ulong Files;
    public ulong FilesFree;
    public fixed int FsId[2];
    public long NameLength;
    public long FragmentSize;
    public long Flags;
    public fixed long Spare[4];
}

/// <summary>struct file_handle header (8 bytes); handle_bytes bytes of opaque handle follow.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FileHandleHeader
{
    public const int Size = 8;
    public uint HandleBytes;
    public int HandleType;
}

/// <summary>File-system calls relative to directory fds (*at), statx, preadv2/pwritev2, sync,
/// getdents64, file handles. The passthrough file system is built on these.</summary>
public static unsafe partial class Libc
{
    // *at() flags.
    public const int AT_FDCWD = -100;
    public const int AT_SYMLINK_NOFOLLOW = 0x100;
    public const int AT_EACCESS = 0x200;
    public const int AT_REMOVEDIR = 0x200;
    public const int AT_SYMLINK_FOLLOW = 0x400;
    public const int AT_NO_AUTOMOUNT = 0x800;
    public const int AT_EMPTY_PATH = 0x1000;
    public const int AT_STATX_SYNC_TYPE = 0x6000;
    public const int AT_STATX_FORCE_SYNC = 0x2000;
    public const int AT_STATX_DONT_SYNC = 0x4000;

    // File type and mode bits.
    public const uint S_IFMT = 0xF000;
    public const uint S_IFSOCK = 0xC000;
    public const uint S_IFLNK = 0xA000;
    public const uint S_IFREG = 0x8000;
    public const uint S_IFBLK = 0x6000;
    public const uint S_IFDIR = 0x4000;
    public const uint S_IFCHR = 0x2000;
    public const uint S_IFIFO = 0x1000;
    public const uint S_ISUID = 0x800;
    public const uint S_ISGID = 0x400;
    public const uint S_ISVTX = 0x200;
    public const uint S_IXGRP = 0x8;

    // statx masks.
    public const uint STATX_TYPE = 0x1;
    public const uint STATX_MODE = 0x2;
    public const uint STATX_NLINK = 0x4;
    public const uint STATX_UID = 0x8;
    public const uint STATX_GID = 0x10;
    public const uint STATX_ATIME = 0x20;
    public const uint STATX_MTIME = 0x40;
    public const uint STATX_CTIME = 0x80;
    public const uint STATX_INO = 0x100;
    public const uint STATX_SIZE = 0x200;
    public const uint STATX_BLOCKS = 0x400;
    public const uint STATX_BASIC_STATS = 0x7FF;
    public const uint STATX_BTIME = 0x800;
    public const uint STATX_MNT_ID = 0x1000;
    public const ulong STATX_ATTR_MOUNT_ROOT = 0x2000;

    // openat2 resolve flags.
    public const ulong RESOLVE_NO_XDEV = 0x01;
    public const ulong RESOLVE_NO_MAGICLINKS = 0x02;
    public const ulong RESOLVE_NO_SYMLINKS = 0x04;
    public const ulong RESOLVE_BENEATH = 0x08;
    public const ulong RESOLVE_IN_ROOT = 0x10;

    // renameat2 flags.
    public const uint RENAME_NOREPLACE = 1;
    public const uint RENAME_EXCHANGE = 2;
    public const uint RENAME_WHITEOUT = 4;

    // lseek whence.
    public const int SEEK_SET = 0;
    public const int SEEK_CUR = 1;
    public const int SEEK_END = 2;
    public const int SEEK_DATA = 3;
    public const int SEEK_HOLE = 4;

    // preadv2/pwritev2 flags.
    public const int RWF_HIPRI = 0x1;
    public const int RWF_DSYNC = 0x2;
    public const int RWF_SYNC = 0x4;
    public const int RWF_NOWAIT = 0x8;
    public const int RWF_APPEND = 0x10;

    /// <summary>Most iovecs one preadv2/pwritev2 accepts.</summary>
    public const int IOV_MAX = 1024;

    // utimensat special nanosecond values.
    public const long UTIME_NOW = (1L << 30) - 1;
    public const long UTIME_OMIT = (1L << 30) - 2;

    // access(2) modes.
    public const int F_OK = 0;
    public const int X_OK = 1;
    public const int W_OK = 2;
    public const int R_OK = 4;

    // Directory entry types (d_type).
    public const byte DT_UNKNOWN = 0;
    public const byte DT_DIR = 4;
    public const byte DT_REG = 8;
    public const byte DT_LNK = 10;

    /// <summary>Bytes before the name in struct linux_dirent64 (d_ino, d_off, d_reclen, d_type).</summary>
    public const int Dirent64NameOffset = 19;

    // x86_64 system call numbers for calls glibc 2.36 does not wrap.
    public const long SYS_openat2 = 437;

    [LibraryImport(Lib, EntryPoint = "syscall", SetLastError = true)]
    private static partial long Syscall6(long number, nint a1, nint a2, nint a3, nint a4, nint a5, nint a6);

    /// <summary>A raw system call with up to six word-sized arguments (unused ones 0); returns the
    /// kernel result or -1 with errno set.</summary>
    public static long RawSyscall(long number, nint a1 = 0, nint a2 = 0, nint a3 = 0, nint a4 = 0, nint a5 = 0, nint a6 = 0)
        => Syscall6(number, a1, a2, a3, a4, a5, a6);

    [LibraryImport(Lib, EntryPoint = "openat", SetLastError = true)]
    public static partial int OpenAt(int dirFd, byte* path, int flags, uint mode);

    /// <summary>openat2(2) (Linux 5.6+).</summary>
    public static int OpenAt2(int dirFd, byte* path, OpenHow* how)
        => (int)Syscall6(SYS_openat2, dirFd, (nint)path, (nint)how, OpenHow.Size, 0, 0);

    [LibraryImport(Lib, EntryPoint = "statx", SetLastError = true)]
    public static partial int StatxAt(int dirFd, byte* path, int flags, uint mask, Statx* buffer);

    [LibraryImport(Lib, EntryPoint = "mkdirat", SetLastError = true)]
    public static partial int MkdirAt(int dirFd, byte* path, uint mode);

    [LibraryImport(Lib, EntryPoint = "mknodat", SetLastError = true)]
    public static partial int MknodAt(int dirFd, byte* path, uint mode, ulong dev);

    [LibraryImport(Lib, EntryPoint = "symlinkat", SetLastError = true)]
    public static partial int SymlinkAt(byte* target, int newDirFd, byte* linkPath);

    [LibraryImport(Lib, EntryPoint = "readlinkat", SetLastError = true)]
    public static partial nint ReadlinkAt(int dirFd, byte* path, byte* buffer, nuint size);

    [LibraryImport(Lib, EntryPoint = "unlinkat", SetLastError = true)]
    public static partial int UnlinkAt(int dirFd, byte* path, int flags);

    [LibraryImport(Lib, EntryPoint = "renameat2", SetLastError = true)]
    public static partial int RenameAt2(int oldDirFd, byte* oldPath, int newDirFd, byte* newPath, uint flags);

    [LibraryImport(Lib, EntryPoint = "linkat", SetLastError = true)]
    public static partial int LinkAt(int oldDirFd, byte* oldPath, int newDirFd, byte* newPath, int flags);

    [LibraryImport(Lib, EntryPoint = "fchmod", SetLastError = true)]
    public static partial int Fchmod(int fd, uint mode);

    [LibraryImport(Lib, EntryPoint = "fchmodat", SetLastError = true)]
    public static partial int FchmodAt(int dirFd, byte* path, uint mode, int flags);

    [LibraryImport(Lib, EntryPoint = "fchown", SetLastError = true)]
    public static partial int Fchown(int fd, uint uid, uint gid);

    [LibraryImport(Lib, EntryPoint = "fchownat", SetLastError = true)]
    public static partial int FchownAt(int dirFd, byte* path, uint uid, uint gid, int flags);

    [LibraryImport(Lib, EntryPoint = "utimensat", SetLastError = true)]
    public static partial int UtimensAt(int dirFd, byte* path, Timespec* times, int flags);

    [LibraryImport(Lib, EntryPoint = "futimens", SetLastError = true)]
    public static partial int Futimens(int fd, Timespec* times);

    [LibraryImport(Lib, EntryPoint = "fallocate", SetLastError = true)]
    public static partial int Fallocate(int fd, int mode, long offset, long length);

    [LibraryImport(Lib, EntryPoint = "lseek", SetLastError = true)]
    public static partial long Lseek(int fd, long offset, int whence);

    [LibraryImport(Lib, EntryPoint = "preadv2", SetLastError = true)]
    public static partial nint Preadv2(int fd, IoVec* iov, int iovCount, long offset, int flags);

    [LibraryImport(Lib, EntryPoint = "pwritev2", SetLastError = true)]
    public static partial nint Pwritev2(int fd, IoVec* iov, int iovCount, long offset, int flags);

    [LibraryImport(Lib, EntryPoint = "pread", SetLastError = true)]
    public static partial nint Pread(int fd, byte* buffer, nuint count, long offset);

    [LibraryImport(Lib, EntryPoint = "pwrite", SetLastError = true)]
    public static partial nint Pwrite(int fd, byte* buffer, nuint count, long offset);

    [LibraryImport(Lib, EntryPoint = "fsync", SetLastError = true)]
    public static partial int Fsync(int fd);

    [LibraryImport(Lib, EntryPoint = "fdatasync", SetLastError = true)]
    public static partial int Fdatasync(int fd);

    [LibraryImport(Lib, EntryPoint = "syncfs", SetLastError = true)]
    public static partial int Syncfs(int fd);

    [LibraryImport(Lib, EntryPoint = "getdents64", SetLastError = true)]
    public static partial nint Getdents64(int fd, byte* buffer, nuint count);

    [LibraryImport(Lib, EntryPoint = "fstatfs", SetLastError = true)]
    public static partial int Fstatfs(int fd, StatFs* buffer);

    [LibraryImport(Lib, EntryPoint = "copy_file_range", SetLastError = true)]
    public static partial nint CopyFileRange(int fdIn, long* offIn, int fdOut, long* offOut, nuint length, uint flags);

    [LibraryImport(Lib, EntryPoint = "name_to_handle_at", SetLastError = true)]
    public static partial int NameToHandleAt(int dirFd, byte* path, FileHandleHeader* handle, int* mountId, int flags);

    [LibraryImport(Lib, EntryPoint = "open_by_handle_at", SetLastError = true)]
    public static partial int OpenByHandleAt(int mountFd, FileHandleHeader* handle, int flags);

    [LibraryImport(Lib, EntryPoint = "ioctl", SetLastError = true)]
    public static partial int Ioctl(int fd, ulong request, nint argument);

    /// <summary>umask(2): process-wide (shared by every thread unless CLONE_FS was unshared).</summary>
    [LibraryImport(Lib, EntryPoint = "umask")]
    public static partial uint Umask(uint mask);

    /// <summary>glibc's makedev(): the dev_t of a major/minor pair.</summary>
    public static ulong MakeDev(uint major, uint minor)
        => ((ulong)(major & 0xFFFFF000u) << 32) | ((ulong)(major & 0xFFFu) << 8)
           | ((ulong)(minor & 0xFFFFFF00u) << 12) | (minor & 0xFFu);

    /// <summary>gnu_dev_major().</summary>
    public static uint Major(ulong dev) => (uint)(((dev >> 32) & 0xFFFFF000u) | ((dev >> 8) & 0xFFFu));

    /// <summary>gnu_dev_minor().</summary>
    public static uint Minor(ulong dev) => (uint)(((dev >> 12) & 0xFFFFFF00u) | (dev & 0xFFu));
}
