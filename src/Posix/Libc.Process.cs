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
    public const int SIGTERM = 15;
    public const int SIGCHLD = 17;

    // pthread_sigmask how.
    public const int SIG_BLOCK = 0;
    public const int SIG_UNBLOCK = 1;

    /// <summary>Words of the kernel-sized sigset_t glibc uses (1024 bits).</summary>
    public const int SigSetWords = 16;

    // waitpid options.
    public const int WNOHANG = 1;

    // Resource limits.
    public const int RLIMIT_NOFILE = 7;
    public const ulong RLIM_INFINITY = ulong.MaxValue;

    // prctl options used by the daemon.
    public const int PR_SET_PDEATHSIG = 1;
    public const int PR_GET_DUMPABLE = 3;
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

    /// <summary>execve(2): replaces the process image. Called from any thread of a multithreaded
    /// process, the kernel ends the other threads and the caller continues, with the process's
    /// pid, its own credentials (capability bounding set included), its signal mask and its
    /// pending signals, as the new program's only thread. Returns only on failure (-1).</summary>
    [LibraryImport(Lib, EntryPoint = "execve", SetLastError = true)]
    public static partial int Execve(byte* path, byte** argv, byte** envp);

    /// <summary>pthread_sigmask(3) on the calling thread; <paramref name="set"/> and
    /// <paramref name="old"/> point at <see cref="SigSetWords"/> words (old may be null).
    /// Returns 0 or an errno value (not -1).</summary>
    [LibraryImport(Lib, EntryPoint = "pthread_sigmask")]
    public static partial int PthreadSigmask(int how, ulong* set, ulong* old);

    /// <summary>tgkill(2): a signal for one thread of a process.</summary>
    [LibraryImport(Lib, EntryPoint = "tgkill", SetLastError = true)]
    public static partial int Tgkill(int tgid, int tid, int signal);

    /// <summary>Changes the calling thread's mask for the given signals (1..64) only.</summary>
    public static int ChangeSignalMask(int how, ReadOnlySpan<int> signals)
    {
        ulong* set = stackalloc ulong[SigSetWords];
        new Span<ulong>(set, SigSetWords).Clear();
        foreach (int signal in signals)
        {
            set[(signal - 1) / 64] |= 1UL << ((signal - 1) % 64);
        }
        return PthreadSigmask(how, set, null);
    }

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
