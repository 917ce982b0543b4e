using System.Runtime.InteropServices;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.GuestKernelShim;

// The node table (fuse_iget, eviction, lookup counts), cached names, lookup and the path walk.
public sealed partial class FuseFs
{
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
        Cache?.DropNode(stale);
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
        Cache?.DropNode(node);
        Conn.QueueForget(node.NodeId, nlookup);
    }

    /// <summary>echo 2 &gt; drop_caches: drops every cached name and evicts every node that is not the root,
    /// not open and not a submount point; their lookups go back in BATCH_FORGETs. Returns the nodes evicted.</summary>
    public int DropCaches()
    {
        var forgets = new List<FuseForgetOne>();
        var victims = new List<FuseNode>();
        lock (_nodesLock)
        {
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
        if (Cache != null)
        {
            foreach (var victim in victims)
            {
                Cache.DropNode(victim);
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
}
