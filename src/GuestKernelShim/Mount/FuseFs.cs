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

    /// <summary>umount: no forgets (the daemon drops everything at DESTROY), DESTROY, then the connection
    /// is aborted and the transport stopped. Open files are abandoned (their RELEASE is not sent).</summary>
    public void Unmount()
    {
        if (Interlocked.Exchange(ref _unmounted, 1) != 0)
        {
            return;
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

    // ---------------------------------------------------------------- nodes

    /// <summary>fuse_iget: the node for an entry the daemon handed out (its lookup count goes up by one). A
    /// known node id with another generation or file type makes the old node stale (ESTALE) and a new one.</summary>
    internal FuseNode Instantiate(in FuseEntryOut entry, FuseNode parent)
    {
        FuseNode? stale = null;
        FuseNode node;
        lock (_nodesLock)
        {
            if (_nodes.TryGetValue(entry.NodeId, out var existing))
            {
                if (existing.Generation != entry.Generation || ((existing.Attr.Mode ^ entry.Attr.Mode) & ModeBits.TypeMask) != 0)
                {
                    existing.IsStale = true;
                    _nodes.Remove(entry.NodeId);
                    stale = existing;
                    existing = null;
                }
            }
            if (existing != null)
            {
                node = existing;
                lock (node.Sync)
                {
                    node.Nlookup++;
                    node.Parent = parent;
                }
            }
            else
            {
                var mount = parent.IsSubmountPoint ? ChildMountOf(parent) : parent.Mount;
                node = new FuseNode(this, mount, entry.NodeId, entry.Generation, entry.Attr, parent) { Nlookup = 1 };
                _nodes[entry.NodeId] = node;
            }
        }
        node.SetAttr(entry.Attr, entry.AttrValid, entry.AttrValidNsec);
        if (stale != null)
        {
            DropStale(stale);
        }
        return node;
    }

    private void DropStale(FuseNode stale)
    {
        // The stale inode is evicted like any other: its lookups go back to the daemon (fuse_evict_inode).
        RemoveDentriesOf(stale);
        ulong nlookup;
        lock (stale.Sync)
        {
            if (stale.OpenCount > 0)
            {
                stale.EvictOnRelease = true;
                return;
            }
            nlookup = (ulong)stale.Nlookup;
            stale.Nlookup = 0;
            stale.Evicted = true;
        }
        Conn.QueueForget(stale.NodeId, nlookup);
    }

    internal FuseMount ChildMountOf(FuseNode mountPoint)
    {
        lock (mountPoint.Sync)
        {
            return mountPoint.ChildMount ??= new FuseMount(this, mountPoint.Mount, mountPoint);
        }
    }

    /// <summary>The node with <paramref name="nodeId"/> if the shim knows it.</summary>
    public FuseNode? FindNode(ulong nodeId)
    {
        lock (_nodesLock)
        {
            return _nodes.GetValueOrDefault(nodeId);
        }
    }

    /// <summary>Evicts a node (as memory pressure or an unused inode would): its names are dropped from
    /// the cache and its lookup count goes back to the daemon in a FORGET. A node with open files is
    /// evicted when the last one is released. The root (and a submount point in use) is never evicted.</summary>
    public void Forget(FuseNode node)
    {
        ArgumentNullException.ThrowIfNull(node);
        if (ReferenceEquals(node, Root))
        {
            return;
        }
        ulong nlookup;
        lock (_nodesLock)
        {
            lock (node.Sync)
            {
                if (node.Evicted)
                {
                    return;
                }
                if (node.OpenCount > 0)
                {
                    node.EvictOnRelease = true;
                    return;
                }
                node.Evicted = true;
                nlookup = (ulong)node.Nlookup;
                node.Nlookup = 0;
                node.Children = null;
            }
            if (_nodes.TryGetValue(node.NodeId, out var present) && ReferenceEquals(present, node))
            {
                _nodes.Remove(node.NodeId);
            }
        }
        RemoveDentriesOf(node);
        Conn.QueueForget(node.NodeId, nlookup);
    }

    /// <summary>echo 2 &gt; drop_caches: drops every cached name and evicts every node that is not the root,
    /// not open and not a submount point; their lookups go back in BATCH_FORGETs. Returns the nodes evicted.</summary>
    public int DropCaches()
    {
        var forgets = new List<FuseForgetOne>();
        lock (_nodesLock)
        {
            var victims = new List<FuseNode>();
            foreach (var node in _nodes.Values)
            {
                lock (node.Sync)
                {
                    node.Children = null;
                    if (ReferenceEquals(node, Root) || node.OpenCount > 0 || node.ChildMount != null)
                    {
                        continue;
                    }
                    node.Evicted = true;
                    if (node.Nlookup > 0)
                    {
                        forgets.Add(new FuseForgetOne { NodeId = node.NodeId, Nlookup = (ulong)node.Nlookup });
                    }
                    node.Nlookup = 0;
                    victims.Add(node);
                }
            }
            foreach (var victim in victims)
            {
                _nodes.Remove(victim.NodeId);
            }
        }
        Conn.QueueForgets(CollectionsMarshal.AsSpan(forgets));
        return forgets.Count;
    }

    private static void RemoveDentriesOf(FuseNode node)
    {
        var parent = node.Parent;
        if (parent == null || ReferenceEquals(parent, node))
        {
            return;
        }
        lock (parent.Sync)
        {
            var children = parent.Children;
            if (children == null)
            {
                return;
            }
            List<string>? names = null;
            foreach (var (name, dentry) in children)
            {
                if (ReferenceEquals(dentry.Node, node))
                {
                    (names ??= new List<string>()).Add(name);
                }
            }
            if (names != null)
            {
                foreach (var name in names)
                {
                    children.Remove(name);
                }
            }
        }
    }

    private static void SetDentry(FuseNode dir, string name, FuseNode? node, ulong validSec, uint validNsec)
    {
        long expiry = ExpiryFrom(validSec, validNsec);
        lock (dir.Sync)
        {
            if (expiry == 0)
            {
                dir.Children?.Remove(name);
                return;
            }
            (dir.Children ??= new Dictionary<string, Dentry>(StringComparer.Ordinal))[name] = new Dentry { Node = node, Expiry = expiry };
        }
    }

    private static void DropDentry(FuseNode dir, string name)
    {
        lock (dir.Sync)
        {
            dir.Children?.Remove(name);
        }
    }

    /// <summary>After an unlink/rmdir/rename-over removed a name of <paramref name="node"/>: one link less;
    /// a node without links and without open files is evicted (iput_final of an unlinked inode).</summary>
    private void DropLink(FuseNode node, bool directory)
    {
        bool evict;
        lock (node.Sync)
        {
            var attr = node.CachedAttr;
            attr.Nlink = directory || attr.Nlink <= 1 ? 0 : attr.Nlink - 1;
            node.CachedAttr = attr;
            node.AttrExpiry = 0;
            evict = attr.Nlink == 0;
        }
        if (evict)
        {
            Forget(node);
        }
    }

    // ---------------------------------------------------------------- lookup and path walk

    /// <summary>Looks <paramref name="name"/> up in <paramref name="dir"/> (fuse_lookup): from the name cache while
    /// the entry timeout runs, else a LOOKUP. "." and ".." are resolved locally.</summary>
    public Errno Lookup(FuseNode dir, string name, out FuseNode? node, FuseCaller? caller = null)
    {
        var c = Who(caller);
        return LookupCore(dir, name, c, out node);
    }

    private Errno LookupCore(FuseNode dir, string name, in FuseCaller caller, out FuseNode? node)
    {
        node = null;
        var rc = CheckLive(dir);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (!dir.IsDirectory)
        {
            return Errno.ENOTDIR;
        }
        rc = CheckPermission(dir, ModeBits.MayExec, caller);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (name == ".")
        {
            node = dir;
            return Errno.OK;
        }
        if (name == "..")
        {
            node = dir.Parent ?? dir;
            return Errno.OK;
        }
        lock (dir.Sync)
        {
            if (dir.Children != null && dir.Children.TryGetValue(name, out var dentry))
            {
                if (dentry.IsValid && (dentry.Node == null || (!dentry.Node.IsStale && !dentry.Node.Evicted)))
                {
                    node = dentry.Node;
                    return node == null ? Errno.ENOENT : Errno.OK;
                }
                dir.Children.Remove(name);
            }
        }
        Span<byte> nameBuffer = stackalloc byte[NameBufferSize];
        int nameLength = EncodeName(name, nameBuffer);
        if (nameLength < 0)
        {
            return (Errno)(-nameLength);
        }
        FuseEntryOut entry = default;
        var reply = Conn.Send(FuseOpcode.Lookup, dir.NodeId, caller, new FuseArgs(nameBuffer[..nameLength]),
            MemoryMarshal.AsBytes(new Span<FuseEntryOut>(ref entry)), FuseReplyShape.Fixed);
        dir.AdviseReaddirplus = true;
        if (!reply.IsOk)
        {
            return reply.Errno;
        }
        if (entry.NodeId == 0)
        {
            // A negative entry: cached for its entry timeout.
            SetDentry(dir, name, null, entry.EntryValid, entry.EntryValidNsec);
            return Errno.ENOENT;
        }
        rc = ValidateEntry(entry, expectedType: 0);
        if (rc != Errno.OK)
        {
            return rc;
        }
        node = Instantiate(entry, dir);
        SetDentry(dir, name, node, entry.EntryValid, entry.EntryValidNsec);
        return Errno.OK;
    }

    /// <summary>fuse_invalid_attr and the root/type checks on an entry the daemon returned. When the entry is
    /// refused, the lookup the daemon counted is forgotten again (fuse_queue_forget of 1).</summary>
    private Errno ValidateEntry(in FuseEntryOut entry, uint expectedType)
    {
        bool bad = !ModeBits.IsValidType(entry.Attr.Mode) || entry.Attr.FileSize > long.MaxValue
            || entry.NodeId == FuseConstants.RootId
            || (expectedType != 0 && (entry.Attr.Mode & ModeBits.TypeMask) != expectedType);
        if (bad)
        {
            Conn.QueueForget(entry.NodeId, 1);
            return Errno.EIO;
        }
        return Errno.OK;
    }

    /// <summary>Resolves a path from the mount root. Intermediate symlinks are followed (absolute targets from
    /// the mount root); the last component is followed only with <paramref name="followFinal"/>.</summary>
    public Errno Walk(string path, out FuseNode node, FuseCaller? caller = null, bool followFinal = false)
    {
        var c = Who(caller);
        int links = 0;
        return WalkFrom(Root, path, c, followFinal, ref links, out node);
    }

    /// <summary>Resolves everything but the last component: the directory and the final name.</summary>
    public Errno WalkParent(string path, out FuseNode dir, out string name, FuseCaller? caller = null)
    {
        var c = Who(caller);
        string trimmed = path.TrimEnd('/');
        int slash = trimmed.LastIndexOf('/');
        name = slash < 0 ? trimmed : trimmed[(slash + 1)..];
        string parentPath = slash < 0 ? "" : trimmed[..slash];
        int links = 0;
        var rc = WalkFrom(Root, parentPath, c, followFinal: true, ref links, out dir);
        if (rc == Errno.OK && !dir.IsDirectory)
        {
            return Errno.ENOTDIR;
        }
        if (rc == Errno.OK && name.Length == 0)
        {
            return Errno.ENOENT;
        }
        return rc;
    }

    private Errno WalkFrom(FuseNode start, string path, in FuseCaller caller, bool followFinal, ref int links, out FuseNode node)
    {
        node = start;
        var parts = path.Split('/', StringSplitOptions.RemoveEmptyEntries);
        for (int i = 0; i < parts.Length; i++)
        {
            bool last = i == parts.Length - 1;
            var rc = LookupCore(node, parts[i], caller, out var next);
            if (rc != Errno.OK)
            {
                return rc;
            }
            if (next!.IsSymlink && (!last || followFinal))
            {
                if (++links > MaxSymlinks)
                {
                    return Errno.ELOOP;
                }
                rc = ReadLink(next, out string target, caller);
                if (rc != Errno.OK)
                {
                    return rc;
                }
                var from = target.StartsWith('/') ? Root : node;
                rc = WalkFrom(from, target, caller, followFinal: true, ref links, out next);
                if (rc != Errno.OK)
                {
                    return rc;
                }
            }
            node = next;
        }
        return Errno.OK;
    }

    // ---------------------------------------------------------------- attributes

    /// <summary>stat: the cached attributes while the attribute timeout runs, else a GETATTR (through the open
    /// file's handle when <paramref name="file"/> is given). <paramref name="force"/> skips the cache.</summary>
    public Errno GetAttr(FuseNode node, out FuseAttr attr, FuseCaller? caller = null, FuseFile? file = null, bool force = false)
    {
        var c = Who(caller);
        attr = default;
        var rc = CheckLiveAndAllowed(node, c);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (!force && node.AttrValid)
        {
            attr = node.Attr;
            return Errno.OK;
        }
        return FetchAttr(node, c, file, out attr);
    }

    /// <summary>The attributes, refreshed when expired (fuse_update_attributes).</summary>
    internal Errno RefreshAttr(FuseNode node, in FuseCaller caller, out FuseAttr attr)
    {
        if (node.AttrValid)
        {
            attr = node.Attr;
            return Errno.OK;
        }
        return FetchAttr(node, caller, null, out attr);
    }

    private Errno FetchAttr(FuseNode node, in FuseCaller caller, FuseFile? file, out FuseAttr attr)
    {
        attr = default;
        var arg = new FuseGetattrIn();
        if (file != null && !file.IsDirectory)
        {
            arg.GetattrFlags = (uint)FuseGetattrFlags.Fh;
            arg.Fh = file.Fh;
        }
        FuseAttrOut outArg = default;
        var reply = Conn.Send(FuseOpcode.Getattr, node.NodeId, caller, new FuseArgs(Bytes(in arg)),
            MemoryMarshal.AsBytes(new Span<FuseAttrOut>(ref outArg)), FuseReplyShape.Fixed);
        if (!reply.IsOk)
        {
            return reply.Errno;
        }
        return AcceptAttr(node, outArg, out attr);
    }

    private static Errno AcceptAttr(FuseNode node, in FuseAttrOut outArg, out FuseAttr attr)
    {
        attr = outArg.Attr;
        if (!ModeBits.IsValidType(attr.Mode) || attr.FileSize > long.MaxValue
            || ((attr.Mode ^ node.Attr.Mode) & ModeBits.TypeMask) != 0)
        {
            // fuse_make_bad: the node changed type under the guest.
            node.IsStale = true;
            return Errno.EIO;
        }
        node.SetAttr(attr, outArg.AttrValid, outArg.AttrValidNsec);
        return Errno.OK;
    }

    private const uint StatxType = 0x1;
    private const uint StatxSize = 0x200;

    /// <summary>statx(2): a STATX request when the daemon speaks 7.39 (falling back to GETATTR for good after
    /// ENOSYS), else built from GETATTR. st_dev is the mount's device, as the guest's VFS fills it in.</summary>
    public Errno Statx(FuseNode node, out FuseStatx statx, uint mask = 0x7FF, FuseCaller? caller = null, FuseFile? file = null)
    {
        var c = Who(caller);
        statx = default;
        var rc = CheckLiveAndAllowed(node, c);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (Conn.Minor >= 39 && !NoStatx)
        {
            var arg = new FuseStatxIn { SxMask = mask };
            if (file != null && !file.IsDirectory)
            {
                arg.GetattrFlags = (uint)FuseGetattrFlags.Fh;
                arg.Fh = file.Fh;
            }
            FuseStatxOut outArg = default;
            var reply = Conn.Send(FuseOpcode.Statx, node.NodeId, c, new FuseArgs(Bytes(in arg)),
                MemoryMarshal.AsBytes(new Span<FuseStatxOut>(ref outArg)), FuseReplyShape.Fixed);
            if (reply.IsOk)
            {
                // fuse_do_statx: a size past the largest file offset or a mode whose type is not a file type
                // or not the node's type marks the node bad (as for GETATTR) rather than reaching the caller.
                var sx = outArg.Stat;
                if (((sx.Mask & StatxSize) != 0 && sx.FileSize > long.MaxValue)
                    || ((sx.Mask & StatxType) != 0
                        && (!ModeBits.IsValidType(sx.Mode) || ((sx.Mode ^ node.Attr.Mode) & ModeBits.TypeMask) != 0)))
                {
                    node.IsStale = true;
                    return Errno.EIO;
                }
                statx = sx;
                statx.DevMajor = node.Mount.DeviceId >> 8;
                statx.DevMinor = node.Mount.DeviceId & 0xFF;
                return Errno.OK;
            }
            if (reply.Errno != Errno.ENOSYS)
            {
                return reply.Errno;
            }
            NoStatx = true;
        }
        rc = GetAttr(node, out var attr, c, file);
        if (rc != Errno.OK)
        {
            return rc;
        }
        statx = new FuseStatx
        {
            Mask = 0x7FF,
            BlkSize = attr.BlkSize,
            Nlink = attr.Nlink,
            Uid = attr.Uid,
            Gid = attr.Gid,
            Mode = (ushort)attr.Mode,
            Ino = attr.Ino,
            FileSize = attr.FileSize,
            Blocks = attr.Blocks,
            Atime = new FuseSxTime { TvSec = (long)attr.Atime, TvNsec = attr.AtimeNsec },
            Mtime = new FuseSxTime { TvSec = (long)attr.Mtime, TvNsec = attr.MtimeNsec },
            Ctime = new FuseSxTime { TvSec = (long)attr.Ctime, TvNsec = attr.CtimeNsec },
            RdevMajor = (attr.Rdev >> 8) & 0xFFF,
            RdevMinor = (attr.Rdev & 0xFF) | ((attr.Rdev >> 12) & 0xFFF00),
            DevMajor = node.Mount.DeviceId >> 8,
            DevMinor = node.Mount.DeviceId & 0xFF,
        };
        return Errno.OK;
    }
}
