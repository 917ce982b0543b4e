using System.Collections;
using System.Globalization;
using System.Runtime.InteropServices;
using Serilog;
using Vhostfsd.Cli;
using Vhostfsd.Posix;

namespace Vhostfsd.Hosting;

/// <summary>The parent half of --sandbox=namespace. A .NET process is multithreaded from its
/// first instruction, and unshare(2) of mount, pid and network namespaces changes only the
/// calling thread (and the pid namespace only for its future children). So one dedicated thread
/// unshares, narrows its capability bounding set, and posix_spawn()s a fresh copy of this
/// program: that process starts inside the new namespaces as pid 1, with every one of its
/// threads sharing them and no capability outside the bounding set. It inherits the listening
/// socket and finishes the sandbox itself (<see cref="Sandbox.EnterNamespaceAsChild"/>). The
/// thread then returns to the original namespaces and waits for the child; the parent forwards
/// SIGTERM/SIGINT/SIGHUP to it and exits with its exit code.</summary>
internal static unsafe class NamespaceSpawner
{
    /// <summary>Marks the spawned process: "FD:MNTNS" — the inherited listening fd and the mount
    /// namespace the parent started in (the child refuses to set up mounts if it is still there).</summary>
    public const string ChildEnvironment = "VHOSTFSD_SANDBOX_CHILD";

    public sealed record ChildMarker(int ListenFd, string ParentMountNamespace);

    /// <summary>Reads and removes the marker; null in a process that was not spawned by us.</summary>
    public static ChildMarker? TakeChildMarker()
    {
        string? value = Environment.GetEnvironmentVariable(ChildEnvironment);
        if (value == null)
        {
            return null;
        }
        Environment.SetEnvironmentVariable(ChildEnvironment, null);
        int colon = value.IndexOf(':');
        if (colon <= 0 || !int.TryParse(value.AsSpan(0, colon), NumberStyles.None, CultureInfo.InvariantCulture, out int fd))
        {
            throw new StartupException($"malformed {ChildEnvironment}; it is set only by vhostfsd itself");
        }
        return new ChildMarker(fd, value[(colon + 1)..]);
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

    /// <summary>Checks, in the spawned process, that the namespaces really are new before any
    /// mount is touched: this process must be pid 1 and in another mount namespace than the parent.</summary>
    public static void VerifyInsideNewNamespaces(ChildMarker marker)
    {
        if (Environment.ProcessId != 1)
        {
            throw new StartupException($"{ChildEnvironment} is set but this process is not the first of a new pid namespace; refusing to touch mounts");
        }
        string mine = CurrentMountNamespace();
        if (mine.Length == 0 || mine == marker.ParentMountNamespace)
        {
            throw new StartupException("the sandbox process is still in the host's mount namespace; refusing to touch mounts");
        }
    }

    /// <summary>Spawns the sandboxed copy of this program serving <paramref name="listenFd"/>, waits
    /// for it and returns its exit code. <paramref name="boundingSet"/> is what the child may hold.</summary>
    public static int SpawnAndWait(int listenFd, ulong boundingSet, int lastCap, ILogger log)
    {
        string[] argv = ChildArguments();
        var environment = new List<string>();
        foreach (DictionaryEntry entry in Environment.GetEnvironmentVariables())
        {
            string key = (string)entry.Key;
            if (key != ChildEnvironment)
            {
                environment.Add(key + "=" + (string?)entry.Value);
            }
        }

        // An inheritable copy of the listening socket (dup() does not set FD_CLOEXEC).
        int inherited = Libc.Dup(listenFd);
        if (inherited < 0)
        {
            throw new StartupException($"sandbox: cannot dup the listening socket: {PosixException.Describe(Libc.LastErrno)}");
        }
        environment.Add($"{ChildEnvironment}={inherited}:{CurrentMountNamespace()}");

        var spawn = new SpawnThread(argv, environment, boundingSet, lastCap);
        var thread = new Thread(spawn.Run) { Name = "sandbox-spawn", IsBackground = true };
        thread.Start();
        spawn.Spawned.Wait();
        Libc.Close(inherited);
        if (spawn.Error != null)
        {
            thread.Join();
            throw new StartupException("sandbox: " + spawn.Error);
        }
        int child = spawn.ChildPid;
        if (spawn.RestoreWarning != null)
        {
            log.Debug("Sandbox: {Warning}", spawn.RestoreWarning);
        }
        log.Debug("Sandbox: serving from process {Pid} in new mount, pid and network namespaces", child);

        var registrations = new List<PosixSignalRegistration>();
        foreach (var signal in new[] { PosixSignal.SIGTERM, PosixSignal.SIGINT, PosixSignal.SIGHUP })
        {
            registrations.Add(PosixSignalRegistration.Create(signal, context =>
            {
                context.Cancel = true;
                Libc.Kill(child, SignalNumber(context.Signal));
            }));
        }
        // A signal that came before the child existed was only recorded; pass it on now.
        if (ShutdownSignal.IsRequested)
        {
            Libc.Kill(child, Libc.SIGTERM);
        }
        try
        {
            thread.Join();
        }
        finally
        {
            foreach (var registration in registrations)
            {
                registration.Dispose();
            }
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
        if (Libc.WIfSignaled(status))
        {
            log.Error("The sandboxed daemon (pid {Pid}) was killed by signal {Signal}", child, Libc.WTermSig(status));
            return 128 + Libc.WTermSig(status);
        }
        return ExitCodes.Failure;
    }

    private static int SignalNumber(PosixSignal signal) => signal switch
    {
        PosixSignal.SIGTERM => Libc.SIGTERM,
        PosixSignal.SIGINT => Libc.SIGINT,
        PosixSignal.SIGHUP => Libc.SIGHUP,
        _ => Libc.SIGTERM,
    };

    /// <summary>argv for the copy: the same program and arguments. Under the dotnet host the
    /// executable is the host and the program is the entry assembly.</summary>
    private static string[] ChildArguments()
    {
        string executable = Environment.ProcessPath ?? throw new StartupException("sandbox: cannot find the path of the running executable");
        string[] args = Environment.GetCommandLineArgs();
        var argv = new List<string> { executable };
        if (Path.GetFileNameWithoutExtension(executable) == "dotnet")
        {
            argv.Add(typeof(NamespaceSpawner).Assembly.Location);
        }
        for (int i = 1; i < args.Length; i++)
        {
            argv.Add(args[i]);
        }
        return argv.ToArray();
    }

    /// <summary>The work of the dedicated thread. Everything that allocates or may run managed
    /// machinery is done before unshare; between unshare and the return to the original
    /// namespaces only system calls run (a thread whose pid namespace for children differs
    /// from its own cannot create threads).</summary>
    private sealed class SpawnThread(string[] argv, List<string> environment, ulong boundingSet, int lastCap)
    {
        public readonly ManualResetEventSlim Spawned = new();
        public string? Error;
        public string? WaitError;
        public string? RestoreWarning;
        public int ChildPid;
        public int Status;

        public void Run()
        {
            var allocations = new List<nint>();
            SafeFd? mntNs = null, netNs = null, pidNs = null;
            try
            {
                byte** nativeArgv = ToNative(argv, allocations);
                byte** nativeEnv = ToNative(environment, allocations);
                byte* path = (byte*)Marshal.StringToCoTaskMemUTF8(argv[0]);
                allocations.Add((nint)path);
                mntNs = OpenNamespace("mnt");
                netNs = OpenNamespace("net");
                pidNs = OpenNamespace("pid");

                Capabilities.NarrowBoundingSet(boundingSet, lastCap);

                if (Libc.Unshare(Libc.CLONE_NEWNS | Libc.CLONE_NEWNET | Libc.CLONE_NEWPID) < 0)
                {
                    Error = "cannot create mount, pid and network namespaces (unshare): " + PosixException.Describe(Libc.LastErrno);
                    return;
                }
                int pid;
                int rc = Libc.PosixSpawn(&pid, path, null, null, nativeArgv, nativeEnv);
                // Back to where this thread came from (needs CAP_SYS_ADMIN and CAP_SYS_CHROOT,
                // still effective: only the bounding set was narrowed).
                int restoreMnt = Libc.Setns(mntNs.Fd, Libc.CLONE_NEWNS);
                int restoreNet = Libc.Setns(netNs.Fd, Libc.CLONE_NEWNET);
                int restorePid = Libc.Setns(pidNs.Fd, Libc.CLONE_NEWPID);
                if (rc != 0)
                {
                    Error = $"cannot start the sandboxed process {argv[0]} (posix_spawn): {PosixException.Describe((Errno)rc)}";
                    return;
                }
                ChildPid = pid;
                if (restoreMnt < 0 || restoreNet < 0 || restorePid < 0)
                {
                    // Harmless for the daemon: this thread only waits from now on.
                    RestoreWarning = "the spawning thread could not return to the original namespaces: " + PosixException.Describe(Libc.LastErrno);
                }
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
                mntNs?.Dispose();
                netNs?.Dispose();
                pidNs?.Dispose();
                Spawned.Set();
            }

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
