namespace Vhostfsd.FusePassthrough;

/// <summary>The FUSE server over the passthrough file system of one host directory: what the
/// daemon's transports run. Owns the <see cref="PassthroughFs"/> it builds from the options.</summary>
public sealed class FuseServer : FuseServer<PassthroughCalls>
{
    /// <summary>Opens the shared directory and the /proc/self/fd directory; throws
    /// <see cref="Vhostfsd.Posix.PosixException"/> or ArgumentException when either is unusable.</summary>
    public FuseServer(PassthroughOptions options, Action<string>? log = null)
        : base(new PassthroughCalls(new PassthroughFs(options, log)), log)
    {
    }

    /// <summary>The passthrough file system behind the server.</summary>
    public PassthroughFs Passthrough => FileSystem.Fs;

    /// <summary>The options the file system runs with.</summary>
    public PassthroughOptions Options => Passthrough.Options;

    /// <summary>Nodes the guest holds (root included).</summary>
    public int NodeCount => Passthrough.NodeCount;

    /// <summary>Open file and directory handles.</summary>
    public int HandleCount => Passthrough.HandleCount;

    /// <summary>Guest-held fds in use and the limit (ENFILE beyond it).</summary>
    public (int Used, int Limit) FdUsage => Passthrough.FdUsage;

    public bool UsesOpenat2 => Passthrough.UsesOpenat2;

    public bool UsesXattrAt => Passthrough.UsesXattrAt;

    public bool UsesFileHandles => Passthrough.UsesFileHandles;

    public override void Dispose()
    {
        base.Dispose();
        Passthrough.Dispose();
    }
}
