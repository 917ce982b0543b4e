using Vhostfsd.Posix;
using Vhostfsd.FusePassthrough;

namespace Vhostfsd;

/// <summary>Everything the command line decided, as the device needs it, after the sandbox is
/// in place. Built once at start-up by the command-line code; the device only reads it.
/// Option semantics are plain values; mapping them to the file system's own options (timeouts,
/// FOPEN flags, INIT flags) is the device's job.</summary>
public sealed record DaemonSettings
{
    /// <summary>The shared directory as the daemon sees it after the sandbox is set up
    /// ("/" after pivot_root or chroot; the original absolute path with --sandbox none).</summary>
    public required string SharedRoot { get; init; }

    /// <summary>Forward POSIX locks to the host (--posix-lock).</summary>
    public bool PosixLocks { get; init; }

    /// <summary>Forward flock() locks to the host (--flock).</summary>
    public bool FlockLocks { get; init; }

    /// <summary>Test switch (<see cref="Hosting.TestProbe.NoXattrAtEnvironment"/>): take the xattr paths of
    /// kernels before 6.13 even where the *xattrat calls exist.</summary>
    public bool AvoidXattrAt { get; init; }

    /// <summary>The tag served through GET_CONFIG (1–36 bytes of UTF-8), or null when --tag was not given
    /// (then PROTOCOL_F_CONFIG is not offered).</summary>
    public string? Tag { get; init; }

    /// <summary>Worker threads for blocking requests; 0 runs every request on its queue thread.</summary>
    public int ThreadPoolSize { get; init; }

    /// <summary>--poll-max-us: how long a queue thread may poll its ring before it sleeps (zero: never).</summary>
    public TimeSpan PollMax { get; init; }

    /// <summary>--cache.</summary>
    public CachePolicy Cache { get; init; } = CachePolicy.Auto;

    /// <summary>The xattr opcodes are served (else ENOSYS). True when --xattr, --posix-acl,
    /// --security-label or --xattrmap was given.</summary>
    public bool Xattr { get; init; }

    /// <summary>--posix-acl: require POSIX_ACL + DONT_MASK + SETXATTR_EXT at INIT.</summary>
    public bool PosixAcl { get; init; }

    /// <summary>--xattrmap rules, verbatim (null: no mapping).</summary>
    public string? XattrMap { get; init; }

    /// <summary>--security-label: negotiate SECURITY_CTX.</summary>
    public bool SecurityLabel { get; init; }

    /// <summary>Mark submounts with ATTR_SUBMOUNT (default on; --no-announce-submounts turns it off).</summary>
    public bool AnnounceSubmounts { get; init; } = true;

    /// <summary>--inode-file-handles.</summary>
    public InodeFileHandles InodeFileHandles { get; init; } = InodeFileHandles.Prefer;

    /// <summary>--writeback: negotiate WRITEBACK_CACHE.</summary>
    public bool Writeback { get; init; }

    /// <summary>--allow-direct-io: keep the guest's O_DIRECT (otherwise it is stripped).</summary>
    public bool AllowDirectIo { get; init; }

    /// <summary>--allow-mmap: negotiate DIRECT_IO_ALLOW_MMAP.</summary>
    public bool AllowMmap { get; init; }

    /// <summary>--killpriv-v2: negotiate HANDLE_KILLPRIV_V2 (default off).</summary>
    public bool KillprivV2 { get; init; }

    /// <summary>READDIRPLUS is offered: on unless --no-readdirplus, always off with --cache=never.</summary>
    public bool Readdirplus { get; init; } = true;

    /// <summary>--preserve-noatime: keep the guest's O_NOATIME (otherwise it is stripped).</summary>
    public bool PreserveNoatime { get; init; }

    /// <summary>--readonly: every modifying request fails with EROFS; opens are forced read-only.</summary>
    public bool ReadOnly { get; init; }

    /// <summary>An O_PATH directory fd on this process's /proc/self/fd, opened before the sandbox
    /// hid /proc and valid after it: reopen an O_PATH fd N with openat(ProcSelfFd, "N", flags).
    /// Owned by the settings; never null once start-up has finished.</summary>
    public SafeFd? ProcSelfFd { get; init; }

}
