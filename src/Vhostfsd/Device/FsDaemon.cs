using Vhostfsd.Posix;

namespace Vhostfsd.Device;

/// <summary>Serves one vhost-user front-end connection as a virtio-fs device until it disconnects.
/// (Owned by the device work; placeholder until the device loop lands.)</summary>
public static class FsDaemon
{
    /// <summary>Runs the vhost-user session on the calling thread; returns the process exit code.</summary>
    public static int Serve(DaemonSettings settings, UnixSocket connection, Serilog.ILogger log)
    {
        log.Error("virtio-fs device not implemented yet");
        connection.Dispose();
        return 1;
    }
}
