namespace Vhostfsd.FusePassthrough.Passthrough;

/// <summary>One stripe of a <see cref="Stripes{TKey, TValue}"/>: a dictionary, the pool of
/// recycled values that belong to it, and itself as the lock that guards both.</summary>
internal sealed class Stripe<TKey, TValue>
    where TKey : notnull
    where TValue : class
{
    public const int PoolLimit = 64;

    /// <summary>Room for a few keys from the start (7 buckets, about 250 bytes): a table keyed by host
    /// inode number gets its keys in any stripe, and a stripe's first key must not allocate on the
    /// request path once the daemon is warm. It grows past that as keys are added.</summary>
    public readonly Dictionary<TKey, TValue> Map = new(4);

    /// <summary>Values whose life ended, kept for reuse so that adding does not allocate in the
    /// steady state (at most <see cref="PoolLimit"/>). Allocated full (about 100 KB over an idle
    /// daemon's 192 stripes): grown on demand, a stack grows whenever some stripe reaches a new
    /// high, and which stripe a host inode number lands in is anyone's guess, so the request path
    /// would allocate long after warm-up (AllocationTests.HotPathsAllocateNothing on a busy file
    /// system).</summary>
    public readonly Stack<TValue> Pool = new(PoolLimit);
}

/// <summary>A map split into a fixed number of stripes, each with its own lock. The request
/// workers of different queues look up nodes and handles on every request; with one lock for the
/// whole table they would all take the same lock (and bounce its cache line between CPUs), with
/// stripes two workers meet only when their keys fall in the same stripe.</summary>
internal sealed class Stripes<TKey, TValue>
    where TKey : notnull
    where TValue : class
{
    /// <summary>A power of two, well above the number of request queues a guest asks for.</summary>
    public const int Count = 64;

    private readonly Stripe<TKey, TValue>[] _stripes = new Stripe<TKey, TValue>[Count];

    public Stripes()
    {
        for (int i = 0; i < Count; i++)
        {
            _stripes[i] = new Stripe<TKey, TValue>();
        }
    }

    /// <summary>The stripe that holds <paramref name="key"/>; lock it around every use.</summary>
    public Stripe<TKey, TValue> For(in TKey key)
    {
        // Node and handle ids are consecutive, so their low bits spread evenly; inode keys hash
        // all three fields. The high half is folded in for hashes that vary only there.
        // EqualityComparer<TKey>.Default called directly is devirtualized by the JIT.
        uint hash = (uint)EqualityComparer<TKey>.Default.GetHashCode(key);
        hash ^= hash >> 16;
        return _stripes[hash & (Count - 1)];
    }

    /// <summary>A recycled value from the pool of its stripe, or else of any other stripe, or null
    /// when every pool is empty. The caller holds the lock of <paramref name="held"/>; other
    /// stripes are only tried (Monitor.TryEnter), never waited for, so two callers that each hold
    /// a stripe cannot deadlock. Values are returned to the stripe of their key, which is rarely
    /// the stripe the next new key falls in (a re-created file gets another inode number), so
    /// without this a pool could be empty while the others are full.</summary>
    public TValue? TakePooled(Stripe<TKey, TValue> held)
    {
        if (held.Pool.Count > 0)
        {
            return held.Pool.Pop();
        }
        foreach (var stripe in _stripes)
        {
            // Count read without the lock: only a hint, checked again under it.
            if (ReferenceEquals(stripe, held) || stripe.Pool.Count == 0 || !Monitor.TryEnter(stripe))
            {
                continue;
            }
            try
            {
                if (stripe.Pool.Count > 0)
                {
                    return stripe.Pool.Pop();
                }
            }
            finally
            {
                Monitor.Exit(stripe);
            }
        }
        return null;
    }

    /// <summary>Keeps <paramref name="value"/>, whose life ended, in the pool of the stripe of
    /// <paramref name="key"/> for reuse, unless that pool is full. The caller holds no stripe lock.</summary>
    public void Recycle(in TKey key, TValue value)
    {
        var stripe = For(key);
        lock (stripe)
        {
            if (stripe.Pool.Count < Stripe<TKey, TValue>.PoolLimit)
            {
                stripe.Pool.Push(value);
            }
        }
    }

    /// <summary>Entries in every stripe's map (each stripe locked in turn: a snapshot, not an atomic count).</summary>
    public int CountEntries()
    {
        int count = 0;
        foreach (var stripe in _stripes)
        {
            lock (stripe)
            {
                count += stripe.Map.Count;
            }
        }
        return count;
    }

    /// <summary>Empties every stripe's map (pools are kept).</summary>
    public void ClearMaps()
    {
        foreach (var stripe in _stripes)
        {
            lock (stripe)
            {
                stripe.Map.Clear();
            }
        }
    }

    /// <summary>Every stripe, in a fixed order (lock them one at a time).</summary>
    public ReadOnlySpan<Stripe<TKey, TValue>> All => _stripes;
}
