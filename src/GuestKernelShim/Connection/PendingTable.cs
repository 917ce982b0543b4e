namespace Vhostfsd.GuestKernelShim;

/// <summary>The requests a connection has sent and not yet ended, by unique (Linux's processing
/// hash of fuse_pqueue). Sharded so that concurrent senders and completion threads rarely contend:
/// each shard is a dictionary behind its own lock. Whoever removes a request ends it: a reply and
/// an abort racing for one request settle here.</summary>
internal sealed class PendingTable
{
    private const int ShardCount = 16;
    private readonly Shard[] _shards = new Shard[ShardCount];
    private volatile bool _closed;

    public PendingTable()
    {
        for (int i = 0; i < ShardCount; i++)
        {
            _shards[i] = new Shard();
        }
    }

    private sealed class Shard
    {
        public readonly Dictionary<ulong, FuseRequest> Map = new(64);
    }

    // Uniques step by 2 (bit 0 marks interrupts): shift it out so consecutive requests use different shards.
    private Shard ShardOf(ulong unique) => _shards[(int)((unique >> 1) & (ShardCount - 1))];

    public bool IsClosed => _closed;

    /// <summary>Adds a request; false once the table was closed (the connection is gone) or the unique is in use.</summary>
    public bool TryAdd(FuseRequest request)
    {
        var shard = ShardOf(request.Unique);
        lock (shard)
        {
            if (_closed)
            {
                return false;
            }
            return shard.Map.TryAdd(request.Unique, request);
        }
    }

    /// <summary>Removes <paramref name="request"/> if it is still the entry for its unique.</summary>
    public bool TryRemove(FuseRequest request)
    {
        var shard = ShardOf(request.Unique);
        lock (shard)
        {
            if (shard.Map.TryGetValue(request.Unique, out var present) && ReferenceEquals(present, request))
            {
                shard.Map.Remove(request.Unique);
                return true;
            }
            return false;
        }
    }

    /// <summary>Removes and returns the request with <paramref name="unique"/>.</summary>
    public bool TryRemove(ulong unique, out FuseRequest? request)
    {
        var shard = ShardOf(unique);
        lock (shard)
        {
            return shard.Map.Remove(unique, out request);
        }
    }

    public bool Contains(ulong unique)
    {
        var shard = ShardOf(unique);
        lock (shard)
        {
            return shard.Map.ContainsKey(unique);
        }
    }

    public int Count
    {
        get
        {
            int count = 0;
            foreach (var shard in _shards)
            {
                lock (shard)
                {
                    count += shard.Map.Count;
                }
            }
            return count;
        }
    }

    /// <summary>Closes the table (later adds fail) and removes every request into <paramref name="drained"/>.</summary>
    public void CloseAndDrain(List<FuseRequest> drained)
    {
        _closed = true;
        foreach (var shard in _shards)
        {
            lock (shard)
            {
                drained.AddRange(shard.Map.Values);
                shard.Map.Clear();
            }
        }
    }
}
