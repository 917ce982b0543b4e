using System.Diagnostics;
using Vhostfsd.FuseProtocol;

namespace Vhostfsd.GuestKernelShim;

/// <summary>An inode of a FUSE mount (Linux struct fuse_inode): the daemon's node id and generation,
/// the cached attributes with their expiry, the number of lookups the daemon has counted for it,
/// and — for a directory — the cached names below it (dentries with their entry timeouts).</summary>
public sealed class FuseNode
{
    internal readonly object Sync = new();
    internal FuseAttr CachedAttr;
    internal long AttrExpiry; // Stopwatch ticks; 0 = expired
    internal long Nlookup;
    internal int OpenCount;
    internal bool EvictOnRelease;
    internal bool Evicted;
    internal bool AdviseReaddirplus;
    internal string? CachedLink;
    internal Dictionary<string, Dentry>? Children;
    internal FuseMount? ChildMount;
    // Page-cache state of a regular file (made on first cached use; kept for the node's life).
    internal NodePages? Pages;

    internal FuseNode(FuseFs fs, FuseMount mount, ulong nodeId, ulong generation, in FuseAttr attr, FuseNode? parent)
    {
        Fs = fs;
        Mount = mount;
        NodeId = nodeId;
        Generation = generation;
        CachedAttr = attr;
        Parent = parent;
    }

    public FuseFs Fs { get; }

    /// <summary>The mount this node was found in (a submount's nodes belong to the child mount).</summary>
    public FuseMount Mount { get; }

    public ulong NodeId { get; }

    public ulong Generation { get; }

    /// <summary>The directory this node was last looked up in (the root's parent is the root).</summary>
    public FuseNode? Parent { get; internal set; }

    /// <summary>The daemon handed this node id out again with another generation or file type: every
    /// operation on this node fails with ESTALE.</summary>
    public bool IsStale { get; internal set; }

    /// <summary>Lookups the daemon has counted for this node and the shim has not yet forgotten.</summary>
    public long LookupCount
    {
        get
        {
            lock (Sync)
            {
                return Nlookup;
            }
        }
    }

    /// <summary>Open files (and directories) on this node.</summary>
    public int OpenFiles
    {
        get
        {
            lock (Sync)
            {
                return OpenCount;
            }
        }
    }

    /// <summary>The last attributes seen (possibly expired).</summary>
    public FuseAttr Attr
    {
        get
        {
            lock (Sync)
            {
                return CachedAttr;
            }
        }
    }

    public uint Mode => Attr.Mode;
    public bool IsDirectory => ModeBits.IsDirectory(Attr.Mode);
    public bool IsRegular => ModeBits.IsRegular(Attr.Mode);
    public bool IsSymlink => ModeBits.IsSymlink(Attr.Mode);

    /// <summary>A directory the daemon marked FUSE_ATTR_SUBMOUNT (with SUBMOUNTS negotiated): walking
    /// into it enters a child mount.</summary>
    public bool IsSubmountPoint => Fs.Conn.Has(FuseInitFlags.Submounts) && IsDirectory && (Attr.Flags & (uint)FuseAttrFlags.Submount) != 0;

    internal bool AttrValid => Volatile.Read(ref AttrExpiry) > Stopwatch.GetTimestamp();

    /// <summary>fuse_change_attributes: takes the daemon's attributes. With a page cache, a regular file keeps the
    /// size and times the guest itself is the authority for under FUSE_WRITEBACK_CACHE, and a size or mtime change
    /// drops cached pages (truncate, AUTO_INVAL_DATA) once the lock is released.</summary>
    internal void SetAttr(in FuseAttr attr, ulong validSec, uint validNsec)
    {
        var effect = CacheEffect.None;
        long newSize = 0;
        lock (Sync)
        {
            var incoming = attr;
            if (Pages != null)
            {
                effect = Fs.ReconcileCachedAttr(CachedAttr, ref incoming);
                newSize = (long)incoming.FileSize;
            }
            CachedAttr = incoming;
            AttrExpiry = FuseFs.ExpiryFrom(validSec, validNsec);
        }
        if (effect != CacheEffect.None)
        {
            Fs.ApplyCacheEffect(this, effect, newSize);
        }
    }

    /// <summary>A write or truncate done by the guest sets the size it knows (fuse_write_update_attr, i_size_write).</summary>
    internal void SetLocalSize(long size, bool onlyGrow)
    {
        lock (Sync)
        {
            if (!onlyGrow || (ulong)size > CachedAttr.FileSize)
            {
                CachedAttr.FileSize = (ulong)size;
            }
        }
    }

    /// <summary>After a SETATTR the guest made: the size and times it set come from the daemon's answer even where the
    /// guest is otherwise the authority for them (write-back caching).</summary>
    internal void TakeChangedAttr(in FuseAttr answer, bool size, bool mtime, bool ctime)
    {
        lock (Sync)
        {
            if (size)
            {
                CachedAttr.FileSize = answer.FileSize;
            }
            if (mtime)
            {
                CachedAttr.Mtime = answer.Mtime;
                CachedAttr.MtimeNsec = answer.MtimeNsec;
            }
            if (ctime || size || mtime)
            {
                CachedAttr.Ctime = answer.Ctime;
                CachedAttr.CtimeNsec = answer.CtimeNsec;
            }
        }
    }

    /// <summary>file_update_time under FUSE_WRITEBACK_CACHE: the guest stamps mtime and ctime itself.</summary>
    internal void TouchLocalTimes()
    {
        var now = DateTimeOffset.UtcNow;
        ulong seconds = (ulong)now.ToUnixTimeSeconds();
        uint nanoseconds = (uint)(now.Ticks % TimeSpan.TicksPerSecond * 100);
        lock (Sync)
        {
            CachedAttr.Mtime = seconds;
            CachedAttr.MtimeNsec = nanoseconds;
            CachedAttr.Ctime = seconds;
            CachedAttr.CtimeNsec = nanoseconds;
        }
    }

    internal void InvalidateAttr() => Volatile.Write(ref AttrExpiry, 0);

    public override string ToString() => $"node {NodeId} gen {Generation} mode {Convert.ToString(Attr.Mode, 8)}{(IsStale ? " (stale)" : "")}";
}

/// <summary>A cached name in a directory: the node it names (null for a negative entry) until it expires.</summary>
internal struct Dentry
{
    public FuseNode? Node;
    public long Expiry;

    public readonly bool IsValid => Expiry > Stopwatch.GetTimestamp();
}

/// <summary>A mount: the root mount of a <see cref="FuseFs"/> or a submount below a directory the daemon
/// announced with FUSE_ATTR_SUBMOUNT. Each has its own device number, as a guest sees a distinct st_dev.</summary>
public sealed class FuseMount
{
    private static int s_nextDevice = 0x10000;

    internal FuseMount(FuseFs fs, FuseMount? parent, FuseNode? mountPoint)
    {
        Fs = fs;
        Parent = parent;
        MountPoint = mountPoint;
        DeviceId = (uint)Interlocked.Increment(ref s_nextDevice);
    }

    public FuseFs Fs { get; }

    /// <summary>The mount this one is mounted in; null for the root mount.</summary>
    public FuseMount? Parent { get; }

    /// <summary>The submount directory (null for the root mount).</summary>
    public FuseNode? MountPoint { get; }

    /// <summary>The root node of this mount (the mount point node for a submount, the root for the root mount).</summary>
    public FuseNode Root => MountPoint ?? Fs.Root;

    /// <summary>The st_dev the guest would see for files in this mount.</summary>
    public uint DeviceId { get; }

    public bool IsSubmount => Parent != null;

    public override string ToString() => IsSubmount ? $"submount at node {MountPoint!.NodeId} (dev {DeviceId:x})" : $"root mount (dev {DeviceId:x})";
}

/// <summary>An open file or directory (Linux struct fuse_file): the daemon's handle and FOPEN flags.</summary>
public sealed class FuseFile
{
    private static long s_nextId;

    internal FuseFile(FuseNode node, ulong fh, int flags, FuseOpenOutFlags openFlags, bool isDirectory, bool noRelease, in FuseCaller opener)
    {
        Node = node;
        Fh = fh;
        Flags = flags;
        OpenFlags = openFlags;
        IsDirectory = isDirectory;
        NoRelease = noRelease;
        Opener = opener;
        Id = (ulong)Interlocked.Increment(ref s_nextId);
        IsDirectIo = isDirectory || node.Fs.Cache == null || !node.IsRegular || (openFlags & FuseOpenOutFlags.DirectIo) != 0
            || (flags & Posix.Libc.O_DIRECT) != 0;
    }

    public FuseNode Node { get; }

    /// <summary>The daemon's file handle (0 is valid).</summary>
    public ulong Fh { get; }

    /// <summary>open(2) flags as sent (after filtering).</summary>
    public int Flags { get; }

    /// <summary>FOPEN_* flags from the daemon.</summary>
    public FuseOpenOutFlags OpenFlags { get; }

    public bool IsDirectory { get; }

    /// <summary>Opened in no-open mode (OPEN/OPENDIR answered ENOSYS with NO_OPEN(DIR)_SUPPORT): no RELEASE is sent.</summary>
    public bool NoRelease { get; }

    /// <summary>Who opened it (credentials for RELEASE and FLUSH).</summary>
    public FuseCaller Opener { get; }

    internal ulong Id { get; }

    /// <summary>flock() was used on this file (RELEASE carries FUSE_RELEASE_FLOCK_UNLOCK).</summary>
    internal bool UsedFlock;

    /// <summary>Reads and writes bypass the page cache: the mount has none, the node is not a regular file, the
    /// daemon opened the file with FOPEN_DIRECT_IO, or it was opened with O_DIRECT.</summary>
    public bool IsDirectIo { get; }

    // The write-back error this file has reported up to (errseq_t f_wb_err), sampled at open.
    internal int WbErrSince;
    // The page after the last one read through the cache: a miss there is sequential and reads ahead.
    internal long ReadaheadNext;
    // Mappings made through this file; its RELEASE waits for the last of them (the mapping holds the file).
    internal int MapRefs;
    internal bool ReleaseDeferred;
    internal bool InWriteFiles;

    internal int Closed;

    public bool IsClosed => Volatile.Read(ref Closed) != 0;

    public bool CanRead => (Flags & 3) != 1;

    public bool CanWrite => (Flags & 3) != 0;

    public override string ToString() => $"fh {Fh} on {Node}";
}

/// <summary>One entry of a directory listing.</summary>
public sealed record FuseDirEntry(string Name, ulong Ino, ulong Offset, uint Type, FuseNode? Node)
{
    /// <summary>DT_DIR etc. (the type field of fuse_dirent).</summary>
    public bool IsDirectory => Type == 4;
}

/// <summary>The attribute changes of a SETATTR (chmod, chown, truncate, utimens); null = unchanged.</summary>
public struct SetAttrChange
{
    public uint? Mode;
    public uint? Uid;
    public uint? Gid;
    public ulong? Size;
    public (long Sec, uint Nsec)? Atime;
    public (long Sec, uint Nsec)? Mtime;
    public (long Sec, uint Nsec)? Ctime;
    public bool AtimeNow;
    public bool MtimeNow;
}
