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
    /// <summary>Guest lookups not yet forgotten (guarded by the table lock).</summary>
    public long Lookups;
    /// <summary>1 while in the table plus one per request or handle using it.</summary>
    public int Refs;
    /// <summary>The node is the share root (never forgotten).</summary>
    public bool IsRoot;
    /// <summary>One open file description per guest lock owner holding POSIX (OFD) locks on this
    /// inode, created on the owner's first lock (guarded by <see cref="OwnersLock"/>). Per inode,
    /// not per handle: the guest's close() of any of the owner's files drops all its locks here.</summary>
    public Dictionary<ulong, int>? LockOwnerFds;
    public readonly object OwnersLock = new();

    public bool IsDirectory => FileType == Libc.S_IFDIR;
    public bool IsSymlink => FileType == Libc.S_IFLNK;
    public bool IsRegular => FileType == Libc.S_IFREG;
}

/// <summary>The node ids handed to the guest. Node ids come from a counter and are never reused
/// within a server's life (generation is always 0). Node objects are pooled, so a lookup of a
/// new inode does not allocate in the steady state.</summary>
internal sealed class NodeTable
{
    private readonly object _lock = new();
    private readonly Dictionary<ulong, Node> _byId = new(1024);
    private readonly Dictionary<InodeKey, Node> _byKey = new(1024);
    private readonly Stack<Node> _pool = new(256);
    private readonly FdBudget _budget;
    private ulong _nextId = Protocol.FuseConstants.RootId + 1;
    private Node? _root;

    public NodeTable(FdBudget budget)
    {
        _budget = budget;
    }

    public Node Root => _root ?? throw new InvalidOperationException("no root node");

    /// <summary>Number of nodes in the table (root included).</summary>
    public int Count
    {
        get
        {
            lock (_lock)
            {
                return _byId.Count;
            }
        }
    }

    /// <summary>Installs the root node (id 1) holding <paramref name="fd"/>; the table owns the fd.</summary>
    public void SetRoot(int fd, in InodeKey key)
    {
        lock (_lock)
        {
            var root = new Node { Id = Protocol.FuseConstants.RootId, Key = key, FileType = Libc.S_IFDIR, Fd = fd, Lookups = 1, Refs = 1, IsRoot = true };
            _root = root;
            _byId[root.Id] = root;
            _byKey[key] = root;
        }
    }

    /// <summary>Takes a reference on node <paramref name="id"/>; null for an id the guest was never
    /// given or has forgotten. Release it with <see cref="Release"/>.</summary>
    public Node? Acquire(ulong id)
    {
        lock (_lock)
        {
            if (!_byId.TryGetValue(id, out Node? node))
            {
                return null;
            }
            node.Refs++;
            return node;
        }
    }

    /// <summary>Adds a reference to a node the caller already holds.</summary>
    public void AddRef(Node node)
    {
        lock (_lock)
        {
            node.Refs++;
        }
    }

    /// <summary>Drops a reference; the last one closes the fd and recycles the node.</summary>
    public void Release(Node node)
    {
        bool last;
        lock (_lock)
        {
            last = --node.Refs == 0;
        }
        if (last)
        {
            Destroy(node);
        }
    }

    /// <summary>If <paramref name="key"/> is known: counts one more guest lookup, takes a reference
    /// for the caller and returns true.</summary>
    public bool TryLookupExisting(in InodeKey key, out Node node)
    {
        lock (_lock)
        {
            if (_byKey.TryGetValue(key, out node!))
            {
                node.Lookups++;
                node.Refs++;
                return true;
            }
        }
        return false;
    }

    /// <summary>Finds or adds the node for <paramref name="key"/>, counting one guest lookup and taking
    /// a reference for the caller. When the node already existed, <paramref name="fd"/> (which the
    /// caller took from the budget) is closed and returned to the budget here.</summary>
    public Node Insert(in InodeKey key, uint fileType, int fd, byte[]? fileHandle, int mountFd)
    {
        Node? existing;
        Node node;
        lock (_lock)
        {
            if (_byKey.TryGetValue(key, out existing))
            {
                existing.Lookups++;
                existing.Refs++;
                node = existing;
            }
            else
            {
                node = _pool.Count > 0 ? _pool.Pop() : new Node();
                node.Id = _nextId++;
                node.Key = key;
                node.FileType = fileType;
                node.Fd = fd;
                node.FileHandle = fileHandle;
                node.MountFd = mountFd;
                node.Lookups = 1;
                node.Refs = 2;
                node.IsRoot = false;
                _byId[node.Id] = node;
                _byKey[key] = node;
            }
        }
        if (existing is not null && fd >= 0)
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
        Node? drop = null;
        lock (_lock)
        {
            if (!_byId.TryGetValue(id, out Node? node) || node.IsRoot)
            {
                return;
            }
            node.Lookups = count >= (ulong)node.Lookups ? 0 : node.Lookups - (long)count;
            if (node.Lookups == 0)
            {
                _byId.Remove(id);
                _byKey.Remove(node.Key);
                if (--node.Refs == 0)
                {
                    drop = node;
                }
            }
        }
        if (drop is not null)
        {
            Destroy(drop);
        }
    }

    /// <summary>Drops every node except the root (DESTROY, device reset, disconnect).</summary>
    public void Clear()
    {
        List<Node>? drops = null;
        lock (_lock)
        {
            foreach (Node node in _byId.Values)
            {
                if (node.IsRoot)
                {
                    continue;
                }
                node.Lookups = 0;
                if (--node.Refs == 0)
                {
                    (drops ??= new List<Node>()).Add(node);
                }
            }
            _byId.Clear();
            _byKey.Clear();
            if (_root is not null)
            {
                _root.Lookups = 1;
                _byId[_root.Id] = _root;
                _byKey[_root.Key] = _root;
            }
        }
        if (drops is not null)
        {
            foreach (Node node in drops)
            {
                Destroy(node);
            }
        }
    }

    /// <summary>Closes the root too (server disposal).</summary>
    public void CloseRoot()
    {
        Node? root;
        lock (_lock)
        {
            root = _root;
            _root = null;
            _byId.Clear();
            _byKey.Clear();
        }
        if (root is not null && root.Fd >= 0)
        {
            Libc.Close(root.Fd);
            root.Fd = -1;
        }
    }

    /// <summary>Closes the lock-owner description of <paramref name="owner"/> (releasing its POSIX locks).</summary>
    public void CloseLockOwner(Node node, ulong owner)
    {
        int fd = -1;
        lock (node.OwnersLock)
        {
            if (node.LockOwnerFds is not null && node.LockOwnerFds.Remove(owner, out int found))
            {
                fd = found;
            }
        }
        if (fd >= 0)
        {
            Libc.Close(fd);
            _budget.Return();
        }
    }

    private void Destroy(Node node)
    {
        lock (node.OwnersLock)
        {
            if (node.LockOwnerFds is not null)
            {
                foreach (int fd in node.LockOwnerFds.Values)
                {
                    Libc.Close(fd);
                    _budget.Return();
                }
                node.LockOwnerFds = null;
            }
        }
        if (node.Fd >= 0)
        {
            Libc.Close(node.Fd);
            _budget.Return();
        }
        node.Fd = -1;
        node.FileHandle = null;
        node.MountFd = -1;
        node.Key = default;
        lock (_lock)
        {
            if (_pool.Count < 4096)
            {
                _pool.Push(node);
            }
        }
    }
}
