using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.GuestKernelShim;

/// <summary>A mounted FUSE file system as a guest kernel holds it (Linux fs/fuse/inode.c, dir.c, file.c,
/// readdir.c, xattr.c over one <see cref="FuseConn"/>): the node table with lookup counts, cached names
/// and attributes with their timeouts, open files, and one method per VFS operation. Every operation
/// takes the caller's credentials; with default_permissions the shim checks mode bits itself first.</summary>
/// <remarks>
/// Operations return <see cref="Errno"/> (OK on success) and never throw for what the daemon answers.
/// Paths are relative to the mount root ("a/b/c"; a leading '/' is ignored); intermediate symlinks are
/// followed, an absolute target resolving from the mount root. Nodes stay cached until
/// <see cref="Forget"/>, <see cref="DropCaches"/>, or an unlink that removes their last link; then their
/// lookup count goes back to the daemon in FORGET / BATCH_FORGET.
/// </remarks>
public sealed partial class FuseFs : IDisposable
{
    /// <summary>FUSE_NAME_MAX: the longest name a request carries.</summary>
    public const int NameMax = 1024;

    /// <summary>XATTR_NAME_MAX / XATTR_SIZE_MAX.</summary>
    public const int XattrNameMax = 255;
    public const int XattrSizeMax = 65536;

    /// <summary>MAXSYMLINKS: symlinks followed in one walk before ELOOP.</summary>
    public const int MaxSymlinks = 40;

    /// <summary>O_LARGEFILE: a 64-bit kernel sets it on every open file (force_o_largefile).</summary>
    private const int OLargefile = 0x8000;

    private readonly object _nodesLock = new();
    private readonly Dictionary<ulong, FuseNode> _nodes = new();
    private readonly LocalLocks _localLocks = new();
    private int _unmounted;

    // Operations the daemon answered with ENOSYS are not sent again (fc->no_*).
    internal volatile bool NoOpen;
    internal volatile bool NoOpendir;
    internal volatile bool NoFlush;
    internal volatile bool NoFsync;
    internal volatile bool NoFsyncdir;
    internal volatile bool NoAccess;
    internal volatile bool NoCreate;
    internal volatile bool NoStatx;
    internal volatile bool NoLseek;
    internal volatile bool NoCopyFileRange;
    internal volatile bool NoFallocate;
    internal volatile bool NoGetxattr;
    internal volatile bool NoSetxattr;
    internal volatile bool NoListxattr;
    internal volatile bool NoRemovexattr;
    internal volatile bool NoRename2;
    internal volatile bool NoSyncfs;

    private FuseFs(FuseConn conn, MountOptions options)
    {
        Conn = conn;
        Options = options;
        RootMount = new FuseMount(this, null, null);
        var attr = new FuseAttr { Ino = FuseConstants.RootId, Mode = options.RootMode, Nlink = 1, Uid = options.UserId, Gid = options.GroupId };
        Root = new FuseNode(this, RootMount, FuseConstants.RootId, 0, attr, null);
        Root.Parent = Root;
        _nodes[FuseConstants.RootId] = Root;
        if (options.CachePages > 0)
        {
            Cache = new PageCache(this, options.CachePages, options.DirtyExpire);
        }
    }

    public FuseConn Conn { get; }

    public MountOptions Options { get; }

    /// <summary>The root mount (submounts hang below it).</summary>
    public FuseMount RootMount { get; }

    /// <summary>The root directory (node 1): never forgotten.</summary>
    public FuseNode Root { get; }

    /// <summary>Credentials used by the overloads without a caller.</summary>
    public FuseCaller DefaultCaller { get; set; } = FuseCaller.Root;

    /// <summary>Nodes currently known (the root included).</summary>
    public int NodeCount
    {
        get
        {
            lock (_nodesLock)
            {
                return _nodes.Count;
            }
        }
    }

    /// <summary>Sum of lookup counts of every known node: what the daemon holds for this mount.</summary>
    public long TotalLookups
    {
        get
        {
            long total = 0;
            lock (_nodesLock)
            {
                foreach (var node in _nodes.Values)
                {
                    total += node.LookupCount;
                }
            }
            return total;
        }
    }

    public bool IsMounted => Volatile.Read(ref _unmounted) == 0 && !Conn.IsDisconnected;

    // ---------------------------------------------------------------- mount / unmount

    /// <summary>Mounts the virtio-fs device registered under <paramref name="tag"/> (see
    /// <see cref="VirtioFsDevice"/>), as mount -t virtiofs TAG does.</summary>
    public static FuseFs Mount(string tag, MountOptions? options = null, FuseConnOptions? connOptions = null)
    {
        ArgumentNullException.ThrowIfNull(tag);
        var device = VirtioFsDevice.Find(tag) ?? throw new ArgumentException($"no virtio-fs device with tag '{tag}'", nameof(tag));
        return Mount(device, options, connOptions);
    }

    /// <summary>Mounts over <paramref name="transport"/>: validates the options, sends INIT and sets up the
    /// root. Throws <see cref="ArgumentException"/> for options the shim refuses (dax other than never) and
    /// <see cref="FuseInitException"/> when INIT fails; the transport is disposed then.</summary>
    public static FuseFs Mount(IFuseTransport transport, MountOptions? options = null, FuseConnOptions? connOptions = null)
    {
        ArgumentNullException.ThrowIfNull(transport);
        options ??= new MountOptions();
        try
        {
            options.Validate();
        }
        catch
        {
            transport.Dispose();
            throw;
        }
        if (options.Writeback)
        {
            connOptions = (connOptions ?? new FuseConnOptions()).WithFlags(FuseInitFlags.WritebackCache);
        }
        var conn = new FuseConn(transport, connOptions);
        try
        {
            conn.Init();
        }
        catch
        {
            conn.Dispose();
            throw;
        }
        return new FuseFs(conn, options);
    }

    /// <summary>umount: dirty pages are written back, no forgets (the daemon drops everything at DESTROY), DESTROY,
    /// then the connection is aborted and the transport stopped. Open files are abandoned (their RELEASE is not sent).</summary>
    public void Unmount()
    {
        if (Interlocked.Exchange(ref _unmounted, 1) != 0)
        {
            return;
        }
        if (Cache != null)
        {
            // sync_filesystem: dirty pages reach the daemon before DESTROY.
            Cache.Stop();
            if (!Conn.IsDisconnected)
            {
                Cache.SyncAll(WritebackReason.Unmount);
            }
        }
        Conn.Unmount();
    }

    public void Dispose()
    {
        Unmount();
        Conn.Dispose();
    }

    private FuseCaller Who(FuseCaller? caller) => caller ?? DefaultCaller;

    internal static long ExpiryFrom(ulong sec, uint nsec)
    {
        if (sec == 0 && nsec == 0)
        {
            return 0;
        }
        const ulong maxSec = 100L * 365 * 24 * 3600;
        double seconds = Math.Min(sec, maxSec) + nsec / 1e9;
        return Stopwatch.GetTimestamp() + (long)(seconds * Stopwatch.Frequency);
    }

    internal static ReadOnlySpan<byte> Bytes<T>(ref readonly T value) where T : unmanaged
        => MemoryMarshal.AsBytes(new ReadOnlySpan<T>(in value));

    /// <summary>Encodes a name as the request carries it (UTF-8 and a NUL). Returns the length with the NUL,
    /// or a negative errno (ENAMETOOLONG, EINVAL for '/', NUL or an empty name).</summary>
    internal static int EncodeName(ReadOnlySpan<char> name, Span<byte> buffer)
    {
        if (name.IsEmpty)
        {
            return -(int)Errno.ENOENT;
        }
        if (name.IndexOfAny('/', '\0') >= 0)
        {
            return -(int)Errno.EINVAL;
        }
        if (Encoding.UTF8.GetMaxByteCount(name.Length) > buffer.Length - 1 && Encoding.UTF8.GetByteCount(name) > buffer.Length - 1)
        {
            return -(int)Errno.ENAMETOOLONG;
        }
        int length = Encoding.UTF8.GetBytes(name, buffer);
        if (length > NameMax)
        {
            return -(int)Errno.ENAMETOOLONG;
        }
        buffer[length] = 0;
        return length + 1;
    }

    private const int NameBufferSize = NameMax * 3 + 8;

    // ---------------------------------------------------------------- access control

    /// <summary>fuse_allow_current_process: without allow_other only the mount's user_id/group_id may use it.</summary>
    internal Errno CheckAllowed(in FuseCaller caller)
    {
        if (Options.AllowOther || caller.IsRoot || (caller.Uid == Options.UserId && caller.Gid == Options.GroupId))
        {
            return Errno.OK;
        }
        return Errno.EACCES;
    }

    /// <summary>fuse_permission: with default_permissions, generic_permission against fresh attributes.</summary>
    internal Errno CheckPermission(FuseNode node, int mask, in FuseCaller caller)
    {
        var allowed = CheckAllowed(caller);
        if (allowed != Errno.OK || !Options.DefaultPermissions || mask == 0)
        {
            return allowed;
        }
        var rc = RefreshAttr(node, caller, out var attr);
        if (rc != Errno.OK)
        {
            return rc;
        }
        return Permissions.Check(attr, mask, caller);
    }

    /// <summary>access(2): with default_permissions a local mode-bit check; without, an ACCESS request
    /// (not sent again after ENOSYS, which then means allowed).</summary>
    public Errno Access(FuseNode node, int mask, FuseCaller? caller = null)
    {
        var c = Who(caller);
        var rc = CheckLive(node);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (Options.DefaultPermissions)
        {
            return CheckPermission(node, mask, c);
        }
        var allowed = CheckAllowed(c);
        if (allowed != Errno.OK)
        {
            return allowed;
        }
        if (NoAccess)
        {
            return Errno.OK;
        }
        var arg = new FuseAccessIn { Mask = (uint)mask };
        var reply = Conn.Send(FuseOpcode.Access, node.NodeId, c, new FuseArgs(Bytes(in arg)), Span<byte>.Empty, FuseReplyShape.Fixed);
        if (reply.Errno == Errno.ENOSYS)
        {
            NoAccess = true;
            return Errno.OK;
        }
        return reply.Errno;
    }

    internal static Errno CheckLive(FuseNode node)
    {
        if (node.IsStale)
        {
            return Errno.ESTALE;
        }
        return Errno.OK;
    }

    /// <summary>The node is not stale (ESTALE) and the caller may use the mount at all (EACCES).</summary>
    private Errno CheckLiveAndAllowed(FuseNode node, in FuseCaller caller)
    {
        var rc = CheckLive(node);
        return rc != Errno.OK ? rc : CheckAllowed(caller);
    }

    /// <summary>The permission bits of a new node: the caller's umask is applied here unless DONT_MASK was
    /// negotiated (then the daemon applies the umask that travels in the request).</summary>
    private uint CreationPerm(uint mode, in FuseCaller caller)
    {
        uint perm = mode & 0xFFF;
        return Conn.Has(FuseInitFlags.DontMask) ? perm : perm & ~caller.Umask;
    }

}
