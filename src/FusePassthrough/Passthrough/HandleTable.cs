using Vhostfsd.Posix;

namespace Vhostfsd.FusePassthrough.Passthrough;

/// <summary>An open file or directory the guest refers to by fh.</summary>
internal sealed class Handle
{
    public ulong Id;
    /// <summary>The node this handle was opened on (the handle holds a reference to it).</summary>
    public Node Node = null!;
    public int Fd = -1;
    /// <summary>Host open flags (after the rewrites of OPEN).</summary>
    public int OpenFlags;
    /// <summary>The guest's open flags as given to OPEN/CREATE (for O_APPEND on WRITE).</summary>
    public int GuestFlags;
    public bool IsDirectory;
    public int Refs;
    /// <summary>Serializes lseek + getdents64 of one directory handle.</summary>
    public readonly object DirectoryLock = new();
}

/// <summary>The fh numbers handed to the guest. An fh is only valid together with the node it was
/// opened on; ids come from a counter and are not reused. Handle objects are pooled.</summary>
internal sealed class HandleTable
{
    private readonly object _lock = new();
    private readonly Dictionary<ulong, Handle> _byId = new(1024);
    private readonly Stack<Handle> _pool = new(256);
    private readonly FdBudget _budget;
    private readonly NodeTable _nodes;
    private ulong _nextId = 1;

    public HandleTable(FdBudget budget, NodeTable nodes)
    {
        _budget = budget;
        _nodes = nodes;
    }

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

    /// <summary>Registers an open fd (already taken from the budget) for <paramref name="node"/>;
    /// the handle takes its own reference on the node.</summary>
    public Handle Add(Node node, int fd, int openFlags, int guestFlags, bool isDirectory)
    {
        _nodes.AddRef(node);
        lock (_lock)
        {
            Handle h = _pool.Count > 0 ? _pool.Pop() : new Handle();
            h.Id = _nextId++;
            h.Node = node;
            h.Fd = fd;
            h.OpenFlags = openFlags;
            h.GuestFlags = guestFlags;
            h.IsDirectory = isDirectory;
            h.Refs = 1;
            _byId[h.Id] = h;
            return h;
        }
    }

    /// <summary>Takes a reference on handle <paramref name="fh"/> if it exists and belongs to node
    /// <paramref name="nodeId"/>; null otherwise.</summary>
    public Handle? Acquire(ulong fh, ulong nodeId)
    {
        lock (_lock)
        {
            if (!_byId.TryGetValue(fh, out Handle? h) || h.Node.Id != nodeId)
            {
                return null;
            }
            h.Refs++;
            return h;
        }
    }

    public void Release(Handle h)
    {
        bool last;
        lock (_lock)
        {
            last = --h.Refs == 0;
        }
        if (last)
        {
            Destroy(h);
        }
    }

    /// <summary>Removes handle <paramref name="fh"/> of node <paramref name="nodeId"/> (RELEASE);
    /// false when there is no such handle.</summary>
    public bool Remove(ulong fh, ulong nodeId, bool directory)
    {
        Handle? drop = null;
        lock (_lock)
        {
            if (!_byId.TryGetValue(fh, out Handle? h) || h.Node.Id != nodeId || h.IsDirectory != directory)
            {
                return false;
            }
            _byId.Remove(fh);
            if (--h.Refs == 0)
            {
                drop = h;
            }
        }
        if (drop is not null)
        {
            Destroy(drop);
        }
        return true;
    }

    /// <summary>Closes every handle (DESTROY, device reset, disconnect).</summary>
    public void Clear()
    {
        List<Handle>? drops = null;
        lock (_lock)
        {
            foreach (Handle h in _byId.Values)
            {
                if (--h.Refs == 0)
                {
                    (drops ??= new List<Handle>()).Add(h);
                }
            }
            _byId.Clear();
        }
        if (drops is not null)
        {
            foreach (Handle h in drops)
            {
                Destroy(h);
            }
        }
    }

    private void Destroy(Handle h)
    {
        if (h.Fd >= 0)
        {
            Libc.Close(h.Fd);
            _budget.Return();
            h.Fd = -1;
        }
        Node node = h.Node;
        h.Node = null!;
        _nodes.Release(node);
        lock (_lock)
        {
            if (_pool.Count < 4096)
            {
                _pool.Push(h);
            }
        }
    }
}
