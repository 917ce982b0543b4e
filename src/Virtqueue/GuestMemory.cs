namespace Vhostfsd.Virtqueue;

/// <summary>The guest's memory: a set of non-overlapping <see cref="GuestMemoryRegion"/>s, changed at
/// run time by the control thread (SET_MEM_TABLE, ADD_MEM_REG, REM_MEM_REG) while queue workers
/// translate addresses through <see cref="GuestMemoryView"/>s.</summary>
/// <remarks>
/// Scheme: the region set is an immutable, reference-counted snapshot. Writers (serialized by a
/// lock) build a new snapshot, publish it, and drop the memory's reference to the old one.
/// <see cref="Acquire"/> takes a reference to the current snapshot without allocating (one
/// compare-and-swap); disposing the view drops it. A snapshot holds a reference to each of its
/// regions, so a removed region is unmapped only when the last snapshot that lists it is
/// released, i.e. when no worker can still hold a pointer into it. Translation never locks.
/// </remarks>
public sealed class GuestMemory : IDisposable
{
    private readonly Lock _writeLock = new();
    private MemorySnapshot _current = new(Array.Empty<GuestMemoryRegion>());
    private bool _disposed;

    public GuestMemory()
    {
    }

    /// <summary>Builds a memory from <paramref name="regions"/> (see <see cref="ReplaceAll"/>).</summary>
    public GuestMemory(IEnumerable<GuestMemoryRegion> regions)
    {
        ReplaceAll(regions);
    }

    /// <summary>Regions in the current snapshot.</summary>
    public int RegionCount => Volatile.Read(ref _current).Count;

    /// <summary>The current regions, sorted by guest-physical address (allocates; for control paths and logs).</summary>
    public GuestMemoryRegion[] GetRegions()
    {
        using var view = Acquire();
        return view.Snapshot is { } s ? s.CopyRegions() : Array.Empty<GuestMemoryRegion>();
    }

    /// <summary>Adds a region and takes ownership of it. Throws <see cref="ArgumentException"/> when it
    /// overlaps a present region in guest-physical or user addresses (the caller keeps ownership then).</summary>
    public void AddRegion(GuestMemoryRegion region)
    {
        if (!TryAddRegion(region, out string? why))
        {
            throw new ArgumentException(why, nameof(region));
        }
    }

    /// <summary>Adds a region and takes ownership of it; false (ownership stays with the caller) when it overlaps a present region.</summary>
    public bool TryAddRegion(GuestMemoryRegion region, out string? error)
    {
        ArgumentNullException.ThrowIfNull(region);
        ObjectDisposedException.ThrowIf(region.IsOwnerReleased, region);
        lock (_writeLock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            var old = _current;
            var list = new List<GuestMemoryRegion>(old.Count + 1);
            old.AddRegionsTo(list);
            foreach (var present in list)
            {
                if (present.Overlaps(region))
                {
                    error = $"region {region} overlaps {present}";
                    return false;
                }
            }
            list.Add(region);
            Publish(new MemorySnapshot(list));
            region.ReleaseOwner();
        }
        error = null;
        return true;
    }

    /// <summary>Removes the region that starts at <paramref name="guestPhysAddr"/> and has exactly
    /// <paramref name="size"/> bytes; false if there is none. Its mapping goes when no view holds it.</summary>
    public bool RemoveRegion(ulong guestPhysAddr, ulong size)
    {
        lock (_writeLock)
        {
            if (_disposed)
            {
                return false;
            }
            var old = _current;
            var list = new List<GuestMemoryRegion>(old.Count);
            old.AddRegionsTo(list);
            int index = list.FindIndex(r => r.GuestPhysAddr == guestPhysAddr && r.Size == size);
            if (index < 0)
            {
                return false;
            }
            list.RemoveAt(index);
            Publish(new MemorySnapshot(list));
            return true;
        }
    }

    /// <summary>Replaces every region (SET_MEM_TABLE) and takes ownership of the new ones. Throws
    /// <see cref="ArgumentException"/> when two of them overlap; nothing changes then and the caller keeps ownership.</summary>
    public void ReplaceAll(IEnumerable<GuestMemoryRegion> regions)
    {
        ArgumentNullException.ThrowIfNull(regions);
        var list = new List<GuestMemoryRegion>(regions);
        for (int i = 0; i < list.Count; i++)
        {
            ArgumentNullException.ThrowIfNull(list[i], nameof(regions));
            ObjectDisposedException.ThrowIf(list[i].IsOwnerReleased, list[i]);
            for (int j = 0; j < i; j++)
            {
                if (list[i].Overlaps(list[j]))
                {
                    throw new ArgumentException($"region {list[i]} overlaps {list[j]}", nameof(regions));
                }
            }
        }
        lock (_writeLock)
        {
            ObjectDisposedException.ThrowIf(_disposed, this);
            Publish(new MemorySnapshot(list));
            foreach (var region in list)
            {
                region.ReleaseOwner();
            }
        }
    }

    /// <summary>Takes a reference to the current region set. The caller holds the returned view while
    /// it uses pointers obtained from it and disposes it exactly once. Lock-free and allocation-free.
    /// After <see cref="Dispose"/> the view is empty (every translation fails).</summary>
    public GuestMemoryView Acquire()
    {
        while (true)
        {
            var snapshot = Volatile.Read(ref _current);
            if (snapshot.TryAddRef())
            {
                return new GuestMemoryView(snapshot);
            }
            // A writer retired this snapshot between our read and our increment: the next read sees its successor.
            // (Writers publish the successor before releasing, so a retired snapshot that is still current
            // means a view was disposed twice; fail instead of spinning.)
            if (ReferenceEquals(Volatile.Read(ref _current), snapshot))
            {
                throw new InvalidOperationException("guest memory snapshot released while current: a GuestMemoryView was disposed twice");
            }
        }
    }

    /// <summary>Drops the memory's reference to its regions; each is unmapped once no view holds it.</summary>
    public void Dispose()
    {
        lock (_writeLock)
        {
            if (_disposed)
            {
                return;
            }
            _disposed = true;
            Publish(MemorySnapshot.Empty);
        }
    }

    private void Publish(MemorySnapshot next)
    {
        var old = Interlocked.Exchange(ref _current, next);
        old.Release();
    }
}

/// <summary>An immutable region set with a reference count; see <see cref="GuestMemory"/>.</summary>
internal sealed class MemorySnapshot
{
    /// <summary>The set of a disposed memory: never retired, never unmaps anything.</summary>
    internal static readonly MemorySnapshot Empty = new(Array.Empty<GuestMemoryRegion>(), permanent: true);

    private readonly RegionEntry[] _byGpa;
    private readonly RegionEntry[] _byUser;
    private readonly bool _permanent;
    private int _refs = 1;

    /// <summary>A new snapshot with one reference (the publisher's); it references each region.</summary>
    internal MemorySnapshot(IReadOnlyList<GuestMemoryRegion> regions, bool permanent = false)
    {
        _permanent = permanent;
        _byGpa = new RegionEntry[regions.Count];
        _byUser = new RegionEntry[regions.Count];
        for (int i = 0; i < regions.Count; i++)
        {
            var r = regions[i];
            if (!permanent)
            {
                r.AddRef();
            }
            _byGpa[i] = new RegionEntry(r.GuestPhysAddr, r.Size, r.HostAddress, r);
            _byUser[i] = new RegionEntry(r.UserAddr, r.Size, r.HostAddress, r);
        }
        Array.Sort(_byGpa, static (a, b) => a.Start.CompareTo(b.Start));
        Array.Sort(_byUser, static (a, b) => a.Start.CompareTo(b.Start));
    }

    internal int Count => _byGpa.Length;

    internal bool TryAddRef()
    {
        if (_permanent)
        {
            return true;
        }
        int refs = Volatile.Read(ref _refs);
        while (refs > 0)
        {
            int seen = Interlocked.CompareExchange(ref _refs, refs + 1, refs);
            if (seen == refs)
            {
                return true;
            }
            refs = seen;
        }
        return false;
    }

    internal void Release()
    {
        if (_permanent)
        {
            return;
        }
        int refs = Interlocked.Decrement(ref _refs);
        if (refs == 0)
        {
            foreach (var entry in _byGpa)
            {
                entry.Region.Release();
            }
        }
        else if (refs < 0)
        {
            throw new InvalidOperationException("GuestMemoryView disposed more than once");
        }
    }

    internal void AddRegionsTo(List<GuestMemoryRegion> list)
    {
        foreach (var entry in _byGpa)
        {
            list.Add(entry.Region);
        }
    }

    internal GuestMemoryRegion[] CopyRegions()
    {
        var result = new GuestMemoryRegion[_byGpa.Length];
        for (int i = 0; i < result.Length; i++)
        {
            result[i] = _byGpa[i].Region;
        }
        return result;
    }

    internal ReadOnlySpan<RegionEntry> ByGpa => _byGpa;
    internal ReadOnlySpan<RegionEntry> ByUser => _byUser;

    /// <summary>Index of the entry whose range holds <paramref name="address"/>, or -1.</summary>
    internal static int Find(ReadOnlySpan<RegionEntry> entries, ulong address)
    {
        // Binary search for the last entry that starts at or below the address.
        int lo = 0;
        int hi = entries.Length - 1;
        int found = -1;
        while (lo <= hi)
        {
            int mid = (int)((uint)(lo + hi) >> 1);
            if (entries[mid].Start <= address)
            {
                found = mid;
                lo = mid + 1;
            }
            else
            {
                hi = mid - 1;
            }
        }
        if (found >= 0 && address - entries[found].Start < entries[found].Size)
        {
            return found;
        }
        return -1;
    }
}

internal readonly struct RegionEntry
{
    internal readonly ulong Start;
    internal readonly ulong Size;
    internal readonly nint Host;
    internal readonly GuestMemoryRegion Region;

    internal RegionEntry(ulong start, ulong size, nint host, GuestMemoryRegion region)
    {
        Start = start;
        Size = size;
        Host = host;
        Region = region;
    }
}
