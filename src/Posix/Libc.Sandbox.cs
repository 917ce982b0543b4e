using System.Runtime.InteropServices;

namespace Vhostfsd.Posix;

/// <summary>Namespaces, mounts and root changes. Note: unshare and setns act on the calling
/// thread only, while chroot and pivot_root act on every thread that shares its root.</summary>
public static unsafe partial class Libc
{
    // clone/unshare flags.
    public const int CLONE_FS = 0x00000200;
    public const int CLONE_NEWNS = 0x00020000;
    public const int CLONE_NEWUTS = 0x04000000;
    public const int CLONE_NEWIPC = 0x08000000;
    public const int CLONE_NEWUSER = 0x10000000;
    public const int CLONE_NEWPID = 0x20000000;
    public const int CLONE_NEWNET = 0x40000000;

    // mount(2) flags.
    public const ulong MS_RDONLY = 0x1;
    public const ulong MS_NOSUID = 0x2;
    public const ulong MS_NODEV = 0x4;
    public const ulong MS_NOEXEC = 0x8;
    public const ulong MS_REMOUNT = 0x20;
    public const ulong MS_BIND = 0x1000;
    public const ulong MS_MOVE = 0x2000;
    public const ulong MS_REC = 0x4000;
    public const ulong MS_PRIVATE = 0x40000;
    public const ulong MS_SLAVE = 0x80000;
    public const ulong MS_RELATIME = 0x200000;

    // umount2(2) flags.
    public const int MNT_DETACH = 2;

    // x86_64 system call numbers for calls glibc does not wrap.
    public const long SYS_pivot_root = 155;

    [LibraryImport(Lib, EntryPoint = "unshare", SetLastError = true)]
    public static partial int Unshare(int flags);

    [LibraryImport(Lib, EntryPoint = "setns", SetLastError = true)]
    public static partial int Setns(int fd, int nsType);

    [LibraryImport(Lib, EntryPoint = "mount", SetLastError = true)]
    public static partial int Mount(byte* source, byte* target, byte* fsType, ulong flags, void* data);

    [LibraryImport(Lib, EntryPoint = "umount2", SetLastError = true)]
    public static partial int Umount2(byte* target, int flags);

    [LibraryImport(Lib, EntryPoint = "chroot", SetLastError = true)]
    public static partial int Chroot(byte* path);

    [LibraryImport(Lib, EntryPoint = "syscall", SetLastError = true)]
    private static partial long SyscallTwoPointers(long number, byte* first, byte* second);

    /// <summary>pivot_root(2), which glibc does not wrap.</summary>
    public static int PivotRoot(byte* newRoot, byte* putOld) => (int)SyscallTwoPointers(SYS_pivot_root, newRoot, putOld);
}
