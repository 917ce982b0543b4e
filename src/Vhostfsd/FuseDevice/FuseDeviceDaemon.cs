using Vhostfsd.Cli;
using Vhostfsd.Device;
using Vhostfsd.FusePassthrough;
using Vhostfsd.Logging;
using Vhostfsd.Posix;

namespace Vhostfsd.FuseDevice;

/// <summary>Serves the share through a host FUSE connection (the mount made by <see cref="HostFuseMount"/>)
/// until it is unmounted or stop is requested: the same <see cref="FuseServer"/> as the virtio device,
/// fed by <see cref="FuseDeviceSession"/>'s readers instead of virtqueues.</summary>
internal static class FuseDeviceDaemon
{
    /// <summary>How long, after stop is requested, the readers may take to see ENODEV (the supervisor
    /// unmounts on the same signal) before they are left behind.</summary>
    public static readonly TimeSpan StopGrace = TimeSpan.FromSeconds(2);

    /// <summary>Readers started for a host with <paramref name="cpus"/> CPUs: one each.</summary>
    public static int ReadersFor(int cpus) => Math.Clamp(cpus, 1, 64);

    /// <summary>Runs the session on the calling thread; returns the process exit code: 0 when the file
    /// system was unmounted or stop was requested, 1 when a reader failed. <paramref name="kernelChecksPermissions"/>:
    /// the mount has default_permissions.</summary>
    public static int Serve(DaemonSettings settings, SafeFd session, IReadOnlyList<SafeFd> clones, bool kernelChecksPermissions,
        CancellationToken stop, Logger log, IReadOnlyList<FuseSplicePipes>? splicers = null, bool failSpliceAssembly = false)
    {
        var server = new FuseServer(FsDaemon.CreatePassthroughOptions(settings), message => log.Warning("fuse: {Message}", message));
        server.InitNegotiated = init => log.Information(
            "FUSE INIT: kernel protocol {Major}.{Minor}, answered 7.{Answered}; granted {Granted}",
            init.GuestMajor, init.GuestMinor, init.AnsweredMinor, init.Granted);
        var fuse = new FuseDeviceSession(server, session, clones, kernelChecksPermissions, log, splicers, failSpliceAssembly);
        log.Information("Serving the mount with {Readers} FUSE reader(s), one per CPU, and up to {Spares} more while requests block; shared root {Root}, names resolved with {Resolver}, inodes held as {Inodes}",
            clones.Count, FuseDeviceSession.MaxSpareReaders, settings.SharedRoot,
            server.UsesOpenat2 ? "openat2 RESOLVE_BENEATH" : "openat O_NOFOLLOW", server.UsesFileHandles ? "file handles" : "O_PATH fds");
        FuseDeviceSessionEnd end = fuse.Run(stop, StopGrace);
        switch (end)
        {
            case FuseDeviceSessionEnd.Unmounted:
                var (allocated, steady) = fuse.SteadyAllocation;
                log.Information("The file system was unmounted ({Readers} reader(s), {Spares} spare(s) started, {Requests} requests served); exiting",
                    fuse.ReaderCount, fuse.SpareCount, fuse.Requests);
                log.Debug("Readers allocated {Bytes} bytes over {Steady} requests after their first {WarmUp} each",
                    allocated, steady, FuseDeviceReader.WarmUpRequests);
                var (spliced, copiedBack) = fuse.SplicedReplies;
                log.Debug("READ replies spliced: {Spliced}, copied back after a splice failed: {CopiedBack}", spliced, copiedBack);
                var (splicedWrites, fetchedWrites) = fuse.SplicedWrites;
                log.Debug("WRITE data spliced: {Spliced}, copied after a splice failed: {Fetched}", splicedWrites, fetchedWrites);
                fuse.Dispose();
                server.Dispose();
                return ExitCodes.Success;
            case FuseDeviceSessionEnd.Abandoned:
                // Readers may still be inside the server: leave it to the process exit.
                log.Information("Stopping on {Reason} while the mount is still in use: its users get ENOTCONN once this process exits",
                    ShutdownSignal.Reason ?? "request");
                return ExitCodes.Success;
            default:
                log.Error("Serving the mount failed: {Failure}", fuse.Failure);
                return ExitCodes.Failure;
        }
    }
}
