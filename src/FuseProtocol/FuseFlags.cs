namespace Vhostfsd.FuseProtocol;

/// <summary>INIT request/reply flags as one 64-bit set: the low 32 bits travel in
/// fuse_init_in/out.flags, the high 32 bits in flags2 (only when <see cref="InitExt"/> is set).</summary>
[Flags]
public enum FuseInitFlags : ulong
{
    None = 0,
    AsyncRead = 1UL << 0,
    PosixLocks = 1UL << 1,
    FileOps = 1UL << 2,
    AtomicOTrunc = 1UL << 3,
    ExportSupport = 1UL << 4,
    BigWrites = 1UL << 5,
    DontMask = 1UL << 6,
    SpliceWrite = 1UL << 7,
    SpliceMove = 1UL << 8,
    SpliceRead = 1UL << 9,
    FlockLocks = 1UL << 10,
    HasIoctlDir = 1UL << 11,
    AutoInvalData = 1UL << 12,
    DoReaddirplus = 1UL << 13,
    ReaddirplusAuto = 1UL << 14,
    AsyncDio = 1UL << 15,
    WritebackCache = 1UL << 16,
    NoOpenSupport = 1UL << 17,
    ParallelDirops = 1UL << 18,
    HandleKillpriv = 1UL << 19,
    PosixAcl = 1UL << 20,
    AbortError = 1UL << 21,
    MaxPages = 1UL << 22,
    CacheSymlinks = 1UL << 23,
    NoOpendirSupport = 1UL << 24,
    ExplicitInvalData = 1UL << 25,
    MapAlignment = 1UL << 26,
    Submounts = 1UL << 27,
    HandleKillprivV2 = 1UL << 28,
    SetxattrExt = 1UL << 29,
    InitExt = 1UL << 30,
    InitReserved = 1UL << 31,
    // Bits 32..63: carried in flags2.
    SecurityCtx = 1UL << 32,
    HasInodeDax = 1UL << 33,
    CreateSuppGroup = 1UL << 34,
    HasExpireOnly = 1UL << 35,
    DirectIoAllowMmap = 1UL << 36,
    Passthrough = 1UL << 37,
    NoExportSupport = 1UL << 38,
    HasResend = 1UL << 39,
    AllowIdmap = 1UL << 40,
    OverIoUring = 1UL << 41,
    RequestTimeout = 1UL << 42,
}

/// <summary>FOPEN_* flags in fuse_open_out.open_flags.</summary>
[Flags]
public enum FuseOpenOutFlags : uint
{
    None = 0,
    DirectIo = 1u << 0,
    KeepCache = 1u << 1,
    NonSeekable = 1u << 2,
    CacheDir = 1u << 3,
    Stream = 1u << 4,
    NoFlush = 1u << 5,
    ParallelDirectWrites = 1u << 6,
    Passthrough = 1u << 7,
}

/// <summary>FATTR_* bits in fuse_setattr_in.valid.</summary>
[Flags]
public enum FuseSetattrValid : uint
{
    None = 0,
    Mode = 1u << 0,
    Uid = 1u << 1,
    Gid = 1u << 2,
    Size = 1u << 3,
    Atime = 1u << 4,
    Mtime = 1u << 5,
    Fh = 1u << 6,
    AtimeNow = 1u << 7,
    MtimeNow = 1u << 8,
    LockOwner = 1u << 9,
    Ctime = 1u << 10,
    KillSuidgid = 1u << 11,
}

/// <summary>FUSE_ATTR_* bits in fuse_attr.flags.</summary>
[Flags]
public enum FuseAttrFlags : uint
{
    None = 0,
    Submount = 1u << 0,
    Dax = 1u << 1,
}

/// <summary>FUSE_OPEN_* bits in fuse_open_in.open_flags / fuse_create_in.open_flags.</summary>
[Flags]
public enum FuseOpenInFlags : uint
{
    None = 0,
    KillSuidgid = 1u << 0,
}

/// <summary>FUSE_SETXATTR_* bits in fuse_setxattr_in.setxattr_flags (with SETXATTR_EXT).</summary>
[Flags]
public enum FuseSetxattrFlags : uint
{
    None = 0,
    AclKillSgid = 1u << 0,
}

/// <summary>FUSE_RELEASE_* bits in fuse_release_in.release_flags.</summary>
[Flags]
public enum FuseReleaseFlags : uint
{
    None = 0,
    Flush = 1u << 0,
    FlockUnlock = 1u << 1,
}

/// <summary>FUSE_GETATTR_* bits in fuse_getattr_in.getattr_flags.</summary>
[Flags]
public enum FuseGetattrFlags : uint
{
    None = 0,
    Fh = 1u << 0,
}

/// <summary>FUSE_LK_* bits in fuse_lk_in.lk_flags.</summary>
[Flags]
public enum FuseLkFlags : uint
{
    None = 0,
    Flock = 1u << 0,
}

/// <summary>FUSE_WRITE_* bits in fuse_write_in.write_flags.</summary>
[Flags]
public enum FuseWriteFlags : uint
{
    None = 0,
    Cache = 1u << 0,
    LockOwner = 1u << 1,
    /// <summary>FUSE_WRITE_KILL_SUIDGID (alias FUSE_WRITE_KILL_PRIV).</summary>
    KillSuidgid = 1u << 2,
}

/// <summary>FUSE_READ_* bits in fuse_read_in.read_flags.</summary>
[Flags]
public enum FuseReadFlags : uint
{
    None = 0,
    LockOwner = 1u << 1,
}

/// <summary>FUSE_IOCTL_* bits in fuse_ioctl_in/out.flags.</summary>
[Flags]
public enum FuseIoctlFlags : uint
{
    None = 0,
    Compat = 1u << 0,
    Unrestricted = 1u << 1,
    Retry = 1u << 2,
    Bit32 = 1u << 3,
    Dir = 1u << 4,
    CompatX32 = 1u << 5,
}

/// <summary>FUSE_POLL_* bits in fuse_poll_in.flags.</summary>
[Flags]
public enum FusePollFlags : uint
{
    None = 0,
    ScheduleNotify = 1u << 0,
}

/// <summary>FUSE_FSYNC_* bits in fuse_fsync_in.fsync_flags.</summary>
[Flags]
public enum FuseFsyncFlags : uint
{
    None = 0,
    Fdatasync = 1u << 0,
}

/// <summary>FUSE_SETUPMAPPING_FLAG_* bits in fuse_setupmapping_in.flags.</summary>
[Flags]
public enum FuseSetupmappingFlags : ulong
{
    None = 0,
    Write = 1UL << 0,
    Read = 1UL << 1,
}

/// <summary>Flags of fuse_notify_inval_entry_out.flags.</summary>
[Flags]
public enum FuseNotifyInvalEntryFlags : uint
{
    None = 0,
    ExpireOnly = 1u << 0,
}
