namespace Vhostfsd.FuseProtocol;

/// <summary>Protocol version and fixed numbers of the FUSE wire protocol.</summary>
public static class FuseConstants
{
    /// <summary>FUSE_KERNEL_VERSION: the only major version there is.</summary>
    public const uint KernelVersion = 7;

    /// <summary>The minor version this implementation speaks (STATX of 7.39, the init_out fields of
    /// 7.40, ALLOW_IDMAP's numbering of 7.41). Peers settle on the smaller of the two minors.</summary>
    public const uint KernelMinorVersion = 41;

    /// <summary>Oldest guest minor accepted (as the Rust virtiofsd: 7.27; Linux 5.4 sends 7.31).</summary>
    public const uint MinSupportedMinor = 27;

    /// <summary>FUSE_ROOT_ID: node id of the root directory.</summary>
    public const ulong RootId = 1;

    /// <summary>FUSE_MIN_READ_BUFFER.</summary>
    public const int MinReadBuffer = 8192;

    public const int CompatEntryOutSize = 120;
    public const int CompatAttrOutSize = 96;
    public const int CompatMknodInSize = 8;
    public const int CompatWriteInSize = 24;
    public const int CompatStatfsSize = 48;
    public const int CompatSetxattrInSize = 8;
    public const int CompatInitOutSize = 8;
    public const int Compat22InitOutSize = 24;

    /// <summary>Size of fuse_init_in before 7.36 (no flags2, no reserved words): kernels without
    /// FUSE_INIT_EXT send only these 16 bytes.</summary>
    public const int CompatInitInSize = 16;

    /// <summary>FUSE_IOCTL_MAX_IOV.</summary>
    public const int IoctlMaxIov = 256;

    /// <summary>FUSE_UNIQUE_RESEND: set in in_header.unique when the kernel resends a request.</summary>
    public const ulong UniqueResend = 1UL << 63;

    /// <summary>FUSE_INVALID_UIDGID: uid/gid the kernel sends when an idmapped mount cannot map the caller.</summary>
    public const uint InvalidUidGid = uint.MaxValue;

    /// <summary>FUSE_NAME_OFFSET: offset of the name in fuse_dirent.</summary>
    public const int NameOffset = FuseDirent.Size;

    /// <summary>FUSE_NAME_OFFSET_DIRENTPLUS: offset of the name in fuse_direntplus.</summary>
    public const int NameOffsetDirentplus = FuseDirentplus.Size;

    /// <summary>FUSE_URING_IN_OUT_HEADER_SZ / FUSE_URING_OP_IN_OUT_SZ.</summary>
    public const int UringInOutHeaderSize = 128;
    public const int UringOpInOutSize = 128;

    /// <summary>FUSE_REC_ALIGN / FUSE_DIRENT_ALIGN: records are padded to 8 bytes.</summary>
    public static int RecordAlign(int length) => (length + 7) & ~7;

    /// <summary>FUSE_DIRENT_SIZE for a name of <paramref name="nameLength"/> bytes.</summary>
    public static int DirentSize(int nameLength) => RecordAlign(NameOffset + nameLength);

    /// <summary>FUSE_DIRENTPLUS_SIZE for a name of <paramref name="nameLength"/> bytes.</summary>
    public static int DirentplusSize(int nameLength) => RecordAlign(NameOffsetDirentplus + nameLength);

    /// <summary>Linux new_encode_dev: the 32-bit device number of fuse_attr.rdev and fuse_mknod_in.rdev.</summary>
    public static uint EncodeDev(uint major, uint minor) => (minor & 0xFF) | ((major & 0xFFF) << 8) | ((minor & ~0xFFu) << 12);

    /// <summary>Linux new_decode_dev: major and minor of a 32-bit device number.</summary>
    public static (uint Major, uint Minor) DecodeDev(uint dev) => ((dev & 0xFFF00) >> 8, (dev & 0xFF) | ((dev >> 12) & 0xFFF00));

    /// <summary>Splits a 64-bit INIT flag set into the flags / flags2 words.</summary>
    public static (uint Flags, uint Flags2) SplitInitFlags(FuseInitFlags flags) => ((uint)(ulong)flags, (uint)((ulong)flags >> 32));

    /// <summary>Joins the flags / flags2 words of an INIT message into one 64-bit set.</summary>
    public static FuseInitFlags JoinInitFlags(uint flags, uint flags2) => (FuseInitFlags)(flags | ((ulong)flags2 << 32));
}
