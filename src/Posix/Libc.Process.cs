using System.Runtime.InteropServices;

namespace Vhostfsd.Posix;

/// <summary>struct rlimit (two rlim_t, 16 bytes on x86_64).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct RLimit
{
    public const int Size = 16;
    public ulong Current;
    public ulong Maximum;
}

/// <summary>Process-level calls: ids, signals, children, limits, working directory, lock files.</summary>
public static unsafe partial class Libc
{
    // Signals (x86_64 numbering).
    public const int SIGHUP = 1;
    public const int SIGINT = 2;
    public const int SIGKILL = 9;
    public const int SIGUSR1 = 10;
    public const int SIGTERM = 15;
    public const int SIGCHLD = 17;
    public const int SIGSYS = 31;

    // waitpid options.
    public const int WNOHANG = 1;

    // Resource limits.
    public const int RLIMIT_NOFILE = 7;
    public const ulong RLIM_INFINITY = ulong.MaxValue;

    // prctl options used by the daemon.
    public const int PR_SET_PDEATHSIG = 1;
    public const int PR_GET_DUMPABLE = 3;
    public const int PR_SET_NAME = 15;
    /// <summary>The longest name PR_SET_NAME keeps, without the terminating NUL (TASK_COMM_LEN - 1).</summary>
    public const int TaskCommLength = 15;
    public const int PR_CAPBSET_READ = 23;
    public const int PR_CAPBSET_DROP = 24;
    public const int PR_SET_NO_NEW_PRIVS = 38;
    public const int PR_CAP_AMBIENT = 47;
    public const int PR_CAP_AMBIENT_CLEAR_ALL = 4;

    [LibraryImport(Lib, EntryPoint = "getppid")]
    public static partial int GetPPid();

    [LibraryImport(Lib, EntryPoint = "kill", SetLastError = true)]
    public static partial int Kill(int pid, int signal);

    [LibraryImport(Lib, EntryPoint = "waitpid", SetLastError = true)]
    public static partial int WaitPid(int pid, int* status, int options);

    /// <summary>posix_spawn(3): safe to call from a multithreaded process (glibc uses
    /// clone(CLONE_VM|CLONE_VFORK) and runs no user code in the child). The child inherits the
    /// calling thread's namespaces and capability bounding set. argv and envp are
    /// NULL-terminated arrays of NUL-terminated strings. Returns 0 or an errno value (not -1).</summary>
    [LibraryImport(Lib, EntryPoint = "posix_spawn")]
    public static partial int PosixSpawn(int* pid, byte* path, void* fileActions, void* attributes, byte** argv, byte** envp);

    /// <summary>prctl(2) with every argument spelled out (the C prototype is variadic; integer
    /// arguments are passed the same way on the supported ABIs).</summary>
    [LibraryImport(Lib, EntryPoint = "prctl", SetLastError = true)]
    public static partial int Prctl(int option, nuint arg2, nuint arg3, nuint arg4, nuint arg5);

    [LibraryImport(Lib, EntryPoint = "getrlimit", SetLastError = true)]
    public static partial int GetRLimit(int resource, RLimit* limit);

    [LibraryImport(Lib, EntryPoint = "setrlimit", SetLastError = true)]
    public static partial int SetRLimit(int resource, RLimit* limit);

    [LibraryImport(Lib, EntryPoint = "chdir", SetLastError = true)]
    public static partial int Chdir(byte* path);

    [LibraryImport(Lib, EntryPoint = "fchdir", SetLastError = true)]
    public static partial int Fchdir(int fd);

    /// <summary>open(2) for start-up files (lock file); the device uses openat relative to its fds.</summary>
    [LibraryImport(Lib, EntryPoint = "open", SetLastError = true)]
    public static partial int Open(byte* path, int flags, uint mode);

    // wait status decoding (the W* macros of sys/wait.h).
    public static bool WIfExited(int status) => (status & 0x7f) == 0;

    public static int WExitStatus(int status) => (status >> 8) & 0xff;

    public static bool WIfSignaled(int status) => ((status & 0x7f) + 1) >> 1 > 0 && (status & 0x7f) != 0x7f;

    public static int WTermSig(int status) => status & 0x7f;
}
