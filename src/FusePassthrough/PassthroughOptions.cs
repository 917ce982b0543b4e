namespace Vhostfsd.FusePassthrough;

/// <summary>How long the guest may cache names, attributes and file data (virtiofsd's --cache).</summary>
public enum CachePolicy
{
    /// <summary>Timeouts 0; files opened with FOPEN_DIRECT_IO; no READDIRPLUS.</summary>
    Never,
    /// <summary>Timeouts 86400 s; files direct I/O; directories cached (CACHE_DIR + KEEP_CACHE).</summary>
    Metadata,
    /// <summary>Timeouts 1 s; the guest page cache follows its own close-to-open rules.</summary>
    Auto,
    /// <summary>Timeouts 86400 s; KEEP_CACHE on files, KEEP_CACHE + CACHE_DIR on directories.</summary>
    Always,
}

/// <summary>Whether nodes hold file handles (name_to_handle_at) instead of O_PATH fds.</summary>
public enum InodeFileHandles
{
    Never,
    /// <summary>Use file handles where the host file system supports them, O_PATH fds elsewhere.</summary>
    Prefer,
    /// <summary>Refuse (EOPNOTSUPP on lookup) inodes whose file system has no file handles.</summary>
    Mandatory,
}

/// <summary>Configuration of the passthrough file system; the CLI maps both virtiofsd dialects onto it.</summary>
public sealed class PassthroughOptions
{
    /// <summary>Host directory to export. Opened once (O_PATH|O_DIRECTORY) when the server is built.</summary>
    public required string SharedDir { get; init; }

    /// <summary>An O_PATH fd on /proc/self/fd opened before a sandbox hid /proc (the server dups it);
    /// null: the server opens "/proc/self/fd" itself.</summary>
    public int? ProcSelfFdDir { get; init; }

    public CachePolicy Cache { get; init; } = CachePolicy.Auto;

    /// <summary>Serve SETXATTR/GETXATTR/LISTXATTR/REMOVEXATTR; without it they answer ENOSYS (virtiofsd default).</summary>
    public bool Xattr { get; init; }

    /// <summary>POSIX ACLs: negotiates POSIX_ACL + DONT_MASK + SETXATTR_EXT; INIT fails (EPROTO) if the guest lacks them. Implies <see cref="Xattr"/>.</summary>
    public bool PosixAcl { get; init; }

    /// <summary>Security labels on create (FUSE_SECURITY_CTX); INIT fails (EPROTO) if the guest lacks it. Implies <see cref="Xattr"/>.</summary>
    public bool SecurityLabel { get; init; }

    /// <summary>xattr name mapping in the Rust virtiofsd --xattrmap syntax (rules prefix/ok/bad/unsupported/map). Implies <see cref="Xattr"/>.</summary>
    public string? XattrMap { get; init; }

    /// <summary>Negotiate WRITEBACK_CACHE (the guest may then read from write-only files; O_APPEND is the guest's job).</summary>
    public bool Writeback { get; init; }

    /// <summary>Negotiate HANDLE_KILLPRIV_V2: the daemon clears suid/sgid on write/truncate/chown when asked.</summary>
    public bool KillprivV2 { get; init; }

    /// <summary>Mark directories on another host mount with FUSE_ATTR_SUBMOUNT (Rust default: on).</summary>
    public bool AnnounceSubmounts { get; init; } = true;

    public InodeFileHandles InodeFileHandles { get; init; } = InodeFileHandles.Never;

    /// <summary>Keep the guest's O_DIRECT; otherwise it is stripped.</summary>
    public bool AllowDirectIo { get; init; }

    /// <summary>Negotiate DIRECT_IO_ALLOW_MMAP (shared mmap with cache never/metadata).</summary>
    public bool AllowMmap { get; init; }

    /// <summary>READDIRPLUS; always off with <see cref="CachePolicy.Never"/>.</summary>
    public bool Readdirplus { get; init; } = true;

    /// <summary>Keep the guest's O_NOATIME; otherwise it is stripped (it needs ownership or CAP_FOWNER).</summary>
    public bool PreserveNoatime { get; init; }

    /// <summary>Negotiate POSIX_LOCKS: fcntl locks are executed on the host as OFD locks, one open
    /// file description per guest lock owner. Off by default, as in both reference daemons: without
    /// it the guest kernel keeps POSIX locks to itself.</summary>
    public bool PosixLocks { get; init; }

    /// <summary>Negotiate FLOCK_LOCKS: flock(2) executed on the host. Off by default.</summary>
    public bool FlockLocks { get; init; }

    /// <summary>Refuse every modifying request with EROFS and open files read-only.</summary>
    public bool ReadOnly { get; init; }

    /// <summary>Most fds held for the guest (one per known inode, one per open file, one per lock
    /// owner); past it, requests that need another one fail with ENFILE. 0: derived from
    /// RLIMIT_NOFILE like virtiofsd (the soft limit minus a reserve for the daemon itself).</summary>
    public int MaxGuestFds { get; init; }

    /// <summary>Most nodes held by their file handle alone (--inode-file-handles=mandatory, or prefer past
    /// half the fd budget); past it, lookups of new inodes fail with ENFILE. Each costs about 250 bytes
    /// of daemon memory and no fd, so the fd budget does not bound them. 0: the default,
    /// <see cref="DefaultMaxHandleOnlyNodes"/>.</summary>
    public int MaxHandleOnlyNodes { get; init; }

    /// <summary>The default bound on handle-only nodes: as many as the default fd budget allows O_PATH
    /// nodes (RLIMIT_NOFILE is raised to 1,000,000), about 256 MiB at most.</summary>
    public const int DefaultMaxHandleOnlyNodes = 1 << 20;

    public int EffectiveMaxHandleOnlyNodes => MaxHandleOnlyNodes > 0 ? MaxHandleOnlyNodes : DefaultMaxHandleOnlyNodes;

    /// <summary>Use the paths of kernels before 6.13 (f*xattr on a reopened fd, path calls through the
    /// /proc/self/fd directory) even where the kernel has the *xattrat calls: the tests use it to run
    /// those paths on a new kernel.</summary>
    public bool AvoidXattrAt { get; init; }

    /// <summary>Overrides the entry timeout the cache policy implies.</summary>
    public TimeSpan? EntryTimeout { get; init; }

    /// <summary>Overrides the attribute timeout the cache policy implies.</summary>
    public TimeSpan? AttrTimeout { get; init; }

    /// <summary>Entry (name) cache timeout the guest is told.</summary>
    public TimeSpan EffectiveEntryTimeout => EntryTimeout ?? DefaultTimeout(Cache);

    /// <summary>Attribute cache timeout the guest is told.</summary>
    public TimeSpan EffectiveAttrTimeout => AttrTimeout ?? DefaultTimeout(Cache);

    /// <summary>True when any xattr feature asks for the xattr opcodes.</summary>
    public bool XattrEnabled => Xattr || PosixAcl || SecurityLabel || XattrMap is not null;

    public bool ReaddirplusEnabled => Readdirplus && Cache != CachePolicy.Never;

    /// <summary>Timeouts of the reference table: never 0, auto 1 s, metadata and always 86400 s.</summary>
    public static TimeSpan DefaultTimeout(CachePolicy cache) => cache switch
    {
        CachePolicy.Never => TimeSpan.Zero,
        CachePolicy.Auto => TimeSpan.FromSeconds(1),
        _ => TimeSpan.FromSeconds(86400),
    };

    /// <summary>Throws ArgumentException with a clear message for an inconsistent configuration.</summary>
    public void Validate()
    {
        if (string.IsNullOrEmpty(SharedDir))
        {
            throw new ArgumentException("the shared directory must be given", nameof(SharedDir));
        }
        if (MaxGuestFds < 0)
        {
            throw new ArgumentException($"the guest fd limit must not be negative (got {MaxGuestFds})", nameof(MaxGuestFds));
        }
        if (EntryTimeout is { } e && e < TimeSpan.Zero || AttrTimeout is { } a && a < TimeSpan.Zero)
        {
            throw new ArgumentException("cache timeouts must not be negative");
        }
        if (XattrMap is not null)
        {
            FusePassthrough.XattrMap.Parse(XattrMap);
        }
    }
}
