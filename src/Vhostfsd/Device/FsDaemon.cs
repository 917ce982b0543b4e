using Vhostfsd.FusePassthrough;
using Vhostfsd.Logging;
using Vhostfsd.Posix;
using Vhostfsd.VhostUser;

namespace Vhostfsd.Device;

/// <summary>Serves one vhost-user front-end connection as a virtio-fs device until it disconnects.</summary>
public static class FsDaemon
{
    /// <summary>Request queues offered when the settings do not say (GET_QUEUE_NUM answers one more,
    /// for hiprio). A front-end uses as many as it was configured with (QEMU's num-request-queues);
    /// an unused queue costs a few objects and no thread.</summary>
    public const int DefaultRequestQueues = 16;

    /// <summary>Runs the vhost-user session on the calling thread; returns the process exit code:
    /// 0 when the front-end disconnected (as virtiofsd), 1 after a protocol error.</summary>
    public static int Serve(DaemonSettings settings, UnixSocket connection, Logger log)
    {
        PassthroughOptions options = CreatePassthroughOptions(settings);
        using var server = new FuseServer(options, message => log.Warning("fuse: {Message}", message));
        server.InitNegotiated = init => log.Information(
            "FUSE INIT: guest protocol {Major}.{Minor}, answered 7.{Answered}; granted {Granted}",
            init.GuestMajor, init.GuestMinor, init.AnsweredMinor, init.Granted);
        using var pool = new BlockingRequestPool(server, Math.Max(1, settings.ThreadPoolSize));
        var device = new VirtioFsDevice(server, settings.Tag, DefaultRequestQueues, pool);
        using var backend = new VhostUserBackend(connection, device, new VhostUserBackendOptions { PollMax = settings.PollMax }, log);
        log.Information("virtio-fs device: {Queues} request queue(s), tag {Tag}, shared root {Root}, {Pool} blocking-request thread(s), names resolved with {Resolver}, inodes held as {Inodes}, xattrs of special files through {Xattrs}",
            device.RequestQueues, settings.Tag ?? "(none: CONFIG not offered)", settings.SharedRoot, pool.ThreadCount,
            server.UsesOpenat2 ? "openat2 RESOLVE_BENEATH" : "openat O_NOFOLLOW", server.UsesFileHandles ? "file handles" : "O_PATH fds",
            server.UsesXattrAt ? "the *xattrat calls" : "the /proc/self/fd directory");
        VhostUserSessionEnd end = backend.Run();
        return end == VhostUserSessionEnd.Disconnected ? 0 : 1;
    }

    /// <summary>What the command line decided, in the terms of the passthrough file system.</summary>
    public static PassthroughOptions CreatePassthroughOptions(DaemonSettings settings) => new()
    {
        SharedDir = settings.SharedRoot,
        ProcSelfFdDir = settings.ProcSelfFd is { IsInvalid: false } proc ? proc.Fd : null,
        Cache = settings.Cache,
        Xattr = settings.Xattr,
        PosixAcl = settings.PosixAcl,
        SecurityLabel = settings.SecurityLabel,
        XattrMap = settings.XattrMap,
        Writeback = settings.Writeback,
        KillprivV2 = settings.KillprivV2,
        AnnounceSubmounts = settings.AnnounceSubmounts,
        InodeFileHandles = settings.InodeFileHandles,
        AllowDirectIo = settings.AllowDirectIo,
        AllowMmap = settings.AllowMmap,
        Readdirplus = settings.Readdirplus,
        PreserveNoatime = settings.PreserveNoatime,
        ReadOnly = settings.ReadOnly,
        AvoidXattrAt = settings.AvoidXattrAt,
        PosixLocks = settings.PosixLocks,
        FlockLocks = settings.FlockLocks,
    };
}
