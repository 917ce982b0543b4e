using System.Runtime.InteropServices;
using Vhostfsd.Cli;
using Vhostfsd.Logging;
using Vhostfsd.Posix;

namespace Vhostfsd.Hosting;

/// <summary>The system-call filter of the serving process (--seccomp): one allow-list, reviewed
/// here group by group, compiled into a classic BPF program and installed on every thread before
/// the first guest request. docs/seccomp.md describes the modes and how the list was measured.
///
/// The program is written by hand instead of through libseccomp so that the daemon — the
/// planned native (AOT) binary included — needs no native library besides libc, and so that
/// the tests can run the very program that is installed (<see cref="Build"/>) through an
/// interpreter. It checks the ABI first (a call through another one — i386's int 0x80, x32 —
/// carries numbers that mean other calls, and the daemon never makes one: the process is
/// killed whatever the mode), then compares the number with each allowed one in turn. The
/// linear scan costs nothing in steady state: since Linux 5.11 the kernel notices that the
/// result for a number does not depend on the arguments and caches "allow" per number, so an
/// allowed call skips the filter entirely.
///
/// Numbers are checked, not arguments — the list says which kernel interfaces the daemon can
/// reach, the sandbox and the capability set say on what — except where a call would be allowed
/// for one harmless use only (<see cref="ArgumentRules"/>).</summary>
internal static unsafe class SeccompPolicy
{
    /// <summary>A group of calls allowed for one reason.</summary>
    internal sealed record Group(string Reason, string[] Calls);

    /// <summary>A call allowed only when its argument number <see cref="Argument"/> (its low 32
    /// bits: every such argument is a C int) is one of <see cref="Values"/>.</summary>
    internal sealed record ArgumentRule(string Call, int Argument, uint[] Values, string Reason);

    /// <summary>A system call's number on each supported architecture; -1 where it does not
    /// exist (aarch64 has only the *at and p*poll forms of the old path and poll calls).</summary>
    internal sealed record Syscall(string Name, int X64, int Arm64);

    /// <summary>The allow-list. Measured (scripts/seccomp/measure.sh under every test suite, the
    /// soak, the fuzzers, the real-guest suite and the benchmark); calls that measurement cannot
    /// reach on demand are here by reasoning and say so. Keep each group's reason true when
    /// adding a call: a call missing from this list kills the daemon in production.</summary>
    internal static readonly Group[] Groups =
    [
        // allow-list:begin
        new("The vhost-user connection: accepting it (the filter goes in before), its messages "
            + "with fds (SCM_RIGHTS) and the peer's credentials, the guest memory and rings mapped "
            + "from those fds, the kick/call/error eventfds each queue thread polls, and dup and "
            + "shutdown, which end the session when a termination signal comes. ppoll is poll on "
            + "aarch64.",
            ["accept4", "recvmsg", "sendmsg", "getsockopt", "shutdown", "mmap", "munmap", "read", "write",
             "close", "dup", "fcntl", "eventfd2", "poll", "ppoll"]),
        new("FUSE requests on the shared directory, every one relative to an O_PATH fd or a file "
            + "handle: lookup and attributes, directory listing, creation, links, renames, data, "
            + "sync, space, copy, seek (SEEK_DATA/HOLE), statfs. renameat is glibc's renameat2 "
            + "without flags; fchmodat2 is how glibc 2.39 and later change a mode without "
            + "following symlinks (not made on this host's glibc 2.36).",
            ["openat", "openat2", "open_by_handle_at", "name_to_handle_at", "statx", "newfstatat", "getdents64",
             "lseek", "readlinkat", "mkdirat", "mknodat", "symlinkat", "unlinkat", "renameat", "renameat2", "linkat",
             "fchmod", "fchmodat", "fchmodat2", "fchownat", "utimensat", "fallocate", "ftruncate", "preadv2",
             "pwritev2", "fsync", "fdatasync", "syncfs", "copy_file_range", "fstatfs", "umask"]),
        new("READ replies of the host FUSE mount (--fuse-mount) by reference: splice of the file's "
            + "pages into a reader's pipe, of that pipe into the reply pipe, and of the reply into "
            + "/dev/fuse (pipe2 and fcntl F_SETPIPE_SZ are allowed for other reasons; the pipes are "
            + "made before the filter goes in).",
            ["splice"]),
        new("Extended attributes, POSIX ACLs and security labels (--xattr, --posix-acl, "
            + "--security-label): the *xattrat calls of Linux 6.13, and the fd and /proc/self/fd "
            + "path forms the daemon falls back to on older kernels (not reachable on this 6.18 "
            + "host: kept by reading FuseServer.Xattr.cs and FuseServer.Entries.cs). fgetxattr "
            + "also looks for a directory's default ACL when the guest creates in it with "
            + "DONT_MASK, whatever the options.",
            ["setxattrat", "getxattrat", "listxattrat", "removexattrat", "fgetxattr", "fsetxattr", "flistxattr",
             "fremovexattr", "getxattr", "setxattr", "listxattr", "removexattr", "lsetxattr"]),
        new("Locks the guest takes: flock, and fcntl's open file description locks (fcntl is in "
            + "the first group).",
            ["flock"]),
        new("Acting for the guest's user on one thread: file-system ids, the raw per-thread "
            + "setgroups for the groups the guest sends (glibc's wrapper would change every "
            + "thread), and the daemon's own euid and groups, read to restore them.",
            ["setfsuid", "setfsgid", "setgroups", "getgroups", "geteuid"]),
        new("Per-request privileges on one thread: capget and capset, with which a write, truncation or "
            + "chown the guest marked KILL_SUIDGID runs without CAP_FSETID (--killpriv-v2), so the "
            + "kernel clears the setuid/setgid bits as it does for the guest's caller; fchdir, with "
            + "which a thread moves its own working directory into the /proc/self/fd directory for "
            + "the path-only xattr calls of kernels before 6.13 and back (unshare below gives the "
            + "thread that working directory of its own).",
            ["capget", "capset", "fchdir"]),
        new("The .NET runtime's threads (queue threads, the blocking-request pool, the thread pool, "
            + "the finalizer, tiered compilation): starting one (clone3, and clone where a "
            + "container's own filter refuses clone3 and glibc falls back), its robust futex list, "
            + "rseq area and signal stack, its CPU affinity and scheduling taken from the process, "
            + "the pipe the runtime makes and closes while the thread starts, and its end.",
            ["clone3", "clone", "exit", "set_robust_list", "rseq", "sigaltstack", "sched_getaffinity",
             "sched_setaffinity", "sched_getscheduler", "sched_setscheduler", "sched_getparam",
             "sched_get_priority_min", "sched_get_priority_max", "gettid", "getpid", "pipe2"]),
        new("The .NET runtime's memory and bookkeeping: the garbage collector's heap and the JIT's "
            + "code (mapped twice through an in-memory file, resized with ftruncate above), glibc's "
            + "malloc (brk; mremap when it grows a large block: not seen, kept because any native "
            + "realloc can make it), membarrier to flush the other threads' writes when the runtime "
            + "suspends them for a collection, sysinfo for the collector's memory load, getrusage "
            + "for the thread pool's CPU use, prlimit64 for the RLIMIT_NOFILE the fd budget reads "
            + "when the session starts.",
            ["mprotect", "madvise", "brk", "mremap", "membarrier", "sysinfo", "getrusage", "prlimit64"]),
        new("Waiting and time: futexes behind every lock and wait, yields and sleeps of spin waits "
            + "and of the lock requests that poll (nanosleep for other glibc builds), the kernel's "
            + "restart of a wait a signal interrupted, and clock_gettime, which the vDSO answers "
            + "without a system call unless the host's clock source cannot be read from user "
            + "space (then every timestamp would kill the daemon).",
            ["futex", "sched_yield", "clock_nanosleep", "nanosleep", "restart_syscall", "clock_gettime"]),
        new("Signals: SIGTERM/SIGINT/SIGHUP (PosixSignalRegistration: a handler that writes to a "
            + "pipe read by the runtime's signal thread; the handlers are removed at exit), and "
            + "tgkill, with which the runtime interrupts a thread running managed code to suspend "
            + "it for a collection and abort() raises SIGABRT (not seen: kept for both).",
            ["rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "tgkill"]),
        new("--syslog: each message is a send(2) on the datagram socket connected before the "
            + "sandbox (sendmsg is allowed anyway).",
            ["sendto"]),
        new("Leaving: the process's exit; unlink for the runtime's debugger pipes "
            + "(/tmp/clr-debug-pipe-*) removed at exit and, in an unprivileged daemon (one "
            + "process, no supervisor), its socket and lock file.",
            ["exit_group", "unlink"]),
        // allow-list:end
    ];

    /// <summary>Calls allowed for one use only; anything else they are asked gets the mode's action.</summary>
    internal static readonly ArgumentRule[] ArgumentRules =
    [
        // argument-rules:begin
        new("unshare", 0, [Libc.CLONE_FS],
            "A thread that creates files or takes the path-only xattr calls gets its own fs_struct "
            + "(CLONE_FS), once, so that its umask (0) and working directory are its own and no other "
            + "thread's change. No namespace: every other flag gets the mode's action."),
        new("prctl", 0, [Libc.PR_SET_NAME],
            "A thread of the runtime names itself (pthread_setname_np: PR_SET_NAME) as it starts, which "
            + "can be after the filter went in for a thread created just before (seen: the signal "
            + "thread, with logging off). No other prctl: they are start-up work or nothing the "
            + "daemon does."),
        // argument-rules:end
    ];

    /// <summary>Numbers of every call the policy names, per architecture (x86_64:
    /// arch/x86/entry/syscalls/syscall_64.tbl; aarch64: include/uapi/asm-generic/unistd.h). A
    /// test compares them with the kernel headers where those are installed.</summary>
    internal static readonly Syscall[] Table =
    [
        // syscall-table:begin
        new("read", 0, 63),
        new("write", 1, 64),
        new("close", 3, 57),
        new("poll", 7, -1),
        new("lseek", 8, 62),
        new("mmap", 9, 222),
        new("mprotect", 10, 226),
        new("munmap", 11, 215),
        new("brk", 12, 214),
        new("rt_sigaction", 13, 134),
        new("rt_sigprocmask", 14, 135),
        new("rt_sigreturn", 15, 139),
        new("sched_yield", 24, 124),
        new("mremap", 25, 216),
        new("madvise", 28, 233),
        new("dup", 32, 23),
        new("nanosleep", 35, 101),
        new("getpid", 39, 172),
        new("sendto", 44, 206),
        new("sendmsg", 46, 211),
        new("recvmsg", 47, 212),
        new("shutdown", 48, 210),
        new("getsockopt", 55, 209),
        new("clone", 56, 220),
        new("exit", 60, 93),
        new("fcntl", 72, 25),
        new("flock", 73, 32),
        new("fsync", 74, 82),
        new("fdatasync", 75, 83),
        new("ftruncate", 77, 46),
        new("fchdir", 81, 50),
        new("unlink", 87, -1),
        new("fchmod", 91, 52),
        new("umask", 95, 166),
        new("getrusage", 98, 165),
        new("sysinfo", 99, 179),
        new("geteuid", 107, 175),
        new("getgroups", 115, 158),
        new("setgroups", 116, 159),
        new("setfsuid", 122, 151),
        new("setfsgid", 123, 152),
        new("capget", 125, 90),
        new("capset", 126, 91),
        new("sigaltstack", 131, 132),
        new("fstatfs", 138, 44),
        new("sched_getparam", 143, 121),
        new("sched_setscheduler", 144, 119),
        new("sched_getscheduler", 145, 120),
        new("sched_get_priority_max", 146, 125),
        new("sched_get_priority_min", 147, 126),
        new("prctl", 157, 167),
        new("gettid", 186, 178),
        new("setxattr", 188, 5),
        new("lsetxattr", 189, 6),
        new("fsetxattr", 190, 7),
        new("getxattr", 191, 8),
        new("fgetxattr", 193, 10),
        new("listxattr", 194, 11),
        new("flistxattr", 196, 13),
        new("removexattr", 197, 14),
        new("fremovexattr", 199, 16),
        new("futex", 202, 98),
        new("sched_setaffinity", 203, 122),
        new("sched_getaffinity", 204, 123),
        new("getdents64", 217, 61),
        new("restart_syscall", 219, 128),
        new("clock_gettime", 228, 113),
        new("clock_nanosleep", 230, 115),
        new("exit_group", 231, 94),
        new("tgkill", 234, 131),
        new("openat", 257, 56),
        new("mkdirat", 258, 34),
        new("mknodat", 259, 33),
        new("fchownat", 260, 54),
        new("newfstatat", 262, 79),
        new("unlinkat", 263, 35),
        new("renameat", 264, 38),
        new("linkat", 265, 37),
        new("symlinkat", 266, 36),
        new("readlinkat", 267, 78),
        new("fchmodat", 268, 53),
        new("ppoll", 271, 73),
        new("unshare", 272, 97),
        new("set_robust_list", 273, 99),
        new("splice", 275, 76),
        new("utimensat", 280, 88),
        new("fallocate", 285, 47),
        new("accept4", 288, 242),
        new("eventfd2", 290, 19),
        new("pipe2", 293, 59),
        new("prlimit64", 302, 261),
        new("name_to_handle_at", 303, 264),
        new("open_by_handle_at", 304, 265),
        new("syncfs", 306, 267),
        new("renameat2", 316, 276),
        new("membarrier", 324, 283),
        new("copy_file_range", 326, 285),
        new("preadv2", 327, 286),
        new("pwritev2", 328, 287),
        new("statx", 332, 291),
        new("rseq", 334, 293),
        new("clone3", 435, 435),
        new("openat2", 437, 437),
        new("fchmodat2", 452, 452),
        new("setxattrat", 463, 463),
        new("getxattrat", 464, 464),
        new("listxattrat", 465, 465),
        new("removexattrat", 466, 466),
        // syscall-table:end
    ];

    /// <summary>What a call outside the list gets in each mode.</summary>
    public static uint DefaultAction(SeccompMode mode) => mode switch
    {
        SeccompMode.Kill => Libc.SECCOMP_RET_KILL_PROCESS,
        SeccompMode.Log => Libc.SECCOMP_RET_LOG,
        SeccompMode.Trap => Libc.SECCOMP_RET_TRAP,
        _ => throw new ArgumentOutOfRangeException(nameof(mode), mode, "no filter for this mode"),
    };

    /// <summary>The AUDIT_ARCH value of the native ABI, or 0 for an architecture the policy has no
    /// numbers for.</summary>
    public static uint AuditArch(Architecture architecture) => architecture switch
    {
        Architecture.X64 => Libc.AUDIT_ARCH_X86_64,
        Architecture.Arm64 => Libc.AUDIT_ARCH_AARCH64,
        _ => 0,
    };

    /// <summary>The number of <paramref name="name"/> on <paramref name="architecture"/>, or -1.</summary>
    public static int Number(string name, Architecture architecture)
    {
        foreach (Syscall call in Table)
        {
            if (call.Name == name)
            {
                return architecture == Architecture.X64 ? call.X64 : architecture == Architecture.Arm64 ? call.Arm64 : -1;
            }
        }
        return -1;
    }

    /// <summary>The allowed numbers on <paramref name="architecture"/>, ascending, each once.</summary>
    public static int[] AllowedNumbers(Architecture architecture)
    {
        var numbers = new SortedSet<int>();
        foreach (Group group in Groups)
        {
            foreach (string name in group.Calls)
            {
                int number = KnownNumber(name, architecture);
                if (number >= 0)
                {
                    numbers.Add(number);
                }
            }
        }
        var result = new int[numbers.Count];
        numbers.CopyTo(result);
        return result;
    }

    /// <summary><see cref="Number"/>, for a name the table must hold.</summary>
    private static int KnownNumber(string name, Architecture architecture)
    {
        foreach (Syscall call in Table)
        {
            if (call.Name == name)
            {
                return Number(name, architecture);
            }
        }
        throw new InvalidOperationException($"seccomp policy: {name} has no entry in the number table");
    }

    /// <summary>The filter for <paramref name="mode"/> on <paramref name="architecture"/>:
    /// <code>
    ///   load arch; if != native: kill
    ///   load nr; (x86_64) if nr &gt;= x32 bit: kill
    ///   if nr == allowed[0]: allow ... if nr == allowed[n-1]: allow
    ///   if nr == rule[0].call: check rule[0] ... (each rule: load the argument, allow the listed values)
    ///   return the mode's action
    /// </code>
    /// Classic BPF jumps only forward, at most 255 instructions: each rule's check follows the
    /// scan with its own "allow" and "default" returns.</summary>
    public static SockFilter[] Build(SeccompMode mode, Architecture architecture)
    {
        uint arch = AuditArch(architecture);
        if (arch == 0)
        {
            throw new StartupException($"--seccomp: no system-call table for {architecture}; use --seccomp=none");
        }
        uint action = DefaultAction(mode);
        int[] allowed = AllowedNumbers(architecture);
        var rules = new List<(int Number, ArgumentRule Rule)>();
        foreach (ArgumentRule rule in ArgumentRules)
        {
            int number = KnownNumber(rule.Call, architecture);
            if (number >= 0)
            {
                rules.Add((number, rule));
            }
        }

        var program = new List<SockFilter>(allowed.Length + 16)
        {
            SockFilter.Statement(Libc.BPF_LD | Libc.BPF_W | Libc.BPF_ABS, Libc.SECCOMP_DATA_ARCH),
            SockFilter.Jump(Libc.BPF_JMP | Libc.BPF_JEQ | Libc.BPF_K, arch, 1, 0),
            SockFilter.Statement(Libc.BPF_RET | Libc.BPF_K, Libc.SECCOMP_RET_KILL_PROCESS),
            SockFilter.Statement(Libc.BPF_LD | Libc.BPF_W | Libc.BPF_ABS, Libc.SECCOMP_DATA_NR),
        };
        if (architecture == Architecture.X64)
        {
            program.Add(SockFilter.Jump(Libc.BPF_JMP | Libc.BPF_JGE | Libc.BPF_K, Libc.__X32_SYSCALL_BIT, 0, 1));
            program.Add(SockFilter.Statement(Libc.BPF_RET | Libc.BPF_K, Libc.SECCOMP_RET_KILL_PROCESS));
        }
        // Comparisons left after the one at i, then the default return, then "allow".
        int scan = allowed.Length + rules.Count;
        for (int i = 0; i < allowed.Length; i++)
        {
            program.Add(SockFilter.Jump(Libc.BPF_JMP | Libc.BPF_JEQ | Libc.BPF_K, (uint)allowed[i], Offset(scan - i), 0));
        }
        // Rule j's check starts after the remaining comparisons, the two returns and the checks before it.
        int checks = 0;
        for (int j = 0; j < rules.Count; j++)
        {
            int toCheck = rules.Count - 1 - j + 2 + checks;
            program.Add(SockFilter.Jump(Libc.BPF_JMP | Libc.BPF_JEQ | Libc.BPF_K, (uint)rules[j].Number, Offset(toCheck), 0));
            checks += CheckLength(rules[j].Rule);
        }
        program.Add(SockFilter.Statement(Libc.BPF_RET | Libc.BPF_K, action));
        program.Add(SockFilter.Statement(Libc.BPF_RET | Libc.BPF_K, Libc.SECCOMP_RET_ALLOW));
        foreach (var (_, rule) in rules)
        {
            // The low word of a 64-bit argument (both architectures are little-endian).
            program.Add(SockFilter.Statement(Libc.BPF_LD | Libc.BPF_W | Libc.BPF_ABS, Libc.SECCOMP_DATA_ARGS + 8 * (uint)rule.Argument));
            for (int v = 0; v < rule.Values.Length; v++)
            {
                program.Add(SockFilter.Jump(Libc.BPF_JMP | Libc.BPF_JEQ | Libc.BPF_K, rule.Values[v], Offset(rule.Values.Length - v), 0));
            }
            program.Add(SockFilter.Statement(Libc.BPF_RET | Libc.BPF_K, action));
            program.Add(SockFilter.Statement(Libc.BPF_RET | Libc.BPF_K, Libc.SECCOMP_RET_ALLOW));
        }
        if (program.Count > Libc.BPF_MAXINSNS)
        {
            throw new InvalidOperationException($"seccomp policy: {program.Count} instructions are more than a filter may hold");
        }
        return program.ToArray();
    }

    private static int CheckLength(ArgumentRule rule) => 1 + rule.Values.Length + 2;

    private static byte Offset(int instructions) => instructions <= byte.MaxValue
        ? (byte)instructions
        : throw new InvalidOperationException($"seccomp policy: a jump of {instructions} instructions does not fit classic BPF");

    /// <summary>Installs the filter for <paramref name="mode"/> on every thread of this process
    /// (nothing for <see cref="SeccompMode.None"/>). Sets no_new_privs first: seccomp requires it
    /// from a thread without CAP_SYS_ADMIN, and the daemon never executes anything.</summary>
    public static void Install(SeccompMode mode, Logger log)
    {
        if (mode == SeccompMode.None)
        {
            log.Debug("System-call filter: none");
            return;
        }
        SockFilter[] program = Build(mode, RuntimeInformation.ProcessArchitecture);
        if (Libc.Prctl(Libc.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
        {
            throw new StartupException("seccomp: cannot set no_new_privs: " + PosixException.Describe(Libc.LastErrno));
        }
        long rc;
        fixed (SockFilter* instructions = program)
        {
            var fprog = new SockFprog { Length = (ushort)program.Length, Filter = instructions };
            // SAFETY: fprog points at the pinned program for the duration of the call; the kernel copies it.
            rc = Libc.SeccompSetModeFilter(Libc.SECCOMP_FILTER_FLAG_TSYNC | Libc.SECCOMP_FILTER_FLAG_LOG, &fprog);
        }
        if (rc < 0)
        {
            throw new StartupException("seccomp: cannot install the system-call filter: " + PosixException.Describe(Libc.LastErrno));
        }
        if (rc > 0)
        {
            throw new StartupException($"seccomp: thread {rc} could not take the system-call filter");
        }
        log.Debug("System-call filter in force on every thread: {Mode}, {Count} calls allowed ({Restricted} for some arguments only)",
            mode.ToString().ToLowerInvariant(), AllowedNumbers(RuntimeInformation.ProcessArchitecture).Length + ArgumentRules.Length,
            ArgumentRules.Length);
    }
}
