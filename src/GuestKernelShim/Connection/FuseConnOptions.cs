using Vhostfsd.FuseProtocol;

namespace Vhostfsd.GuestKernelShim;

/// <summary>What a <see cref="FuseConn"/> asks for at INIT and the limits it applies.</summary>
public sealed class FuseConnOptions
{
    /// <summary>The INIT flags a guest kernel asks for that the shim honours. Left out on purpose:
    /// SPLICE_* (no pipes), WRITEBACK_CACHE (asked for only by a mount with the writeback option), POSIX_ACL (no ACL evaluation),
    /// SECURITY_CTX and CREATE_SUPP_GROUP (no request extensions sent), MAP_ALIGNMENT and HAS_INODE_DAX
    /// (no DAX), PASSTHROUGH, OVER_IO_URING, REQUEST_TIMEOUT, EXPORT_SUPPORT.</summary>
    public const FuseInitFlags DefaultFlags =
        FuseInitFlags.AsyncRead | FuseInitFlags.PosixLocks | FuseInitFlags.AtomicOTrunc | FuseInitFlags.BigWrites
        | FuseInitFlags.DontMask | FuseInitFlags.FlockLocks | FuseInitFlags.HasIoctlDir | FuseInitFlags.AutoInvalData
        | FuseInitFlags.DoReaddirplus | FuseInitFlags.ReaddirplusAuto | FuseInitFlags.AsyncDio
        | FuseInitFlags.NoOpenSupport | FuseInitFlags.ParallelDirops | FuseInitFlags.HandleKillprivV2
        | FuseInitFlags.AbortError | FuseInitFlags.MaxPages | FuseInitFlags.CacheSymlinks
        | FuseInitFlags.NoOpendirSupport | FuseInitFlags.ExplicitInvalData | FuseInitFlags.SetxattrExt
        | FuseInitFlags.InitExt | FuseInitFlags.Submounts | FuseInitFlags.HasExpireOnly;

    /// <summary>Flags sent in fuse_init_in (flags / flags2).</summary>
    public FuseInitFlags RequestedFlags { get; set; } = DefaultFlags;

    /// <summary>fuse_init_in.minor: the newest protocol minor the shim speaks.</summary>
    public uint Minor { get; set; } = FuseConstants.KernelMinorVersion;

    /// <summary>fuse_init_in.max_readahead (Linux: the bdi's read-ahead, 128 KiB by default).</summary>
    public uint MaxReadahead { get; set; } = 128 * 1024;

    /// <summary>The mount's max_read (virtio-fs: unlimited). READ requests carry at most
    /// min(max_read, max_pages * 4096) bytes.</summary>
    public uint MaxRead { get; set; } = uint.MaxValue;

    /// <summary>Upper bound for max_pages whatever the daemon says (Linux's fuse_max_pages_limit: 256).
    /// The transport may lower it further.</summary>
    public int MaxPagesLimit { get; set; } = 256;

    /// <summary>How long an unmount waits for the daemon to hand back requests it still holds.</summary>
    public TimeSpan DrainTimeout { get; set; } = TimeSpan.FromSeconds(5);

    /// <summary>A copy that also asks for <paramref name="flags"/>.</summary>
    internal FuseConnOptions WithFlags(FuseInitFlags flags) => new()
    {
        RequestedFlags = RequestedFlags | flags,
        Minor = Minor,
        MaxReadahead = MaxReadahead,
        MaxRead = MaxRead,
        MaxPagesLimit = MaxPagesLimit,
        DrainTimeout = DrainTimeout,
    };
}
