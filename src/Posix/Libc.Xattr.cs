using System.Runtime.InteropServices;

namespace Vhostfsd.Posix;

/// <summary>Extended attributes: the f*xattr calls on open fds and the path calls, used through
/// /proc/self/fd/N for O_PATH fds that f*xattr refuses.</summary>
public static unsafe partial class Libc
{
    public const int XATTR_CREATE = 1;
    public const int XATTR_REPLACE = 2;

    /// <summary>XATTR_NAME_MAX: longest attribute name.</summary>
    public const int XATTR_NAME_MAX = 255;

    /// <summary>XATTR_SIZE_MAX: largest attribute value.</summary>
    public const int XATTR_SIZE_MAX = 65536;

    /// <summary>XATTR_LIST_MAX: largest name list.</summary>
    public const int XATTR_LIST_MAX = 65536;

    [LibraryImport(Lib, EntryPoint = "fgetxattr", SetLastError = true)]
    public static partial nint Fgetxattr(int fd, byte* name, byte* value, nuint size);

    [LibraryImport(Lib, EntryPoint = "fsetxattr", SetLastError = true)]
    public static partial int Fsetxattr(int fd, byte* name, byte* value, nuint size, int flags);

    [LibraryImport(Lib, EntryPoint = "flistxattr", SetLastError = true)]
    public static partial nint Flistxattr(int fd, byte* list, nuint size);

    [LibraryImport(Lib, EntryPoint = "fremovexattr", SetLastError = true)]
    public static partial int Fremovexattr(int fd, byte* name);

    [LibraryImport(Lib, EntryPoint = "getxattr", SetLastError = true)]
    public static partial nint Getxattr(byte* path, byte* name, byte* value, nuint size);

    [LibraryImport(Lib, EntryPoint = "setxattr", SetLastError = true)]
    public static partial int Setxattr(byte* path, byte* name, byte* value, nuint size, int flags);

    [LibraryImport(Lib, EntryPoint = "listxattr", SetLastError = true)]
    public static partial nint Listxattr(byte* path, byte* list, nuint size);

    [LibraryImport(Lib, EntryPoint = "removexattr", SetLastError = true)]
    public static partial int Removexattr(byte* path, byte* name);

    [LibraryImport(Lib, EntryPoint = "lgetxattr", SetLastError = true)]
    public static partial nint Lgetxattr(byte* path, byte* name, byte* value, nuint size);

    [LibraryImport(Lib, EntryPoint = "lsetxattr", SetLastError = true)]
    public static partial int Lsetxattr(byte* path, byte* name, byte* value, nuint size, int flags);
}

/// <summary>struct xattr_args for setxattrat/getxattrat (Linux 6.13+).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct XattrArgs
{
    public const int Size = 16;
    public ulong Value;
    public uint Length;
    public uint Flags;
}

public static unsafe partial class Libc
{
    // x86_64 numbers of the *xattrat calls (Linux 6.13), which glibc 2.36 does not wrap.
    public const long SYS_setxattrat = 463;
    public const long SYS_getxattrat = 464;
    public const long SYS_listxattrat = 465;
    public const long SYS_removexattrat = 466;

    /// <summary>setxattrat(2): with AT_EMPTY_PATH it works on an O_PATH fd of any file type.</summary>
    public static int SetxattrAt(int dirFd, byte* path, int atFlags, byte* name, byte* value, nuint size, int flags)
    {
        var args = new XattrArgs { Value = (ulong)value, Length = (uint)size, Flags = (uint)flags };
        return (int)RawSyscall(SYS_setxattrat, dirFd, (nint)path, atFlags, (nint)name, (nint)(&args), XattrArgs.Size);
    }

    /// <summary>getxattrat(2); returns the value length or -1.</summary>
    public static nint GetxattrAt(int dirFd, byte* path, int atFlags, byte* name, byte* value, nuint size)
    {
        var args = new XattrArgs { Value = (ulong)value, Length = (uint)size };
        return (nint)RawSyscall(SYS_getxattrat, dirFd, (nint)path, atFlags, (nint)name, (nint)(&args), XattrArgs.Size);
    }

    /// <summary>listxattrat(2); returns the list length or -1.</summary>
    public static nint ListxattrAt(int dirFd, byte* path, int atFlags, byte* list, nuint size)
        => (nint)RawSyscall(SYS_listxattrat, dirFd, (nint)path, atFlags, (nint)list, (nint)size);

    /// <summary>removexattrat(2).</summary>
    public static int RemovexattrAt(int dirFd, byte* path, int atFlags, byte* name)
        => (int)RawSyscall(SYS_removexattrat, dirFd, (nint)path, atFlags, (nint)name);
}
