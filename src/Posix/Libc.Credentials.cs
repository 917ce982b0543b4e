using System.Runtime.InteropServices;

namespace Vhostfsd.Posix;

/// <summary>Credentials. glibc's setresuid/setresgid/setgroups change every thread of the process
/// (they broadcast by signal); the raw system calls and setfsuid/setfsgid change only the calling
/// thread, which is what a worker acting for one guest request needs.</summary>
public static unsafe partial class Libc
{
    public const long SYS_setgroups = 116;
    public const long SYS_setresuid = 117;
    public const long SYS_setresgid = 119;

    /// <summary>Largest supplementary group list (NGROUPS_MAX).</summary>
    public const int NGROUPS_MAX = 65536;

    [LibraryImport(Lib, EntryPoint = "getuid")]
    public static partial uint GetUid();

    [LibraryImport(Lib, EntryPoint = "geteuid")]
    public static partial uint GetEuid();

    [LibraryImport(Lib, EntryPoint = "getgid")]
    public static partial uint GetGid();

    [LibraryImport(Lib, EntryPoint = "getegid")]
    public static partial uint GetEgid();

    /// <summary>setfsuid(2): returns the previous fsuid (it never fails visibly; compare to check).</summary>
    [LibraryImport(Lib, EntryPoint = "setfsuid")]
    public static partial int SetFsUid(uint uid);

    /// <summary>setfsgid(2): returns the previous fsgid.</summary>
    [LibraryImport(Lib, EntryPoint = "setfsgid")]
    public static partial int SetFsGid(uint gid);

    [LibraryImport(Lib, EntryPoint = "getgroups", SetLastError = true)]
    public static partial int GetGroups(int size, uint* list);

    /// <summary>setresuid for the calling thread only (raw system call; -1 leaves an id unchanged).</summary>
    public static int SetResUidThread(uint ruid, uint euid, uint suid)
        => (int)RawSyscall(SYS_setresuid, (nint)ruid, (nint)euid, (nint)suid);

    /// <summary>setresgid for the calling thread only (raw system call).</summary>
    public static int SetResGidThread(uint rgid, uint egid, uint sgid)
        => (int)RawSyscall(SYS_setresgid, (nint)rgid, (nint)egid, (nint)sgid);

    /// <summary>glibc's setgroups(2): changes the supplementary groups of every thread of the process
    /// (glibc broadcasts it), which is what start-up wants before any thread acts for the guest.
    /// Needs CAP_SETGID.</summary>
    [LibraryImport(Lib, EntryPoint = "setgroups", SetLastError = true)]
    public static partial int SetGroupsProcess(nuint count, uint* groups);

    /// <summary>setgroups for the calling thread only (raw system call; needs CAP_SETGID).</summary>
    public static int SetGroupsThread(int count, uint* groups)
        => (int)RawSyscall(SYS_setgroups, count, (nint)groups);
}
