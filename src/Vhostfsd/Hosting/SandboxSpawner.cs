using System.Collections;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using Vhostfsd.Cli;
using Vhostfsd.Logging;
using Vhostfsd.Posix;

namespace Vhostfsd.Hosting;

/// <summary>Starts the process that serves, with its capabilities already narrowed.
///
/// A .NET process is multithreaded from its first instruction, and both unshare(2) and
/// capability sets act on one thread only: dropping capabilities in a running .NET process
/// leaves the runtime's own threads with all of them. So the daemon started by the user is a
/// small supervisor. One dedicated thread of it narrows its capability bounding set and
/// posix_spawn()s a fresh copy of this program; a root execve grants exactly the bounding set,
/// so every thread of the copy, the runtime's included, starts with it and nothing more.
///
/// --sandbox=namespace: before spawning, the thread also unshares mount, pid and network
/// namespaces and makes the new mount tree a slave of the host's. The copy is pid 1 of the new
/// pid namespace and holds only the kept capabilities — it could not change mounts even if it
/// wanted to. It loads what it needs from disk (<see cref="Preload"/>) and then follows a pipe
/// handshake while the spawning thread, still privileged and in the same mount namespace,
/// binds the copy's /proc/PID/fd over /proc and pivots the namespace's root into the share
/// (<see cref="Sandbox.BuildNamespaceSandbox"/>); then the thread returns to the original
/// namespaces.
///
/// --sandbox=chroot: the copy also gets CAP_SYS_CHROOT and CAP_SETPCAP, chroots itself and
/// drops both on its main thread (the device's threads are created from it).
///
/// --sandbox=none: the copy gets the kept set and does nothing else.
///
/// The supervisor forwards SIGTERM/SIGINT/SIGHUP to the copy, exits with its exit code and
/// removes the socket and lock files it created.</summary>
internal static unsafe class SandboxSpawner
{
    /// <summary>Marks the spawned process: "MODE,LISTEN,TOPARENT,FROMPARENT,MNTNS" — the sandbox
    /// mode, inherited fds (-1 when unused) and the mount namespace the parent started in.</summary>
    public const string ChildEnvironment = "VHOSTFSD_SANDBOX_CHILD";

    // Handshake bytes.
    /// <summary>The child has installed its signal handlers: signals may be forwarded.</summary>
    public const byte ChildHandlesSignals = (byte)'S';
    public const byte ChildReady = (byte)'R';
    public const byte ParentBoundProc = (byte)'B';
    public const byte ChildOpenedProc = (byte)'O';
    public const byte ParentPivoted = (byte)'P';
    public const byte ParentFailed = (byte)'E';

    public sealed record ChildMarker(SandboxMode Mode, int ListenFd, int ToParentFd, int FromParentFd, string ParentMountNamespace);

    /// <summary>Reads and removes the marker; null in a process that was not spawned by us.</summary>
    public static ChildMarker? TakeChildMarker()
    {
        string? value = Environment.GetEnvironmentVariable(ChildEnvironment);
        if (value == null)
        {
            return null;
        }
        Environment.SetEnvironmentVariable(ChildEnvironment, null);
        string[] parts = value.Split(',', 5);
        if (parts.Length != 5
            || !Enum.TryParse(parts[0], out SandboxMode mode)
            || !int.TryParse(parts[1], NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out int listen)
            || !int.TryParse(parts[2], NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out int toParent)
            || !int.TryParse(parts[3], NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out int fromParent))
        {
            throw new StartupException($"malformed {ChildEnvironment}; it is set only by vhostfsd itself");
        }
        return new ChildMarker(mode, listen, toParent, fromParent, parts[4]);
    }

    /// <summary>The mount namespace of the calling thread, as the /proc link reads ("mnt:[4026531841]").</summary>
    public static string CurrentMountNamespace()
    {
        try
        {
            return new FileInfo("/proc/thread-self/ns/mnt").LinkTarget ?? "";
        }
        catch (IOException)
        {
            return "";
        }
    }

    /// <summary>Checks, in the spawned process, that the namespaces really are new: this process
    /// must be pid 1 and in another mount namespace than the parent.</summary>
    public static void VerifyInsideNewNamespaces(ChildMarker marker)
    {
        if (Environment.ProcessId != 1)
        {
            throw new StartupException($"{ChildEnvironment} is set but this process is not the first of a new pid namespace");
        }
        string mine = CurrentMountNamespace();
        if (mine.Length == 0 || mine == marker.ParentMountNamespace)
        {
            throw new StartupException("the sandbox process is still in the host's mount namespace");
        }
    }

    /// <summary>Gives the spawned process the name of its executable. Started through
    /// /proc/self/exe, the kernel names it "exe", which ps, pgrep and the journal would show.
    /// PR_SET_NAME names the calling thread, and the main thread's name is the process's (threads
    /// it starts afterwards take it too), so the main thread calls this.</summary>
    public static void NameAfterExecutable()
    {
        string name = Path.GetFileName(Environment.ProcessPath ?? "vhostfsd");
        // At most 4 bytes a character; the kernel keeps the first TaskCommLength bytes.
        Span<byte> utf8 = stackalloc byte[4 * Libc.TaskCommLength];
        int length = Encoding.UTF8.GetBytes(name.AsSpan(0, Math.Min(name.Length, Libc.TaskCommLength)), utf8);
        Span<byte> comm = stackalloc byte[Libc.TaskCommLength + 1];
        comm.Clear();
        utf8[..Math.Min(length, Libc.TaskCommLength)].CopyTo(comm);
        fixed (byte* p = comm)
        {
            Libc.Prctl(Libc.PR_SET_NAME, (nuint)p, 0, 0, 0);
        }
    }

    public static void Send(int fd, byte message)
    {
        if (Libc.WriteAll(fd, new ReadOnlySpan<byte>(ref message)) < 0)
        {
            throw new StartupException("sandbox: the other process went away during set-up");
        }
    }

    /// <summary>Reads one handshake byte and checks it. An error report from the parent
    /// (<see cref="ParentFailed"/> + text) becomes a <see cref="StartupException"/> with its text.</summary>
    public static void Expect(int fd, byte expected)
    {
        Span<byte> one = stackalloc byte[1];
        int n = Libc.ReadSome(fd, one);
        if (n == 1 && one[0] == expected)
        {
            return;
        }
        if (n == 1 && one[0] == ParentFailed)
        {
            Span<byte> text = stackalloc byte[1024];
            int length = 0;
            while (length < text.Length)
            {
                int got = Libc.ReadSome(fd, text[length..]);
                if (got <= 0)
                {
                    break;
                }
                length += got;
            }
            throw new StartupException(Encoding.UTF8.GetString(text[..length]));
        }
        throw new StartupException(n <= 0
            ? "sandbox: the other process went away during set-up"
            : $"sandbox: unexpected handshake byte {one[0]} (expected {expected})");
    }

    /// <summary>Spawns the copy of this program that serves <paramref name="listenFd"/>, builds its
    /// sandbox when <paramref name="mode"/> is namespace, waits for it and returns its exit code.
    /// <paramref name="bounding"/> is the capability set the copy gets.</summary>
    public static int SpawnAndWait(SandboxMode mode, int listenFd, string sharedDir, ulong bounding, int lastCap, Logger log)
    {
        string[] argv = ChildArguments();
        var environment = new List<string>();
        bool diagnosticsChosen = false;
        foreach (DictionaryEntry entry in Environment.GetEnvironmentVariables())
        {
            string key = (string)entry.Key;
            diagnosticsChosen |= key.StartsWith("DOTNET_EnableDiagnostics", StringComparison.Ordinal);
            if (key != ChildEnvironment)
            {
                environment.Add(key + "=" + (string?)entry.Value);
            }
        }
        if (!diagnosticsChosen && Preload.RunsFromAssemblyFiles)
        {
            // On the JIT (make run-jit), the runtime's diagnostics server would create its IPC
            // socket in the host's /tmp and could never remove it from inside the sandbox; leave
            // it off unless asked for. The native executable has no diagnostics server.
            environment.Add("DOTNET_EnableDiagnostics_IPC=0");
        }

        // Pipes for the handshake (close-on-exec), and inheritable duplicates of the child's
        // ends and of the listening socket (dup() does not set FD_CLOEXEC).
        int* toChild = stackalloc int[2];
        int* fromChild = stackalloc int[2];
        PosixException.Check(Libc.Pipe2(toChild, Libc.O_CLOEXEC), "pipe2");
        PosixException.Check(Libc.Pipe2(fromChild, Libc.O_CLOEXEC), "pipe2");
        using var toChildRead = new SafeFd(toChild[0]);
        using var toChildWrite = new SafeFd(toChild[1]);
        using var fromChildRead = new SafeFd(fromChild[0]);
        using var fromChildWrite = new SafeFd(fromChild[1]);
        var inherited = new List<int>();
        try
        {
            int listen = InheritableCopy(listenFd, inherited);
            bool handshake = mode == SandboxMode.Namespace;
            int childWrites = InheritableCopy(fromChildWrite.Fd, inherited);
            int childReads = handshake ? InheritableCopy(toChildRead.Fd, inherited) : -1;
            environment.Add($"{ChildEnvironment}={mode},{listen},{childWrites},{childReads},{CurrentMountNamespace()}");

            // Every termination signal the supervisor gets (ShutdownSignal is set by its handlers,
            // whenever they run) goes to the child; Register runs at once if it already came.
            var forwarder = new SignalForwarder();
            using var forwarding = ShutdownSignal.Token.Register(() => forwarder.Forward(SignalNumber(ShutdownSignal.Reason)));
            var spawn = new SpawnThread(mode, argv, environment, sharedDir, bounding, lastCap, toChildWrite.Fd, fromChildRead.Fd, inherited, forwarder);
            var thread = new Thread(spawn.Run) { Name = "sandbox-spawn", IsBackground = true };
            thread.Start();
            spawn.Spawned.Wait();
            // Only the child may hold these ends now, so its death reads as end-of-file.
            fromChildWrite.Dispose();
            toChildRead.Dispose();
            if (spawn.Error != null)
            {
                thread.Join();
                throw new StartupException("sandbox: " + spawn.Error);
            }
            int child = spawn.ChildPid;
            if (mode == SandboxMode.Namespace)
            {
                log.Debug("Sandbox: serving from process {Pid} in new mount, pid and network namespaces", child);
            }
            else
            {
                log.Debug("Sandbox: serving from process {Pid}", child);
            }
            thread.Join();
            if (spawn.Warning != null)
            {
                log.Debug("Sandbox: {Warning}", spawn.Warning);
            }
            if (spawn.WaitError != null)
            {
                throw new StartupException("sandbox: " + spawn.WaitError);
            }
            int status = spawn.Status;
            if (Libc.WIfExited(status))
            {
                return Libc.WExitStatus(status);
            }
            if (Libc.WIfSignaled(status) && Libc.WTermSig(status) == Libc.SIGSYS)
            {
                log.Error("The serving process (pid {Pid}) was killed by signal {Signal} (SIGSYS): it made a system call "
                    + "outside the seccomp allow-list; the kernel log names it (docs/seccomp.md)", child, Libc.SIGSYS);
                return 128 + Libc.SIGSYS;
            }
            if (Libc.WIfSignaled(status))
            {
                log.Error("The serving process (pid {Pid}) was killed by signal {Signal}", child, Libc.WTermSig(status));
                return 128 + Libc.WTermSig(status);
            }
            return ExitCodes.Failure;
        }
        finally
        {
            foreach (int fd in inherited)
            {
                Libc.Close(fd);
            }
        }
    }

    /// <summary>Passes termination signals to the child, holding the first one back until the
    /// child has installed its handlers (before that, the runtime's default action would kill
    /// it without cleaning up).</summary>
    private sealed class SignalForwarder
    {
        private readonly object _sync = new();
        private int _child;
        private bool _ready;
        private int _pending;

        public void Forward(int signal)
        {
            lock (_sync)
            {
                if (_ready)
                {
                    KillChild(signal);
                }
                else if (_pending == 0)
                {
                    _pending = signal;
                }
            }
        }

        private void KillChild(int signal)
        {
            // Never 0 or negative: kill() would then reach a whole process group.
            if (_child > 0)
            {
                Libc.Kill(_child, signal);
            }
        }

        public void ChildIsReady(int child)
        {
            lock (_sync)
            {
                _child = child;
                _ready = true;
                if (_pending != 0)
                {
                    KillChild(_pending);
                }
            }
        }
    }

    private static int InheritableCopy(int fd, List<int> inherited)
    {
        int copy = Libc.Dup(fd);
        if (copy < 0)
        {
            throw new StartupException($"sandbox: dup: {PosixException.Describe(Libc.LastErrno)}");
        }
        inherited.Add(copy);
        return copy;
    }

    private static int SignalNumber(string? name) => name switch
    {
        "SIGINT" => Libc.SIGINT,
        "SIGHUP" => Libc.SIGHUP,
        _ => Libc.SIGTERM,
    };

    /// <summary>The program the copy runs: this process's own executable through /proc/self/exe,
    /// which names the running file even if a package upgrade replaced the path since.</summary>
    private const string SelfExecutable = "/proc/self/exe";

    /// <summary>argv for the copy: the same program and arguments. The native executable is the
    /// program; under the dotnet host (the JIT build, make run-jit) the executable is the host
    /// and the program is the entry assembly, vhostfsd.dll in the application directory.</summary>
    private static string[] ChildArguments()
    {
        string executable = Environment.ProcessPath ?? SelfExecutable;
        string[] args = Environment.GetCommandLineArgs();
        var argv = new List<string> { executable };
        if (Preload.RunsFromAssemblyFiles && Path.GetFileNameWithoutExtension(executable) == "dotnet")
        {
            argv.Add(Path.Combine(AppContext.BaseDirectory, AppDomain.CurrentDomain.FriendlyName + ".dll"));
        }
        for (int i = 1; i < args.Length; i++)
        {
            argv.Add(args[i]);
        }
        return argv.ToArray();
    }

    /// <summary>The work of the dedicated thread. Between unshare and the return to the original
    /// pid namespace only system calls run: a thread whose pid namespace for children differs
    /// from its own cannot create threads, so nothing may make the runtime start one from here.</summary>
    private sealed class SpawnThread(SandboxMode mode, string[] argv, List<string> environment, string sharedDir, ulong bounding, int lastCap,
        int toChild, int fromChild, List<int> inherited, SignalForwarder forwarder)
    {
        public readonly ManualResetEventSlim Spawned = new();
        public string? Error;
        public string? WaitError;
        public string? Warning;
        public int ChildPid;
        public int Status;

        public void Run()
        {
            var allocations = new List<nint>();
            SafeFd? mntNs = null, netNs = null, pidNs = null;
            bool unshared = false;
            try
            {
                byte** nativeArgv = ToNative(argv, allocations);
                byte** nativeEnv = ToNative(environment, allocations);
                byte* path = (byte*)Marshal.StringToCoTaskMemUTF8(SelfExecutable);
                allocations.Add((nint)path);
                bool namespaces = mode == SandboxMode.Namespace;
                if (namespaces)
                {
                    mntNs = OpenNamespace("mnt");
                    netNs = OpenNamespace("net");
                    pidNs = OpenNamespace("pid");
                }

                // What the child may ever hold; this thread's own effective set is untouched.
                Capabilities.NarrowBoundingSet(bounding, lastCap);

                if (namespaces)
                {
                    if (Libc.Unshare(Libc.CLONE_NEWNS | Libc.CLONE_NEWNET | Libc.CLONE_NEWPID) < 0)
                    {
                        Error = "cannot create mount, pid and network namespaces (unshare): " + PosixException.Describe(Libc.LastErrno);
                        return;
                    }
                    unshared = true;
                    Sandbox.MakeMountsPrivateToNamespace();
                }
                int pid;
                int rc = Libc.PosixSpawn(&pid, path, null, null, nativeArgv, nativeEnv);
                // Children of this thread go to the original pid namespace again (needs
                // CAP_SYS_ADMIN, still effective: only the bounding set was narrowed).
                if (pidNs != null && Libc.Setns(pidNs.Fd, Libc.CLONE_NEWPID) < 0)
                {
                    Warning = "cannot return to the original pid namespace: " + PosixException.Describe(Libc.LastErrno);
                }
                foreach (int fd in inherited)
                {
                    Libc.Close(fd);
                }
                inherited.Clear();
                if (rc != 0)
                {
                    Error = $"cannot start the sandboxed process {argv[0]} (posix_spawn): {PosixException.Describe((Errno)rc)}";
                    return;
                }
                ChildPid = pid;
            }
            catch (Exception e)
            {
                Error = e.Message;
                return;
            }
            finally
            {
                foreach (nint p in allocations)
                {
                    Marshal.FreeCoTaskMem(p);
                }
                if (Error != null && unshared)
                {
                    RestoreNamespaces(mntNs, netNs);
                }
                if (Error != null)
                {
                    mntNs?.Dispose();
                    netNs?.Dispose();
                    pidNs?.Dispose();
                }
                Spawned.Set();
            }

            try
            {
                Expect(fromChild, ChildHandlesSignals);
                forwarder.ChildIsReady(ChildPid);
                if (mode == SandboxMode.Namespace)
                {
                    Sandbox.BuildNamespaceSandbox(sharedDir, ChildPid, toChild, fromChild);
                }
            }
            catch (StartupException e)
            {
                // The child prints it (one line) and exits 1; a child that is gone already does not matter.
                byte[] text = Encoding.UTF8.GetBytes(e.Message);
                byte[] message = new byte[1 + Math.Min(text.Length, 1000)];
                message[0] = ParentFailed;
                text.AsSpan(0, message.Length - 1).CopyTo(message.AsSpan(1));
                Libc.WriteAll(toChild, message);
            }
            if (unshared)
            {
                RestoreNamespaces(mntNs, netNs);
            }
            mntNs?.Dispose();
            netNs?.Dispose();
            pidNs?.Dispose();

            // This thread stays alive until the child exits: the child asked (PR_SET_PDEATHSIG)
            // for SIGTERM when the thread that created it goes away.
            int status;
            while (Libc.WaitPid(ChildPid, &status, 0) < 0)
            {
                if (Libc.LastErrno != Errno.EINTR)
                {
                    WaitError = "waitpid for the sandboxed process: " + PosixException.Describe(Libc.LastErrno);
                    return;
                }
            }
            Status = status;
        }

        private void RestoreNamespaces(SafeFd? mntNs, SafeFd? netNs)
        {
            if ((mntNs != null && Libc.Setns(mntNs.Fd, Libc.CLONE_NEWNS) < 0)
                || (netNs != null && Libc.Setns(netNs.Fd, Libc.CLONE_NEWNET) < 0))
            {
                // Harmless for the daemon: this thread only waits from now on.
                Warning = "the spawning thread could not return to the original namespaces: " + PosixException.Describe(Libc.LastErrno);
            }
        }

        private static SafeFd OpenNamespace(string name)
        {
            fixed (byte* p = Sandbox.Z("/proc/thread-self/ns/" + name))
            {
                int fd = Libc.Open(p, Libc.O_RDONLY | Libc.O_CLOEXEC, 0);
                if (fd < 0)
                {
                    throw new StartupException($"cannot open /proc/thread-self/ns/{name}: {PosixException.Describe(Libc.LastErrno)}");
                }
                return new SafeFd(fd);
            }
        }

        private static byte** ToNative(IReadOnlyList<string> strings, List<nint> allocations)
        {
            var array = (byte**)Marshal.AllocCoTaskMem((strings.Count + 1) * sizeof(nint));
            allocations.Add((nint)array);
            for (int i = 0; i < strings.Count; i++)
            {
                array[i] = (byte*)Marshal.StringToCoTaskMemUTF8(strings[i]);
                allocations.Add((nint)array[i]);
            }
            array[strings.Count] = null;
            return array;
        }
    }
}
