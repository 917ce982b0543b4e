using System.Runtime.InteropServices;

namespace Vhostfsd.FuseProtocol;

// The wire structures of Linux include/uapi/linux/fuse.h (protocol 7.43), field for field, in the
// header's order, little-endian as on every virtio-fs host we serve. Padding is explicit, so
// LayoutKind.Sequential with natural alignment reproduces the C layout; FuseStructLayoutTests pins
// each Size and field offset. Read and write them with MemoryMarshal (see FuseWire).
// Naming: PascalCase of the C names; a C field called `size` is `Length` (or `FileSize` where it
// is a file's size) so that it does not collide with each struct's `Size` constant.
// One file, longer than the others, because it mirrors one C header: a reader checks it against
// fuse.h top to bottom, and the layout test walks it the same way.

/// <summary>struct fuse_attr.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseAttr
{
    public const int Size = 88;
    public ulong Ino;
    public ulong FileSize;
    public ulong Blocks;
    public ulong Atime;
    public ulong Mtime;
    public ulong Ctime;
    public uint AtimeNsec;
    public uint MtimeNsec;
    public uint CtimeNsec;
    public uint Mode;
    public uint Nlink;
    public uint Uid;
    public uint Gid;
    public uint Rdev;
    public uint BlkSize;
    public uint Flags;
}

/// <summary>struct fuse_sx_time (statx timestamp).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseSxTime
{
    public const int Size = 16;
    public long TvSec;
    public uint TvNsec;
    public int Reserved;
}

/// <summary>struct fuse_statx: bit-for-bit the statx(2) struct.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct FuseStatx
{
    public const int Size = 256;
    public uint Mask;
    public uint BlkSize;
    public ulong Attributes;
    public uint Nlink;
    public uint Uid;
    public uint Gid;
    public ushort Mode;
    public ushort Spare0;
    public ulong Ino;
    public ulong FileSize;
    public ulong Blocks;
    public ulong AttributesMask;
    public FuseSxTime Atime;
    public FuseSxTime Btime;
    public FuseSxTime Ctime;
    public FuseSxTime Mtime;
    public uint RdevMajor;
    public uint RdevMinor;
    public uint DevMajor;
    public uint DevMinor;
    public fixed ulong Spare2[14];
}

/// <summary>struct fuse_kstatfs.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct FuseKStatfs
{
    public const int Size = 80;
    public ulong Blocks;
    public ulong Bfree;
    public ulong Bavail;
    public ulong Files;
    public ulong Ffree;
    public uint Bsize;
    public uint NameLen;
    public uint Frsize;
    public uint Padding;
    public fixed uint Spare[6];
}

/// <summary>struct fuse_file_lock.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseFileLock
{
    public const int Size = 24;
    public ulong Start;
    public ulong End;
    public uint Type;
    /// <summary>tgid of the lock holder.</summary>
    public uint Pid;
}

/// <summary>struct fuse_entry_out: reply of LOOKUP, MKNOD, MKDIR, SYMLINK, LINK (and the entry part of CREATE/TMPFILE).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseEntryOut
{
    public const int Size = 128;
    public ulong NodeId;
    /// <summary>nodeid:generation must be unique for the file system's lifetime.</summary>
    public ulong Generation;
    public ulong EntryValid;
    public ulong AttrValid;
    public uint EntryValidNsec;
    public uint AttrValidNsec;
    public FuseAttr Attr;
}

/// <summary>struct fuse_forget_in.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseForgetIn
{
    public const int Size = 8;
    public ulong Nlookup;
}

/// <summary>struct fuse_forget_one: an element of BATCH_FORGET.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseForgetOne
{
    public const int Size = 16;
    public ulong NodeId;
    public ulong Nlookup;
}

/// <summary>struct fuse_batch_forget_in, followed by <see cref="Count"/> fuse_forget_one.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseBatchForgetIn
{
    public const int Size = 8;
    public uint Count;
    public uint Dummy;
}

/// <summary>struct fuse_getattr_in.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseGetattrIn
{
    public const int Size = 16;
    public uint GetattrFlags;
    public uint Dummy;
    public ulong Fh;
}

/// <summary>struct fuse_attr_out: reply of GETATTR and SETATTR.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseAttrOut
{
    public const int Size = 104;
    public ulong AttrValid;
    public uint AttrValidNsec;
    public uint Dummy;
    public FuseAttr Attr;
}

/// <summary>struct fuse_statx_in.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseStatxIn
{
    public const int Size = 24;
    public uint GetattrFlags;
    public uint Reserved;
    public ulong Fh;
    public uint SxFlags;
    public uint SxMask;
}

/// <summary>struct fuse_statx_out.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct FuseStatxOut
{
    public const int Size = 288;
    public ulong AttrValid;
    public uint AttrValidNsec;
    public uint Flags;
    public fixed ulong Spare[2];
    public FuseStatx Stat;
}

/// <summary>struct fuse_mknod_in, followed by the name.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseMknodIn
{
    public const int Size = 16;
    public uint Mode;
    public uint Rdev;
    public uint Umask;
    public uint Padding;
}

/// <summary>struct fuse_mkdir_in, followed by the name.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseMkdirIn
{
    public const int Size = 8;
    public uint Mode;
    public uint Umask;
}

/// <summary>struct fuse_rename_in, followed by the old and the new name.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseRenameIn
{
    public const int Size = 8;
    public ulong NewDir;
}

/// <summary>struct fuse_rename2_in, followed by the old and the new name.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseRename2In
{
    public const int Size = 16;
    public ulong NewDir;
    /// <summary>RENAME_NOREPLACE (1), RENAME_EXCHANGE (2), RENAME_WHITEOUT (4).</summary>
    public uint Flags;
    public uint Padding;
}

/// <summary>struct fuse_link_in, followed by the new name.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseLinkIn
{
    public const int Size = 8;
    public ulong OldNodeId;
}

/// <summary>struct fuse_setattr_in; <see cref="Valid"/> holds <see cref="FuseSetattrValid"/> bits.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseSetattrIn
{
    public const int Size = 88;
    public uint Valid;
    public uint Padding;
    public ulong Fh;
    public ulong FileSize;
    public ulong LockOwner;
    public ulong Atime;
    public ulong Mtime;
    public ulong Ctime;
    public uint AtimeNsec;
    public uint MtimeNsec;
    public uint CtimeNsec;
    public uint Mode;
    public uint Unused4;
    public uint Uid;
    public uint Gid;
    public uint Unused5;
}

/// <summary>struct fuse_open_in (OPEN, OPENDIR).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseOpenIn
{
    public const int Size = 8;
    public uint Flags;
    /// <summary><see cref="FuseOpenInFlags"/> bits.</summary>
    public uint OpenFlags;
}

/// <summary>struct fuse_create_in (CREATE, TMPFILE), followed by the name.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseCreateIn
{
    public const int Size = 16;
    public uint Flags;
    public uint Mode;
    public uint Umask;
    /// <summary><see cref="FuseOpenInFlags"/> bits.</summary>
    public uint OpenFlags;
}

/// <summary>struct fuse_open_out.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseOpenOut
{
    public const int Size = 16;
    public ulong Fh;
    /// <summary><see cref="FuseOpenOutFlags"/> bits.</summary>
    public uint OpenFlags;
    public int BackingId;
}

/// <summary>struct fuse_release_in (RELEASE, RELEASEDIR).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseReleaseIn
{
    public const int Size = 24;
    public ulong Fh;
    public uint Flags;
    /// <summary><see cref="FuseReleaseFlags"/> bits.</summary>
    public uint ReleaseFlags;
    public ulong LockOwner;
}

/// <summary>struct fuse_flush_in.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseFlushIn
{
    public const int Size = 24;
    public ulong Fh;
    public uint Unused;
    public uint Padding;
    public ulong LockOwner;
}

/// <summary>struct fuse_read_in (READ, READDIR, READDIRPLUS).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseReadIn
{
    public const int Size = 40;
    public ulong Fh;
    public ulong Offset;
    public uint Length;
    /// <summary><see cref="FuseReadFlags"/> bits.</summary>
    public uint ReadFlags;
    public ulong LockOwner;
    public uint Flags;
    public uint Padding;
}

/// <summary>struct fuse_write_in, followed by the data.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseWriteIn
{
    public const int Size = 40;
    public ulong Fh;
    public ulong Offset;
    public uint Length;
    /// <summary><see cref="FuseWriteFlags"/> bits.</summary>
    public uint WriteFlags;
    public ulong LockOwner;
    public uint Flags;
    public uint Padding;
}

/// <summary>struct fuse_write_out (WRITE, COPY_FILE_RANGE).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseWriteOut
{
    public const int Size = 8;
    public uint Length;
    public uint Padding;
}

/// <summary>struct fuse_statfs_out.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseStatfsOut
{
    public const int Size = 80;
    public FuseKStatfs St;
}

/// <summary>struct fuse_fsync_in (FSYNC, FSYNCDIR).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseFsyncIn
{
    public const int Size = 16;
    public ulong Fh;
    /// <summary><see cref="FuseFsyncFlags"/> bits.</summary>
    public uint FsyncFlags;
    public uint Padding;
}

/// <summary>struct fuse_setxattr_in; 8 bytes (<see cref="FuseConstants.CompatSetxattrInSize"/>)
/// unless FUSE_SETXATTR_EXT was negotiated. Followed by the name and the value.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseSetxattrIn
{
    public const int Size = 16;
    public uint Length;
    /// <summary>XATTR_CREATE (1) / XATTR_REPLACE (2).</summary>
    public uint Flags;
    /// <summary><see cref="FuseSetxattrFlags"/> bits.</summary>
    public uint SetxattrFlags;
    public uint Padding;
}

/// <summary>struct fuse_getxattr_in (GETXATTR, followed by the name; LISTXATTR).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseGetxattrIn
{
    public const int Size = 8;
    public uint Length;
    public uint Padding;
}

/// <summary>struct fuse_getxattr_out: the size reply when the request's size was 0.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseGetxattrOut
{
    public const int Size = 8;
    public uint Length;
    public uint Padding;
}

/// <summary>struct fuse_lk_in (GETLK, SETLK, SETLKW).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseLkIn
{
    public const int Size = 48;
    public ulong Fh;
    public ulong Owner;
    public FuseFileLock Lk;
    /// <summary><see cref="FuseLkFlags"/> bits.</summary>
    public uint LkFlags;
    public uint Padding;
}

/// <summary>struct fuse_lk_out.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseLkOut
{
    public const int Size = 24;
    public FuseFileLock Lk;
}

/// <summary>struct fuse_access_in.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseAccessIn
{
    public const int Size = 8;
    public uint Mask;
    public uint Padding;
}

/// <summary>struct fuse_init_in. Kernels before 7.36 send only the first
/// <see cref="FuseConstants.CompatInitInSize"/> bytes.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct FuseInitIn
{
    public const int Size = 64;
    public uint Major;
    public uint Minor;
    public uint MaxReadahead;
    public uint Flags;
    public uint Flags2;
    public fixed uint Unused[11];
}

/// <summary>struct fuse_init_out.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct FuseInitOut
{
    public const int Size = 64;
    public uint Major;
    public uint Minor;
    public uint MaxReadahead;
    public uint Flags;
    public ushort MaxBackground;
    public ushort CongestionThreshold;
    public uint MaxWrite;
    public uint TimeGran;
    public ushort MaxPages;
    public ushort MapAlignment;
    public uint Flags2;
    public uint MaxStackDepth;
    public ushort RequestTimeout;
    public fixed ushort Unused[11];
}

/// <summary>struct cuse_init_in.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct CuseInitIn
{
    public const int Size = 16;
    public uint Major;
    public uint Minor;
    public uint Unused;
    public uint Flags;
}

/// <summary>struct cuse_init_out.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct CuseInitOut
{
    public const int Size = 72;
    public uint Major;
    public uint Minor;
    public uint Unused;
    public uint Flags;
    public uint MaxRead;
    public uint MaxWrite;
    public uint DevMajor;
    public uint DevMinor;
    public fixed uint Spare[10];
}

/// <summary>struct fuse_interrupt_in.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseInterruptIn
{
    public const int Size = 8;
    public ulong Unique;
}

/// <summary>struct fuse_bmap_in.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseBmapIn
{
    public const int Size = 16;
    public ulong Block;
    public uint BlockSize;
    public uint Padding;
}

/// <summary>struct fuse_bmap_out.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseBmapOut
{
    public const int Size = 8;
    public ulong Block;
}

/// <summary>struct fuse_ioctl_in, followed by in_size bytes of input.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseIoctlIn
{
    public const int Size = 32;
    public ulong Fh;
    /// <summary><see cref="FuseIoctlFlags"/> bits.</summary>
    public uint Flags;
    public uint Cmd;
    public ulong Arg;
    public uint InSize;
    public uint OutSize;
}

/// <summary>struct fuse_ioctl_iovec.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseIoctlIovec
{
    public const int Size = 16;
    public ulong Base;
    public ulong Len;
}

/// <summary>struct fuse_ioctl_out, followed by the output data.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseIoctlOut
{
    public const int Size = 16;
    public int Result;
    public uint Flags;
    public uint InIovs;
    public uint OutIovs;
}

/// <summary>struct fuse_poll_in.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FusePollIn
{
    public const int Size = 24;
    public ulong Fh;
    public ulong Kh;
    public uint Flags;
    public uint Events;
}

/// <summary>struct fuse_poll_out.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FusePollOut
{
    public const int Size = 8;
    public uint Revents;
    public uint Padding;
}

/// <summary>struct fuse_notify_poll_wakeup_out.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseNotifyPollWakeupOut
{
    public const int Size = 8;
    public ulong Kh;
}

/// <summary>struct fuse_fallocate_in.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseFallocateIn
{
    public const int Size = 32;
    public ulong Fh;
    public ulong Offset;
    public ulong Length;
    public uint Mode;
    public uint Padding;
}

/// <summary>struct fuse_in_header: starts every request.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseInHeader
{
    public const int Size = 40;
    /// <summary>Total request length including this header.</summary>
    public uint Len;
    public uint Opcode;
    public ulong Unique;
    public ulong NodeId;
    public uint Uid;
    public uint Gid;
    public uint Pid;
    /// <summary>Length of the extensions at the end of the request, in 8-byte units (7.38).</summary>
    public ushort TotalExtLen;
    public ushort Padding;
}

/// <summary>struct fuse_out_header: starts every reply.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseOutHeader
{
    public const int Size = 16;
    /// <summary>Total reply length including this header.</summary>
    public uint Len;
    /// <summary>0 or a negative errno.</summary>
    public int Error;
    public ulong Unique;
}

/// <summary>struct fuse_dirent without its flexible name; the name follows, and the record is
/// padded to <see cref="FuseConstants.DirentSize"/>.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseDirent
{
    public const int Size = 24;
    public ulong Ino;
    /// <summary>The offset a READDIR should pass to resume after this entry.</summary>
    public ulong Off;
    public uint NameLen;
    /// <summary>DT_* type (mode &gt;&gt; 12).</summary>
    public uint Type;
}

/// <summary>struct fuse_direntplus without the dirent's flexible name.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseDirentplus
{
    public const int Size = 152;
    public FuseEntryOut EntryOut;
    public FuseDirent Dirent;
}

/// <summary>struct fuse_notify_inval_inode_out.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseNotifyInvalInodeOut
{
    public const int Size = 24;
    public ulong Ino;
    public long Off;
    public long Len;
}

/// <summary>struct fuse_notify_inval_entry_out, followed by the name.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseNotifyInvalEntryOut
{
    public const int Size = 16;
    public ulong Parent;
    public uint NameLen;
    /// <summary><see cref="FuseNotifyInvalEntryFlags"/> bits.</summary>
    public uint Flags;
}

/// <summary>struct fuse_notify_delete_out, followed by the name.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseNotifyDeleteOut
{
    public const int Size = 24;
    public ulong Parent;
    public ulong Child;
    public uint NameLen;
    public uint Padding;
}

/// <summary>struct fuse_notify_store_out, followed by the data.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseNotifyStoreOut
{
    public const int Size = 24;
    public ulong NodeId;
    public ulong Offset;
    public uint Length;
    public uint Padding;
}

/// <summary>struct fuse_notify_retrieve_out.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseNotifyRetrieveOut
{
    public const int Size = 32;
    public ulong NotifyUnique;
    public ulong NodeId;
    public ulong Offset;
    public uint Length;
    public uint Padding;
}

/// <summary>struct fuse_notify_retrieve_in (same size as fuse_write_in), followed by the data.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseNotifyRetrieveIn
{
    public const int Size = 40;
    public ulong Dummy1;
    public ulong Offset;
    public uint Length;
    public uint Dummy2;
    public ulong Dummy3;
    public ulong Dummy4;
}

/// <summary>struct fuse_backing_map (FUSE_DEV_IOC_BACKING_OPEN).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseBackingMap
{
    public const int Size = 16;
    public int Fd;
    public uint Flags;
    public ulong Padding;
}

/// <summary>struct fuse_lseek_in.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseLseekIn
{
    public const int Size = 24;
    public ulong Fh;
    public ulong Offset;
    public uint Whence;
    public uint Padding;
}

/// <summary>struct fuse_lseek_out.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseLseekOut
{
    public const int Size = 8;
    public ulong Offset;
}

/// <summary>struct fuse_copy_file_range_in.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseCopyFileRangeIn
{
    public const int Size = 56;
    public ulong FhIn;
    public ulong OffIn;
    public ulong NodeIdOut;
    public ulong FhOut;
    public ulong OffOut;
    public ulong Len;
    public ulong Flags;
}

/// <summary>struct fuse_setupmapping_in (DAX).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseSetupmappingIn
{
    public const int Size = 40;
    public ulong Fh;
    public ulong FOffset;
    public ulong Len;
    /// <summary><see cref="FuseSetupmappingFlags"/> bits.</summary>
    public ulong Flags;
    public ulong MOffset;
}

/// <summary>struct fuse_removemapping_in (DAX), followed by count fuse_removemapping_one.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseRemovemappingIn
{
    public const int Size = 4;
    public uint Count;
}

/// <summary>struct fuse_removemapping_one.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseRemovemappingOne
{
    public const int Size = 16;
    public ulong MOffset;
    public ulong Len;
}

/// <summary>struct fuse_syncfs_in.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseSyncfsIn
{
    public const int Size = 8;
    public ulong Padding;
}

/// <summary>struct fuse_secctx: one security context; followed by the NUL-terminated context
/// name (e.g. "security.selinux") and <see cref="Length"/> bytes of label, padded to 8 bytes.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseSecctx
{
    public const int Size = 8;
    public uint Length;
    public uint Padding;
}

/// <summary>struct fuse_secctx_header: precedes nr_secctx fuse_secctx; size covers them all and itself.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseSecctxHeader
{
    public const int Size = 8;
    public uint Length;
    public uint NrSecctx;
}

/// <summary>struct fuse_ext_header: a request extension (type above <see cref="FuseExtType.MaxNrSecctx"/>).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseExtHeader
{
    public const int Size = 8;
    /// <summary>Size of the extension including this header (a multiple of 8).</summary>
    public uint Length;
    public uint Type;
}

/// <summary>struct fuse_supp_groups without its flexible groups array (nr_groups uint32 follow).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseSuppGroups
{
    public const int Size = 4;
    public uint NrGroups;
}

/// <summary>struct fuse_uring_ent_in_out.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FuseUringEntInOut
{
    public const int Size = 32;
    public ulong Flags;
    public ulong CommitId;
    public uint PayloadSz;
    public uint Padding;
    public ulong Reserved;
}

/// <summary>struct fuse_uring_cmd_req.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct FuseUringCmdReq
{
    public const int Size = 24;
    public ulong Flags;
    public ulong CommitId;
    public ushort Qid;
    public fixed byte Padding[6];
}
