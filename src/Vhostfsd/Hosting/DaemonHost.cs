using System.Runtime.InteropServices;
using Vhostfsd.Cli;
using Vhostfsd.Device;
using Vhostfsd.Logging;
using Vhostfsd.Posix;

namespace Vhostfsd.Hosting;

/// <summary>The daemon's life: command line, logging, socket, resource limit, sandbox,
/// capabilities, one connection served by <see cref="FsDaemon.Serve"/>, clean exit.</summary>
internal static unsafe class DaemonHost
{
    /// <summary>What --print-capabilities prints: QEMU's vhost-user back-end JSON. Only features
    /// that hold are listed: the Rust-style separate options are accepted; migration is not
    /// offered, so no "migrate-precopy".</summary>
    public const string CapabilitiesJson = "{\n  \"type\": \"fs\",\n  \"features\": [\n    \"separate-options\"\n  ]\n}\n";

    public static int Run(string[] args)
    {
        ParsedCommandLine parsed = CommandLine.Parse(args, FdTextWriter.StandardOutput);
        if (parsed.Outcome == CommandLineOutcome.Printed)
        {
            return ExitCodes.Success;
        }
        DaemonOptions options = parsed.Options;
        if (options.PrintCapabilities)
        {
            FdTextWriter.StandardOutput.Write(CapabilitiesJson);
            FdTextWriter.StandardOutput.Flush();
            return ExitCodes.Success;
        }

        SandboxSpawner.ChildMarker? child = SandboxSpawner.TakeChildMarker();
        var notes = new List<string>();
        DaemonLogLevel level = LogSetup.EffectiveLevel(options.LogLevel, out string? levelNote);
        using Logger logger = LogSetup.Create(level, options.Syslog, HostPid(), FdTextWriter.StandardError, notes);
        // Information, Warning, ... are default members of Logger: reachable through the interface.
        Logger log = logger;
        try
        {
            if (child == null)
            {
                // The spawned copy parses the same line; warn once.
                foreach (string warning in options.Warnings)
                {
                    log.Warning("{Warning}", warning);
                }
                if (levelNote != null)
                {
                    log.Debug("{Note}", levelNote);
                }
            }
            foreach (string note in notes)
            {
                log.Warning("{Note}", note);
            }
            return child == null ? RunMain(options, log) : RunSandboxChild(options, child, log);
        }
        catch (Exception e) when (e is UsageException or StartupException)
        {
            // Logged as well as printed by Program when logging goes elsewhere (syslog).
            if (options.Syslog)
            {
                log.Error("{Message}", e.Message);
            }
            throw;
        }
    }

    private static int RunMain(DaemonOptions options, Logger log)
    {
        if (options.FuseMount != null)
        {
            return FuseMountHost.RunSupervisor(options, log);
        }
        string sharedDir = CheckSharedDir(options.SharedDir!);
        using var signals = InstallShutdownSignals();
        int lastCap = Capabilities.KernelLastCap();

        DaemonListener listener;
        if (options.Fd is int fd)
        {
            listener = DaemonListener.Adopt(fd);
            // The fd may also come through systemd's variables; they are ours only once.
            DaemonListener.SocketActivationFd();
        }
        else if (options.SocketPath != null)
        {
            listener = DaemonListener.Create(options.SocketPath, options.SocketGroup, log);
        }
        else if (DaemonListener.SocketActivationFd() is int activated)
        {
            log.Information("Using the socket passed by systemd (fd {Fd})", activated);
            listener = DaemonListener.Adopt(activated);
        }
        else
        {
            throw new UsageException("missing --socket-path PATH or --fd N (the vhost-user socket)");
        }

        try
        {
            ResourceLimits.SetUpNofile(options.RlimitNofile, log);
            ulong keep = Capabilities.KeptMask(options.InodeFileHandles, options.ModCaps);
            bool root = Libc.GetEuid() == 0;
            if (options.Sandbox != SandboxMode.None && !root)
            {
                throw new StartupException(options.Sandbox == SandboxMode.Namespace
                    ? "--sandbox=namespace needs root (CAP_SYS_ADMIN); run as root or use --sandbox=none"
                    : "--sandbox=chroot needs root (CAP_SYS_CHROOT); use --sandbox=none to run unprivileged");
            }
            if (!root)
            {
                // Unprivileged: nothing to drop, so no reason for a second process.
                SandboxResult result = Sandbox.EnterNone(sharedDir);
                return Serve(options, sharedDir, result, listener, lastCap, log);
            }
            // Before the copy is spawned: it inherits the empty list.
            SupplementaryGroups.DropAll(log);
            ulong bounding = keep;
            if (options.Sandbox == SandboxMode.Chroot)
            {
                // The copy chroots itself, then drops these two on its main thread.
                bounding |= (1UL << Capabilities.SysChroot) | (1UL << Capabilities.Setpcap);
            }
            log.Information("Listening on {Socket}", Describe(listener));
            int code = SandboxSpawner.SpawnAndWait(options.Sandbox, listener.Socket.Fd, sharedDir, bounding, lastCap, log);
            log.Information("Exiting with code {Code}", code);
            return code;
        }
        finally
        {
            listener.RemoveFiles();
            listener.Dispose();
        }
    }

    /// <summary>The process spawned by <see cref="SandboxSpawner"/>, holding the listening socket
    /// the parent created and no capability outside its bounding set.</summary>
    private static int RunSandboxChild(DaemonOptions options, SandboxSpawner.ChildMarker marker, Logger log)
    {
        // SIGTERM when the parent's spawning thread (and so the parent) goes away.
        Libc.Prctl(Libc.PR_SET_PDEATHSIG, Libc.SIGTERM, 0, 0, 0);
        SandboxSpawner.NameAfterExecutable();
        using var signals = InstallShutdownSignals();
        using var toParent = new SafeFd(marker.ToParentFd);
        SandboxSpawner.Send(toParent.Fd, SandboxSpawner.ChildHandlesSignals);
        if (marker.Mode == SandboxMode.Namespace)
        {
            SandboxSpawner.VerifyInsideNewNamespaces(marker);
        }
        string sharedDir = CheckSharedDir(options.SharedDir!);
        int lastCap = Capabilities.KernelLastCap();
        if (options.FuseMount != null)
        {
            return FuseMountHost.RunChild(options, marker, sharedDir, lastCap, log);
        }
        using DaemonListener listener = DaemonListener.Adopt(marker.ListenFd);
        SandboxResult result;
        switch (marker.Mode)
        {
            case SandboxMode.Namespace:
                log.Debug("Loaded {Count} assemblies before the sandbox", Preload.BeforeSandbox());
                result = Sandbox.JoinNamespaceSandbox(marker);
                break;
            case SandboxMode.Chroot:
                log.Debug("Loaded {Count} assemblies before the sandbox", Preload.BeforeSandbox());
                result = Sandbox.EnterChroot(sharedDir);
                break;
            default:
                result = Sandbox.EnterNone(sharedDir);
                break;
        }
        return Serve(options, sharedDir, result, listener, lastCap, log, logListening: false);
    }

    /// <summary>What the command line says about the shared file system, the same for both
    /// transports (the virtio device and --fuse-mount): one place, so an option that changes what a
    /// request may do cannot reach one transport and not the other.</summary>
    internal static DaemonSettings ShareSettings(DaemonOptions options, SandboxResult sandbox) => new()
    {
        SharedRoot = sandbox.SharedRoot,
        Cache = options.Cache,
        Xattr = options.EffectiveXattr,
        PosixAcl = options.PosixAcl,
        XattrMap = options.XattrMap,
        SecurityLabel = options.SecurityLabel,
        AnnounceSubmounts = options.AnnounceSubmounts,
        InodeFileHandles = options.InodeFileHandles,
        Writeback = options.Writeback,
        AllowDirectIo = options.AllowDirectIo,
        AllowMmap = options.AllowMmap,
        KillprivV2 = options.KillprivV2,
        Readdirplus = options.EffectiveReaddirplus,
        PreserveNoatime = options.PreserveNoatime,
        ReadOnly = options.ReadOnly,
        ProcSelfFd = sandbox.ProcSelfFd,
        AvoidXattrAt = TestProbe.NoXattrAtRequested,
        PosixLocks = options.PosixLock,
        FlockLocks = options.Flock,
    };

    private static int Serve(DaemonOptions options, string sharedDir, SandboxResult sandbox, DaemonListener listener,
        int lastCap, Logger log, bool logListening = true)
    {
        if (Libc.GetEuid() == 0)
        {
            // Inherited empty from the supervisor; checked again here, while CAP_SETGID is still held,
            // because this process is the one that acts for the guest.
            SupplementaryGroups.DropAll(log);
            ulong keep = Capabilities.KeptMask(options.InodeFileHandles, options.ModCaps);
            Capabilities.DropOnCurrentThread(keep, lastCap);
            log.Debug("Capabilities kept: {Caps}", Capabilities.Describe(keep));
        }

        var settings = ShareSettings(options, sandbox) with
        {
            Tag = options.Tag,
            ThreadPoolSize = options.ThreadPoolSize,
            PollMax = TimeSpan.FromMicroseconds(options.PollMaxUs),
        };
        TestProbe.RunIfRequested(settings, lastCap, log);

        if (options.Seccomp != SeccompMode.None && options.Sandbox == SandboxMode.None)
        {
            // The namespace and chroot modes loaded everything before hiding the host's files;
            // without a sandbox the runtime would load assemblies lazily, with path calls that
            // the filter need not allow (and that the native build never makes).
            log.Debug("Loaded {Count} assemblies before the system-call filter", Preload.BeforeSandbox());
        }
        // From here on, and on every thread, only the calls of SeccompPolicy.
        SeccompPolicy.Install(options.Seccomp, log);
        TestProbe.MakeSystemCallIfRequested(log);

        if (logListening)
        {
            log.Information("Listening on {Socket}", Describe(listener));
        }
        log.Information("Sharing {Dir} (sandbox {Sandbox}, seccomp {Seccomp}, cache {Cache}); waiting for the vhost-user front-end",
            sharedDir, options.Sandbox.ToString().ToLowerInvariant(), options.Seccomp.ToString().ToLowerInvariant(),
            options.Cache.ToString().ToLowerInvariant());

        UnixSocket? connection = AcceptOne(listener.Socket, log);
        // One front-end per process: nobody else may queue on the socket.
        listener.Socket.Dispose();
        if (connection == null)
        {
            log.Information("Shutting down on {Reason} before a front-end connected", ShutdownSignal.Reason ?? "request");
            return ExitCodes.Success;
        }

        UCred peer = connection.PeerCredentials();
        if (peer.Pid != 0)
        {
            log.Information("Front-end connected (pid {Pid}, uid {Uid}, gid {Gid})", peer.Pid, peer.Uid, peer.Gid);
        }
        else
        {
            log.Information("Front-end connected (uid {Uid}, gid {Gid}; its pid is outside the sandbox's pid namespace)", peer.Uid, peer.Gid);
        }

        // Shut down a duplicate of the connection on a signal: shutdown(2) acts on the socket
        // itself, and the duplicate stays open (its number cannot be reused) until Serve returned,
        // whatever Serve does with its own descriptor.
        int wakeFd = Libc.Dup(connection.Fd);
        using var wake = new UnixSocket(new SafeFd(wakeFd < 0 ? -1 : wakeFd));
        using (wakeFd >= 0 ? ShutdownSignal.ShutDownOnRequest(wake) : null)
        {
            int code;
            try
            {
                FdReport.Log(settings.ProcSelfFd, "before the session", log);
                code = FsDaemon.Serve(settings, connection, log);
                FdReport.Log(settings.ProcSelfFd, "after the session", log);
            }
            finally
            {
                settings.ProcSelfFd?.Dispose();
            }
            if (ShutdownSignal.IsRequested)
            {
                log.Information("Front-end session ended on {Reason}; exiting", ShutdownSignal.Reason);
                return ExitCodes.Success;
            }
            log.Information("Front-end disconnected; exiting with code {Code}", code);
            return code;
        }
    }

    /// <summary>Waits for one connection, or for a shutdown request (then null).</summary>
    private static UnixSocket? AcceptOne(UnixSocket listener, Logger log)
    {
        PollFd* fds = stackalloc PollFd[2];
        while (true)
        {
            fds[0] = new PollFd { Fd = listener.Fd, Events = Libc.POLLIN };
            fds[1] = new PollFd { Fd = ShutdownSignal.WakeFd, Events = Libc.POLLIN };
            if (ShutdownSignal.IsRequested)
            {
                return null;
            }
            int n = Libc.Poll(fds, 2, -1);
            if (n < 0)
            {
                if (Libc.LastErrno == Errno.EINTR)
                {
                    continue;
                }
                throw new StartupException("waiting for a connection: " + PosixException.Describe(Libc.LastErrno));
            }
            if (fds[1].REvents != 0 || ShutdownSignal.IsRequested)
            {
                return null;
            }
            if ((fds[0].REvents & Libc.POLLIN) != 0)
            {
                int fd = Libc.Accept4(listener.Fd, null, null, Libc.SOCK_CLOEXEC);
                if (fd >= 0)
                {
                    return new UnixSocket(new SafeFd(fd));
                }
                var errno = Libc.LastErrno;
                if (errno is Errno.EINTR or Errno.EAGAIN or Errno.ECONNABORTED)
                {
                    continue;
                }
                throw new StartupException("accept: " + PosixException.Describe(errno));
            }
            if ((fds[0].REvents & (Libc.POLLERR | Libc.POLLHUP | Libc.POLLNVAL)) != 0)
            {
                throw new StartupException("the listening socket failed while waiting for a connection");
            }
        }
    }

    internal static string CheckSharedDir(string sharedDir)
    {
        string full = Path.GetFullPath(sharedDir);
        if (Directory.Exists(full))
        {
            return full;
        }
        if (File.Exists(full))
        {
            throw new StartupException($"shared directory {sharedDir} is not a directory");
        }
        throw new StartupException($"shared directory {sharedDir} does not exist");
    }

    private static string Describe(DaemonListener listener) =>
        listener.SocketPath ?? $"fd {listener.Socket.Fd}";

    /// <summary>SIGTERM, SIGINT and SIGHUP request a clean shutdown instead of killing the process.</summary>
    internal static IDisposable InstallShutdownSignals()
    {
        var registrations = new List<PosixSignalRegistration>();
        foreach (var (signal, name) in new[] { (PosixSignal.SIGTERM, "SIGTERM"), (PosixSignal.SIGINT, "SIGINT"), (PosixSignal.SIGHUP, "SIGHUP") })
        {
            registrations.Add(PosixSignalRegistration.Create(signal, context =>
            {
                context.Cancel = true;
                ShutdownSignal.Request(name);
            }));
        }
        return new Registrations(registrations);
    }

    private sealed class Registrations(List<PosixSignalRegistration> items) : IDisposable
    {
        public void Dispose()
        {
            foreach (var item in items)
            {
                item.Dispose();
            }
        }
    }

    /// <summary>This process's pid in the host's pid namespace (inside the sandbox getpid() is 1),
    /// read while the host /proc is still mounted.</summary>
    private static int HostPid()
    {
        try
        {
            string? target = new DirectoryInfo("/proc/self").LinkTarget;
            if (int.TryParse(target, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int pid))
            {
                return pid;
            }
        }
        catch (IOException)
        {
            // Fall through to getpid().
        }
        return Environment.ProcessId;
    }
}
