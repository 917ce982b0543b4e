using Vhostfsd.Cli;
using Vhostfsd.FuseDevice;
using Vhostfsd.FusePassthrough;
using Vhostfsd.Logging;
using Vhostfsd.Posix;

namespace Vhostfsd.Hosting;

/// <summary>The daemon's life with --fuse-mount: the supervisor mounts, the process it spawns serves.
///
/// A mount made inside the namespace sandbox would exist only there, invisible to the host. So the
/// supervisor — root, in the host's mount namespace — opens /dev/fuse, mounts the share on the mount
/// point and passes the session fd to the serving process exactly as it passes the vhost-user socket:
/// every --sandbox mode works, and the serving process never holds CAP_SYS_ADMIN. The serving process
/// clones one /dev/fuse fd per reader before its sandbox hides /dev. The supervisor unmounts
/// (MNT_DETACH) on SIGTERM/SIGINT/SIGHUP and when the serving process ends; an unmount from outside
/// (fusermount3 -u, umount) makes the readers see ENODEV and the daemon exit 0.</summary>
internal static class FuseMountHost
{
    /// <summary>The supervisor: checks, mounts, spawns the serving process, waits, unmounts.</summary>
    public static int RunSupervisor(DaemonOptions options, Logger log)
    {
        string sharedDir = DaemonHost.CheckSharedDir(options.SharedDir!);
        using var signals = DaemonHost.InstallShutdownSignals();
        if (Libc.GetEuid() != 0)
        {
            throw new StartupException("--fuse-mount needs root: mounting a FUSE file system with mount(2) needs CAP_SYS_ADMIN");
        }
        string share = Canonical(sharedDir, "the shared directory " + sharedDir);
        string mountPoint = Canonical(options.FuseMount!, "--fuse-mount " + options.FuseMount);
        if (HostFuseMount.IsSameOrBelow(mountPoint, share))
        {
            throw new UsageException($"--fuse-mount {options.FuseMount} is inside the shared directory: the daemon would look itself up through its own mount and hang; choose a mount point outside {sharedDir}");
        }
        if (HostFuseMount.IsSameOrBelow(share, mountPoint))
        {
            throw new UsageException($"the shared directory {sharedDir} is under --fuse-mount {options.FuseMount}: the mount would hide the directory it serves");
        }

        int lastCap = Capabilities.KernelLastCap();
        ResourceLimits.SetUpNofile(options.RlimitNofile, log);
        ulong bounding = Capabilities.KeptMask(options.InodeFileHandles, options.ModCaps);
        if (options.Sandbox == SandboxMode.Chroot)
        {
            // The serving process chroots itself, then drops these two on its main thread.
            bounding |= (1UL << Capabilities.SysChroot) | (1UL << Capabilities.Setpcap);
        }
        // In every mode, SYS_RESOURCE: the serving process grows its readers' splice pipes past
        // fs.pipe-max-size with it (FuseReplySplicer), then drops it with the rest, SETPCAP taking
        // it out of the bounding set.
        bounding |= (1UL << Capabilities.SysResource) | (1UL << Capabilities.Setpcap);
        // Before the serving process is spawned: it inherits the empty list.
        SupplementaryGroups.DropAll(log);

        HostFuseMount mount;
        try
        {
            mount = HostFuseMount.Create(sharedDir, mountPoint,
                new HostFuseMountOptions(options.FuseAllowOther, options.FuseDefaultPermissions, options.ReadOnly));
        }
        catch (PosixException e)
        {
            throw new StartupException($"cannot mount the share on {mountPoint}: {e.Message}");
        }
        using (mount)
        {
            log.Information("Mounted {Dir} on {MountPoint} ({Type}{Options})", sharedDir, mountPoint, HostFuseMount.FileSystemType,
                (options.FuseAllowOther ? ", allow_other" : "") + (options.FuseDefaultPermissions ? ", default_permissions" : "") + (options.ReadOnly ? ", read-only" : ""));
            try
            {
                using var unmountOnSignal = ShutdownSignal.Token.Register(() =>
                {
                    if (mount.Unmount())
                    {
                        log.Information("Unmounted {MountPoint} on {Reason}", mountPoint, ShutdownSignal.Reason);
                    }
                });
                int code = SandboxSpawner.SpawnAndWait(options.Sandbox, mount.Session.Fd, sharedDir, bounding, lastCap, log);
                log.Information("Exiting with code {Code}", code);
                return code;
            }
            finally
            {
                if (mount.Unmount())
                {
                    log.Information("Unmounted {MountPoint}", mountPoint);
                }
            }
        }
    }

    /// <summary>The serving process, spawned by <see cref="SandboxSpawner"/> with the session fd where
    /// the vhost-user mode has its listening socket.</summary>
    public static int RunChild(DaemonOptions options, SandboxSpawner.ChildMarker marker, string sharedDir, int lastCap, Logger log)
    {
        var session = new SafeFd(marker.ListenFd);
        // One fd per reader, while /dev/fuse is still reachable: the sandbox hides it.
        var clones = new List<SafeFd>();
        try
        {
            for (int i = FuseDeviceDaemon.ReadersFor(Environment.ProcessorCount); i > 0; i--)
            {
                clones.Add(DevFuse.Clone(session.Fd));
            }
        }
        catch (PosixException e)
        {
            throw new StartupException("cannot attach a reader to the FUSE connection: " + e.Message);
        }
        // The readers' pipes for READ replies by reference, made now: a pipe that holds a 1 MiB READ
        // and its header is 2 MiB, above the default fs.pipe-max-size, which only CAP_SYS_RESOURCE
        // (dropped below) may exceed.
        var splicers = CreateSplicers(clones.Count, log);

        SandboxResult sandbox;
        switch (marker.Mode)
        {
            case SandboxMode.Namespace:
                log.Debug("Loaded {Count} assemblies before the sandbox", Preload.BeforeSandbox());
                sandbox = Sandbox.JoinNamespaceSandbox(marker);
                break;
            case SandboxMode.Chroot:
                log.Debug("Loaded {Count} assemblies before the sandbox", Preload.BeforeSandbox());
                sandbox = Sandbox.EnterChroot(sharedDir);
                break;
            default:
                sandbox = Sandbox.EnterNone(sharedDir);
                break;
        }
        if (Libc.GetEuid() == 0)
        {
            SupplementaryGroups.DropAll(log);
            ulong keep = Capabilities.KeptMask(options.InodeFileHandles, options.ModCaps);
            // The readers are created from this thread afterwards and start with this set.
            Capabilities.DropOnCurrentThread(keep, lastCap);
            log.Debug("Capabilities kept: {Caps}", Capabilities.Describe(keep));
        }
        var settings = DaemonHost.ShareSettings(options, sandbox);
        if (options.Seccomp != SeccompMode.None && options.Sandbox == SandboxMode.None)
        {
            // As in the virtio mode: without a sandbox the runtime would load assemblies lazily,
            // with path calls the filter need not allow.
            log.Debug("Loaded {Count} assemblies before the system-call filter", Preload.BeforeSandbox());
        }
        // The host's FUSE client is as much a stranger as a guest: the same allow-list, before the
        // first request (the readers' fds were cloned above, with the ioctl the filter refuses).
        SeccompPolicy.Install(options.Seccomp, log);
        log.Information("Sharing {Dir} on {MountPoint} (sandbox {Sandbox}, seccomp {Seccomp}, cache {Cache})", sharedDir, options.FuseMount,
            options.Sandbox.ToString().ToLowerInvariant(), options.Seccomp.ToString().ToLowerInvariant(), options.Cache.ToString().ToLowerInvariant());
        try
        {
            return FuseDeviceDaemon.Serve(settings, session, clones, options.FuseDefaultPermissions, ShutdownSignal.Token, log,
                splicers, TestProbe.SpliceRequest == TestProbe.SpliceFail);
        }
        finally
        {
            sandbox.ProcSelfFd.Dispose();
        }
    }

    private static FuseSplicePipes[] CreateSplicers(int count, Logger log)
    {
        var pipes = new FuseSplicePipes[count];
        if (TestProbe.SpliceRequest == TestProbe.SpliceOff)
        {
            log.Information("READ and WRITE data are copied: splicing is off ({Variable})", TestProbe.SpliceEnvironment);
            return pipes;
        }
        bool failMoves = TestProbe.SpliceRequest == TestProbe.SpliceFail;
        string? failure = null;
        for (int i = 0; i < count; i++)
        {
            pipes[i] = new FuseSplicePipes(FuseReplySplicer.TryCreate(out failure), FuseRequestSplicer.TryCreate(failMoves));
        }
        FuseReplySplicer? reply = pipes[0].Reply;
        if (reply is null)
        {
            log.Information("READ replies are copied: no splice pipes ({Failure})", failure);
        }
        else if (reply.Capacity < FuseServer.MaxWrite)
        {
            log.Information("READ replies of up to {Bytes} bytes are spliced, larger ones copied: the pipes could not grow to {Wanted} bytes (fs.pipe-max-size, CAP_SYS_RESOURCE)",
                reply.Capacity, FuseReplySplicer.WantedPipeBytes);
        }
        else
        {
            log.Debug("READ replies are spliced through pipes of {Bytes} bytes", FuseReplySplicer.WantedPipeBytes);
        }
        if (pipes[0].Request is null)
        {
            log.Information("WRITE data is copied: a request pipe could not grow to {Wanted} bytes (fs.pipe-max-size, CAP_SYS_RESOURCE)",
                FuseReplySplicer.WantedPipeBytes);
        }
        else
        {
            log.Debug("Requests are spliced from /dev/fuse, WRITE data into files");
        }
        return pipes;
    }

    private static string Canonical(string path, string what)
    {
        try
        {
            return HostFuseMount.Canonical(path);
        }
        catch (PosixException e) when (e.Errno == Errno.ENOTDIR)
        {
            throw new StartupException($"{what} is not a directory");
        }
        catch (PosixException e)
        {
            throw new StartupException($"{what}: {e.Message}");
        }
    }
}
