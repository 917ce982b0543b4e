namespace Vhostfsd;

/// <summary>Everything the command line decided, as the device needs it.
/// (Owned by the command-line work; the device reads it.)</summary>
public sealed class DaemonSettings
{
    /// <summary>The shared directory as the daemon sees it after the sandbox is set up
    /// ("/" after pivot_root or chroot; the original path with --sandbox none).</summary>
    public required string SharedRoot { get; init; }

    /// <summary>The tag served through GET_CONFIG, or null when --tag was not given.</summary>
    public string? Tag { get; init; }

    /// <summary>Worker threads for blocking requests; 0 runs every request on its queue thread.</summary>
    public int ThreadPoolSize { get; init; }
}
