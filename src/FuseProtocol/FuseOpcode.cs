namespace Vhostfsd.FuseProtocol;

/// <summary>enum fuse_opcode (Linux include/uapi/linux/fuse.h, protocol 7.43).</summary>
public enum FuseOpcode : uint
{
    Lookup = 1,
    /// <summary>No reply.</summary>
    Forget = 2,
    Getattr = 3,
    Setattr = 4,
    Readlink = 5,
    Symlink = 6,
    Mknod = 8,
    Mkdir = 9,
    Unlink = 10,
    Rmdir = 11,
    Rename = 12,
    Link = 13,
    Open = 14,
    Read = 15,
    Write = 16,
    Statfs = 17,
    Release = 18,
    Fsync = 20,
    Setxattr = 21,
    Getxattr = 22,
    Listxattr = 23,
    Removexattr = 24,
    Flush = 25,
    Init = 26,
    Opendir = 27,
    Readdir = 28,
    Releasedir = 29,
    Fsyncdir = 30,
    Getlk = 31,
    Setlk = 32,
    Setlkw = 33,
    Access = 34,
    Create = 35,
    Interrupt = 36,
    Bmap = 37,
    Destroy = 38,
    Ioctl = 39,
    Poll = 40,
    NotifyReply = 41,
    /// <summary>No reply.</summary>
    BatchForget = 42,
    Fallocate = 43,
    Readdirplus = 44,
    Rename2 = 45,
    Lseek = 46,
    CopyFileRange = 47,
    Setupmapping = 48,
    Removemapping = 49,
    Syncfs = 50,
    Tmpfile = 51,
    Statx = 52,

    CuseInit = 4096,

    /// <summary>CUSE_INIT &lt;&lt; 8: reserved to detect a byte-swapped peer.</summary>
    CuseInitBswapReserved = 1048576,
    /// <summary>FUSE_INIT &lt;&lt; 24: reserved to detect a byte-swapped peer.</summary>
    FuseInitBswapReserved = 436207616,
}

/// <summary>enum fuse_notify_code: unsolicited messages from the file system (out_header.unique = 0).</summary>
public enum FuseNotifyCode
{
    Poll = 1,
    InvalInode = 2,
    InvalEntry = 3,
    Store = 4,
    Retrieve = 5,
    Delete = 6,
    Resend = 7,
}

/// <summary>enum fuse_ext_type: the type of a request extension (fuse_ext_header.type).
/// Types 0..31 are a fuse_secctx_header whose nr_secctx is the type.</summary>
public enum FuseExtType : uint
{
    MaxNrSecctx = 31,
    Groups = 32,
}
