using Vhostfsd.FusePassthrough;
namespace Vhostfsd.Cli;

/// <summary>The command line after both dialects were merged and every value was checked,
/// before anything touched the host.</summary>
internal sealed class DaemonOptions
{
    public string? SharedDir { get; set; }
    public string? Tag { get; set; }
    public string? SocketPath { get; set; }
    public string? SocketGroup { get; set; }
    public int? Fd { get; set; }
    public int ThreadPoolSize { get; set; }

    /// <summary>--poll-max-us. 64 µs: a depth-1 caller's next request, in the benchmark, comes 20–60 µs
    /// after the reply (docs/performance.md, "Polling the ring"); QEMU's IOThreads use 32 µs.</summary>
    public int PollMaxUs { get; set; } = 64;

    /// <summary>Largest --poll-max-us: a millisecond of polling is already longer than a sleep and wake-up.</summary>
    public const int MaxPollMaxUs = 1000;
    public bool Xattr { get; set; }
    public bool PosixAcl { get; set; }
    public string? XattrMap { get; set; }
    public SandboxMode Sandbox { get; set; } = SandboxMode.Namespace;
    public bool ReadOnly { get; set; }
    public SeccompMode Seccomp { get; set; } = SeccompMode.Kill;
    public bool AnnounceSubmounts { get; set; } = true;
    public InodeFileHandles InodeFileHandles { get; set; } = InodeFileHandles.Prefer;
    public CachePolicy Cache { get; set; } = CachePolicy.Auto;
    public bool AllowMmap { get; set; }
    public bool NoReaddirplus { get; set; }
    public bool Writeback { get; set; }
    public bool AllowDirectIo { get; set; }
    public bool PrintCapabilities { get; set; }
    public string? ModCaps { get; set; }
    public DaemonLogLevel LogLevel { get; set; } = DaemonLogLevel.Info;
    public bool Syslog { get; set; }

    /// <summary>null: raise to min(1,000,000, fs.nr_open) when lower; 0: leave unchanged.</summary>
    public ulong? RlimitNofile { get; set; }
    public bool KillprivV2 { get; set; }
    public bool SecurityLabel { get; set; }
    public bool PreserveNoatime { get; set; }

    /// <summary>Forward POSIX locks to the host (off by default, as in both reference daemons: the
    /// guest keeps them local).</summary>
    public bool PosixLock { get; set; }

    /// <summary>Forward flock() locks to the host (off by default).</summary>
    public bool Flock { get; set; }

    /// <summary>--fuse-mount: serve through the host kernel's FUSE on this directory instead of a
    /// vhost-user socket (null: vhost-user).</summary>
    public string? FuseMount { get; set; }

    /// <summary>--fuse-options allow_other.</summary>
    public bool FuseAllowOther { get; set; }

    /// <summary>--fuse-options default_permissions.</summary>
    public bool FuseDefaultPermissions { get; set; }

    /// <summary>Deprecation notes to log once logging is up (the reference daemon warns the same way).</summary>
    public List<string> Warnings { get; } = new();

    /// <summary>xattr ops are served when any option that needs them is on.</summary>
    public bool EffectiveXattr => Xattr || PosixAcl || SecurityLabel || XattrMap != null;

    /// <summary>READDIRPLUS is never offered with --cache=never.</summary>
    public bool EffectiveReaddirplus => !NoReaddirplus && Cache != CachePolicy.Never;
}
