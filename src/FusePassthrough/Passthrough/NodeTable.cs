using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.FusePassthrough.Passthrough;

/// <summary>Identity of a host inode: one FUSE node per (st_dev, st_ino, mount id).</summary>
internal readonly record struct InodeKey(ulong Dev, ulong Ino, ulong MntId);

/// <summary>A host inode the guest knows by node id. Holds an O_PATH fd (or a file handle) and the
/// guest's lookup count. Reference-counted so that a FORGET racing with a request that still
/// uses the node cannot close (and let the kernel reuse) its fd under that request.</summary>
internal sealed class Node
{
    public ulong Id;
    public InodeKey Key;
    /// <summary>S_IFMT bits of the inode.</summary>
    public uint FileType;
    /// <summary>O_PATH fd, or -1 when the node is held as a file handle.</summary>
    public int Fd = -1;
    /// <summary>The file handle (header + bytes) when <see cref="Fd"/> is -1.</summary>
    public byte[]? FileHandle;
    /// <summary>fd on the same mount for open_by_handle_at (owned by the table's mount list).</summary>
    public int MountFd = -1;
    /// <summary>Guest lookups not yet forgotten; 0 once the node has left the table (guarded by
    /// the lock of the key stripe of <see cref="Key"/>).</summary>
    public long Lookups;
    /// <summary>1 while in the id map plus one per request or handle using it (changed with
    /// Interlocked: taking one needs the id or key stripe lock, dropping one needs none).</summary>
    public int Refs;
    /// <summary>The node is the share root (never forgotten).</summary>
    public bool IsRoot;
    /// <summary>One open file description per guest lock owner holding POSIX (OFD) locks on this
    /// inode, created on the owner's first lock (guarded by <see cref="OwnersLock"/>). Per inode,
    /// not per handle: the guest's close() of any of the owner's files drops all its locks here.</summary>
    public Dictionary<ulong, LockOwnerFile>? LockOwners;
    public readonly object OwnersLock = new();

    public bool IsDirectory => FileType == Libc.S_IFDIR;
    public bool IsSymlink => FileType == Libc.S_IFLNK;
    public bool IsRegular => FileType == Libc.S_IFREG;
}

/// <summary>The node ids handed to the guest. Node ids come from a counter and are never reused
/// within a server's life (generation is always 0). Node objects are pooled, so a lookup of a
/// new inode does not allocate in the steady state.
///
/// Two striped maps, by id and by inode key, so that the workers of different request queues do
/// not share a lock: LOOKUP takes the parent's id stripe and the child's key stripe, a request on
/// a node its id stripe, each for a dictionary lookup and an interlocked increment. A node enters
/// the key map and then the id map while its key stripe is held (so an id found through the key
/// is already valid), and leaves the key map before the id map (so a node found through the key
/// still holds the id map's reference). Locks are never taken in the other order.</summary>
internal sealed class NodeTable
{
    private readonly Stripes<ulong, Node> _byId = new();
    private readonly Stripes<InodeKey, Node> _byKey = new();
    private readonly FdBudget _budget;
    private readonly int _maxHandleOnly;
    private long _lastId = (long)FuseConstants.RootId;
    private int _handleOnly;
    private Node? _root;

    /// <param name="maxHandleOnly">Most nodes held by their file handle alone: they hold no fd, so the
    /// fd budget does not bound them, and a guest that never FORGETs would otherwise grow the table
    /// without end.</param>
    public NodeTable(FdBudget budget, int maxHandleOnly = int.MaxValue)
    {
        _budget = budget;
        _maxHandleOnly = maxHandleOnly;
    }

    /// <summary>Nodes held by their file handle alone.</summary>
    public int HandleOnlyCount => Volatile.Read(ref _handleOnly);

    public Node Root => _root ?? throw new InvalidOperationException("no root node");

    /// <summary>Number of nodes in the table (root included).</summary>
    public int Count => _byId.CountEntries();

    /// <summary>Installs the root node (id 1) holding <paramref name="fd"/>; the table owns the fd.</summary>
    public void SetRoot(int fd, in InodeKey key)
    {
        var root = new Node { Id = FuseConstants.RootId, Key = key, FileType = Libc.S_IFDIR, Fd = fd, Lookups = 1, Refs = 1, IsRoot = true };
        _root = root;
        AddToMaps(root);
    }

    /// <summary>Takes a reference on node <paramref name="id"/>; null for an id the guest was never
    /// given or has forgotten. Release it with <see cref="Release"/>.</summary>
    public Node? Acquire(ulong id)
    {
        var stripe = _byId.For(id);
        lock (stripe)
        {
            if (!stripe.Map.TryGetValue(id, out Node? node))
            {
                return null;
            }
            // In the id map, so the map's reference keeps Refs above 0.
            Interlocked.Increment(ref node.Refs);
            return node;
        }
    }

    /// <summary>Adds a reference to a node the caller already holds.</summary>
    public void AddRef(Node node) => Interlocked.Increment(ref node.Refs);

    /// <summary>Drops a reference; the last one closes the fd and recycles the node.</summary>
    public void Release(Node node)
    {
        if (Interlocked.Decrement(ref node.Refs) == 0)
        {
            Destroy(node);
        }
    }

    /// <summary>If <paramref name="key"/> is known and its node pins the inode (holds an O_PATH fd):
    /// counts one more guest lookup, takes a reference for the caller and returns true. A node held
    /// by its file handle alone does not keep its inode alive, so the key (device, inode number) may
    /// now name a newer file that reused the number: such a node is only found through
    /// <see cref="Insert"/>, which compares the file handles.</summary>
    public bool TryLookupExisting(in InodeKey key, out Node node)
    {
        var stripe = _byKey.For(key);
        lock (stripe)
        {
            if (stripe.Map.TryGetValue(key, out node!) && node.Fd >= 0)
            {
                node.Lookups++;
                Interlocked.Increment(ref node.Refs);
                return true;
            }
        }
        node = null!;
        return false;
    }

    /// <summary>Counts one more guest lookup of <paramref name="node"/> itself (LOOKUP of "."), if the
    /// guest still knows it.</summary>
    public bool TryAddLookup(Node node)
    {
        var stripe = _byKey.For(node.Key);
        lock (stripe)
        {
            if (node.Lookups > 0 || node.IsRoot)
            {
                node.Lookups++;
                return true;
            }
        }
        return false;
    }

    /// <summary>Finds or adds the node for <paramref name="key"/>, counting one guest lookup and taking
    /// a reference for the caller. When the node already existed, <paramref name="fd"/> (which the
    /// caller took from the budget) is closed and returned to the budget here. A known node held by
    /// its file handle alone whose handle differs from <paramref name="fileHandle"/> is another,
    /// deleted inode whose number was reused: it keeps its id for the guest until forgotten, but the
    /// key now names a new node. Null when a new node would be held by its handle alone and
    /// the table already holds its maximum of those (the caller answers ENFILE; nothing was taken).</summary>
    public Node? Insert(in InodeKey key, uint fileType, int fd, byte[]? fileHandle, int mountFd)
    {
        Node node;
        bool existed;
        var stripe = _byKey.For(key);
        lock (stripe)
        {
            existed = stripe.Map.TryGetValue(key, out node!);
            if (existed && node.Fd < 0 && node.FileHandle is not null && fileHandle is not null
                && !node.FileHandle.AsSpan().SequenceEqual(fileHandle))
            {
                stripe.Map.Remove(key);
                existed = false;
            }
            if (existed)
            {
                node.Lookups++;
                Interlocked.Increment(ref node.Refs);
            }
            else
            {
                bool handleOnly = fd < 0 && fileHandle is not null;
                if (handleOnly && Interlocked.Increment(ref _handleOnly) > _maxHandleOnly)
                {
                    Interlocked.Decrement(ref _handleOnly);
                    return null;
                }
                node = _byKey.TakePooled(stripe) ?? new Node();
                node.Id = (ulong)Interlocked.Increment(ref _lastId);
                node.Key = key;
                node.FileType = fileType;
                node.Fd = fd;
                node.FileHandle = fileHandle;
                node.MountFd = mountFd;
                node.Lookups = 1;
                node.IsRoot = false;
                // The id map's reference and the caller's.
                Volatile.Write(ref node.Refs, 2);
                AddToMaps(node);
            }
        }
        if (existed && fd >= 0)
        {
            Libc.Close(fd);
            _budget.Return();
        }
        return node;
    }

    /// <summary>Forgets <paramref name="count"/> lookups of node <paramref name="id"/>; at zero the
    /// node leaves the table (its fd closes once no request uses it). Unknown ids are ignored.</summary>
    public void Forget(ulong id, ulong count)
    {
        Node? node = Acquire(id);
        if (node is null)
        {
            return;
        }
        bool gone = false;
        if (!node.IsRoot)
        {
            var keys = _byKey.For(node.Key);
            lock (keys)
            {
                // 0: another FORGET of the same id (or a Clear) got there first.
                if (node.Lookups > 0)
                {
                    node.Lookups = count >= (ulong)node.Lookups ? 0 : node.Lookups - (long)count;
                    if (node.Lookups == 0)
                    {
                        gone = true;
                        if (keys.Map.TryGetValue(node.Key, out Node? mapped) && ReferenceEquals(mapped, node))
                        {
                            keys.Map.Remove(node.Key);
                        }
                    }
                }
            }
        }
        if (gone)
        {
            var ids = _byId.For(id);
            bool removed;
            lock (ids)
            {
                removed = ids.Map.TryGetValue(id, out Node? mapped) && ReferenceEquals(mapped, node) && ids.Map.Remove(id);
            }
            if (removed)
            {
                Release(node);
            }
        }
        Release(node);
    }

    /// <summary>Drops every node except the root (DESTROY, device reset, disconnect). Requests on
    /// other queues may run meanwhile (a guest may send DESTROY beside LOOKUPs), so each node leaves
    /// the way a FORGET takes it out — its key entry only if that still names it, then its id entry,
    /// each under its own stripe's lock — and a node inserted meanwhile stays whole: in both maps or
    /// in neither. Emptying the key stripes and then the id stripes instead left a node inserted in
    /// between in a key stripe already emptied, its id entry dropped: destroyed and pooled, yet still
    /// what the key map returned for its inode.</summary>
    public void Clear()
    {
        List<Node>? nodes = null;
        foreach (var stripe in _byId.All)
        {
            lock (stripe)
            {
                foreach (Node node in stripe.Map.Values)
                {
                    if (!node.IsRoot)
                    {
                        // Ours until dropped below: the node cannot be destroyed while we look at it.
                        Interlocked.Increment(ref node.Refs);
                        (nodes ??= new List<Node>()).Add(node);
                    }
                }
            }
        }
        if (_root is { } root)
        {
            lock (_byKey.For(root.Key))
            {
                root.Lookups = 1;
            }
        }
        if (nodes is null)
        {
            return;
        }
        foreach (Node node in nodes)
        {
            var keys = _byKey.For(node.Key);
            lock (keys)
            {
                node.Lookups = 0;
                if (keys.Map.TryGetValue(node.Key, out Node? mapped) && ReferenceEquals(mapped, node))
                {
                    keys.Map.Remove(node.Key);
                }
            }
            var ids = _byId.For(node.Id);
            bool removed;
            lock (ids)
            {
                removed = ids.Map.TryGetValue(node.Id, out Node? mapped) && ReferenceEquals(mapped, node) && ids.Map.Remove(node.Id);
            }
            if (removed)
            {
                // The id map's reference.
                Release(node);
            }
            Release(node);
        }
    }

    /// <summary>Closes the root too (server disposal).</summary>
    public void CloseRoot()
    {
        Node? root = _root;
        _root = null;
        _byKey.ClearMaps();
        _byId.ClearMaps();
        if (root is not null && root.Fd >= 0)
        {
            Libc.Close(root.Fd);
            root.Fd = -1;
        }
    }

    /// <summary>Closes the lock-owner description of <paramref name="owner"/> (releasing its POSIX locks).</summary>
    public void CloseLockOwner(Node node, ulong owner)
    {
        LockOwnerFile? file = null;
        lock (node.OwnersLock)
        {
            node.LockOwners?.Remove(owner, out file);
        }
        file?.Close();
    }

    /// <summary>Key map, then id map, under the key stripe (re-entered when Insert already holds it).</summary>
    private void AddToMaps(Node node)
    {
        var keys = _byKey.For(node.Key);
        lock (keys)
        {
            keys.Map[node.Key] = node;
            var ids = _byId.For(node.Id);
            lock (ids)
            {
                ids.Map[node.Id] = node;
            }
        }
    }

    private void Destroy(Node node)
    {
        lock (node.OwnersLock)
        {
            if (node.LockOwners is not null)
            {
                foreach (LockOwnerFile file in node.LockOwners.Values)
                {
                    file.Close();
                }
                node.LockOwners = null;
            }
        }
        if (node.Fd >= 0)
        {
            Libc.Close(node.Fd);
            _budget.Return();
        }
        else if (node.FileHandle is not null && !node.IsRoot)
        {
            Interlocked.Decrement(ref _handleOnly);
        }
        // Back to the pool of the stripe its key came from; Insert takes from any stripe's pool.
        // A pooled node is reused for another inode, so no map may still lead to it.
        InodeKey key = node.Key;
        var keys = _byKey.For(key);
        lock (keys)
        {
            if (keys.Map.TryGetValue(key, out Node? mapped) && ReferenceEquals(mapped, node))
            {
                keys.Map.Remove(key);
            }
        }
        node.Fd = -1;
        node.FileHandle = null;
        node.MountFd = -1;
        node.Key = default;
        _byKey.Recycle(key, node);
    }
}
