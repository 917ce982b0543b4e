using Vhostfsd.FuseProtocol;

namespace Vhostfsd.FusePassthrough;

/// <summary>Who sent a request: the fuse_in_header's credentials and unique, plus the supplementary
/// groups of its CREATE_SUPP_GROUP extension. Valid for the duration of the call.</summary>
public readonly ref struct RequestContext
{
    public RequestContext(scoped in FuseInHeader header, ReadOnlySpan<byte> groups, int groupCount)
    {
        Unique = header.Unique;
        Uid = header.Uid;
        Gid = header.Gid;
        Pid = header.Pid;
        Groups = groups;
        GroupCount = groupCount;
    }

    public ulong Unique { get; }
    public uint Uid { get; }
    public uint Gid { get; }
    public uint Pid { get; }

    /// <summary>The extension's group ids, <see cref="GroupCount"/> little-endian u32s (empty when the
    /// request carried none).</summary>
    public ReadOnlySpan<byte> Groups { get; }

    public int GroupCount { get; }
}

/// <summary>The security context (an LSM label) a creating request carries, as the guest sent it:
/// <see cref="Name"/> NUL-terminated, <see cref="Value"/> the label. Absent when the value is empty.
/// The server checked only its framing; what name may reach the host is the file system's call.</summary>
public readonly ref struct SecurityLabel
{
    public SecurityLabel(ReadOnlySpan<byte> name, ReadOnlySpan<byte> value)
    {
        Name = name;
        Value = value;
    }

    public ReadOnlySpan<byte> Name { get; }
    public ReadOnlySpan<byte> Value { get; }
    public bool IsPresent => Value.Length > 0;
}

/// <summary>A file system behind <see cref="FuseServer{TFs}"/>: one method per FUSE operation, each
/// taking decoded, length-checked arguments and returning 0 or -errno (and its reply struct).
///
/// The server has already checked every length, the framing of names (NUL-terminated; names of new
/// entries not empty, at most NAME_MAX bytes, without '/', not "." or "..") and of extensions; the
/// file system decides what the values mean and checks everything else — node ids and handles the
/// guest was never given, flags, sizes, which attribute names may reach the host. Methods are called
/// from several threads at once; <see cref="Forget"/> and <see cref="Interrupt"/> come from the
/// hiprio queue and have no reply. Name spans include their NUL.
///
/// Implement it on a struct (for a class, on a struct that forwards to it, like
/// <see cref="PassthroughCalls"/>): the server is generic over the file system and the JIT then
/// specialises it, so no call on the request path is virtual.</summary>
public interface IFileSystem
{
    /// <summary>INIT: the flags this file system wants granted, out of those the guest offered (the
    /// server grants them with its own), or -errno (EPROTO: it cannot serve a guest without some
    /// flag it needs).</summary>
    int Init(FuseInitFlags offered, out FuseInitFlags wanted);

    /// <summary>After a successful INIT: what the guest and server agreed.</summary>
    void Negotiated(FuseInitFlags granted);

    /// <summary>DESTROY, a device reset or a disconnect: every node but the root and every handle go.</summary>
    void Destroy();

    /// <summary>Every modifying request is answered EROFS by the server.</summary>
    bool IsReadOnly { get; }

    void Forget(ulong node, ulong lookups);

    /// <summary>The guest gave up waiting for request <paramref name="unique"/> (a lock wait may stop).</summary>
    void Interrupt(ulong unique);

    int Lookup(in RequestContext context, ulong parent, ReadOnlySpan<byte> name, out FuseEntryOut entry);
    int Getattr(in RequestContext context, ulong node, out FuseAttrOut attr);
    int Setattr(in RequestContext context, ulong node, in FuseSetattrIn change, out FuseAttrOut attr);

    /// <summary>The target into <paramref name="target"/> (PATH_MAX bytes), its length in <paramref name="length"/>.</summary>
    int Readlink(in RequestContext context, ulong node, Span<byte> target, out int length);

    int Symlink(in RequestContext context, ulong parent, ReadOnlySpan<byte> name, ReadOnlySpan<byte> target, in SecurityLabel label, out FuseEntryOut entry);
    int Mknod(in RequestContext context, ulong parent, ReadOnlySpan<byte> name, in FuseMknodIn arguments, in SecurityLabel label, out FuseEntryOut entry);
    int Mkdir(in RequestContext context, ulong parent, ReadOnlySpan<byte> name, in FuseMkdirIn arguments, in SecurityLabel label, out FuseEntryOut entry);
    int Unlink(in RequestContext context, ulong parent, ReadOnlySpan<byte> name);
    int Rmdir(in RequestContext context, ulong parent, ReadOnlySpan<byte> name);
    int Rename(in RequestContext context, ulong parent, ReadOnlySpan<byte> name, ulong newParent, ReadOnlySpan<byte> newName, uint flags);
    int Link(in RequestContext context, ulong node, ulong newParent, ReadOnlySpan<byte> newName, out FuseEntryOut entry);

    int Open(in RequestContext context, ulong node, in FuseOpenIn arguments, out FuseOpenOut open);

    /// <summary>CREATE, or TMPFILE when <paramref name="tmpfile"/> (then <paramref name="name"/> is
    /// whatever the guest sent and has no meaning).</summary>
    int Create(in RequestContext context, ulong parent, ReadOnlySpan<byte> name, in FuseCreateIn arguments, in SecurityLabel label, bool tmpfile,
        out FuseEntryOut entry, out FuseOpenOut open);

    /// <summary>Reads into <paramref name="data"/>: at most <c>arguments.Length</c> bytes and never more
    /// than the writer has room for; advancing the writer is the reply.</summary>
    int Read(scoped in RequestContext context, ulong node, in FuseReadIn arguments, ref ReplyWriter data);

    /// <summary>Writes the <c>arguments.Length</c> bytes left in <paramref name="data"/> (the server
    /// checked that they are exactly what remains of the request).</summary>
    int Write(scoped in RequestContext context, ulong node, in FuseWriteIn arguments, ref RequestReader data, out uint written);

    int Flush(in RequestContext context, ulong node, in FuseFlushIn arguments);
    int Release(in RequestContext context, ulong node, in FuseReleaseIn arguments, bool directory);
    int Fsync(in RequestContext context, ulong node, in FuseFsyncIn arguments, bool directory);
    int Opendir(in RequestContext context, ulong node, in FuseOpenIn arguments, out FuseOpenOut open);

    /// <summary>READDIR or READDIRPLUS (as <paramref name="entries"/> says): adds entries from
    /// <c>arguments.Offset</c> on until the writer is full or the directory ends.</summary>
    int Readdir(scoped in RequestContext context, ulong node, in FuseReadIn arguments, ref DirentWriter entries);

    int Statfs(in RequestContext context, ulong node, out FuseStatfsOut statfs);
    int Statx(in RequestContext context, ulong node, in FuseStatxIn arguments, out FuseStatxOut statx);
    int Access(in RequestContext context, ulong node, uint mask);

    /// <summary><paramref name="name"/> without its NUL.</summary>
    int Setxattr(in RequestContext context, ulong node, ReadOnlySpan<byte> name, ReadOnlySpan<byte> value, uint flags, uint setxattrFlags);

    /// <summary>The whole value into <paramref name="value"/> (XATTR_SIZE_MAX bytes), its length in
    /// <paramref name="length"/>; the server answers size queries and ERANGE.</summary>
    int Getxattr(in RequestContext context, ulong node, ReadOnlySpan<byte> name, Span<byte> value, out int length);

    /// <summary>The NUL-separated names into <paramref name="list"/> (XATTR_SIZE_MAX bytes).</summary>
    int Listxattr(in RequestContext context, ulong node, Span<byte> list, out int length);

    int Removexattr(in RequestContext context, ulong node, ReadOnlySpan<byte> name);

    int Getlk(in RequestContext context, ulong node, in FuseLkIn arguments, out FuseFileLock conflict);

    /// <summary>SETLK, or SETLKW when <paramref name="wait"/> (which may wait until the lock is free, the
    /// request is interrupted or the session ends).</summary>
    int Setlk(in RequestContext context, ulong node, in FuseLkIn arguments, bool wait);

    int Fallocate(in RequestContext context, ulong node, in FuseFallocateIn arguments);
    int Lseek(in RequestContext context, ulong node, in FuseLseekIn arguments, out ulong offset);
    int CopyFileRange(in RequestContext context, ulong node, in FuseCopyFileRangeIn arguments, out uint copied);
    int Syncfs(in RequestContext context, ulong node);
}
