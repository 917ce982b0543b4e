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
