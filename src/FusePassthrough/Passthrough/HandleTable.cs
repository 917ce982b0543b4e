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
    /// <summary>1 while in the table plus one per request using it (changed with Interlocked).</summary>
    public int Refs;
    /// <summary>Serializes lseek + getdents64 of one directory handle.</summary>
    public readonly object DirectoryLock = new();
}

/// <summary>The fh numbers handed to the guest. An fh is only valid together with the node it was
/// opened on; ids come from a counter and are not reused. Handle objects are pooled. Striped like
/// <see cref="NodeTable"/>: READ and WRITE on different queues do not share a lock.</summary>
internal sealed class HandleTable
{
    private readonly Stripes<ulong, Handle> _byId = new();
    private readonly FdBudget _budget;
    private readonly NodeTable _nodes;
    private long _lastId;

    public HandleTable(FdBudget budget, NodeTable nodes)
    {
        _budget = budget;
        _nodes = nodes;
    }

    public int Count => _byId.CountEntries();

    /// <summary>Registers an open fd (already taken from the budget) for <paramref name="node"/>;
    /// the handle takes its own reference on the node.</summary>
    public Handle Add(Node node, int fd, int openFlags, int guestFlags, bool isDirectory)
    {
        _nodes.AddRef(node);
        ulong id = (ulong)Interlocked.Increment(ref _lastId);
        var stripe = _byId.For(id);
        lock (stripe)
        {
            Handle h = _byId.TakePooled(stripe) ?? new Handle();
            h.Id = id;
            h.Node = node;
            h.Fd = fd;
            h.OpenFlags = openFlags;
            h.GuestFlags = guestFlags;
            h.IsDirectory = isDirectory;
            Volatile.Write(ref h.Refs, 1);
            stripe.Map[id] = h;
            return h;
        }
    }

    /// <summary>Takes a reference on handle <paramref name="fh"/> if it exists and belongs to node
    /// <paramref name="nodeId"/>; null otherwise.</summary>
    public Handle? Acquire(ulong fh, ulong nodeId)
    {
        var stripe = _byId.For(fh);
        lock (stripe)
        {
            if (!stripe.Map.TryGetValue(fh, out Handle? h) || h.Node.Id != nodeId)
            {
                return null;
            }
            Interlocked.Increment(ref h.Refs);
            return h;
        }
    }

    public void Release(Handle h)
    {
        if (Interlocked.Decrement(ref h.Refs) == 0)
        {
            Destroy(h);
        }
    }

    /// <summary>Removes handle <paramref name="fh"/> of node <paramref name="nodeId"/> (RELEASE);
    /// false when there is no such handle.</summary>
    public bool Remove(ulong fh, ulong nodeId, bool directory)
    {
        Handle? h;
        var stripe = _byId.For(fh);
        lock (stripe)
        {
            if (!stripe.Map.TryGetValue(fh, out h) || h.Node.Id != nodeId || h.IsDirectory != directory)
            {
                return false;
            }
            stripe.Map.Remove(fh);
        }
        Release(h);
        return true;
    }

    /// <summary>Closes every handle (DESTROY, device reset, disconnect).</summary>
    public void Clear()
    {
        List<Handle>? removed = null;
        foreach (var stripe in _byId.All)
        {
            lock (stripe)
            {
                foreach (Handle h in stripe.Map.Values)
                {
                    (removed ??= new List<Handle>()).Add(h);
                }
                stripe.Map.Clear();
            }
        }
        if (removed is not null)
        {
            foreach (Handle h in removed)
            {
                Release(h);
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
        _byId.Recycle(h.Id, h);
    }
}
