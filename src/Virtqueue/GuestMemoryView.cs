using Vhostfsd.Posix;

namespace Vhostfsd.Virtqueue;

/// <summary>A held reference to one region set of a <see cref="GuestMemory"/>: translation of guest-physical
/// and VMM-user ranges to pointers in this process. Pointers stay valid until the view is disposed.</summary>
/// <remarks>A value type so that <see cref="GuestMemory.Acquire"/> does not allocate. Dispose exactly
/// once, and not through a copy that another owner also disposes. <c>default</c> is an empty view.</remarks>
public readonly unsafe struct GuestMemoryView : IDisposable
{
    private readonly MemorySnapshot? _snapshot;

    internal GuestMemoryView(MemorySnapshot snapshot)
    {
        _snapshot = snapshot;
    }

    internal MemorySnapshot? Snapshot => _snapshot;

    /// <summary>True for a view obtained from <see cref="GuestMemory.Acquire"/> (even an empty one).</summary>
    public bool IsHeld => _snapshot is not null;

    public int RegionCount => _snapshot?.Count ?? 0;

    /// <summary>Translates [gpa, gpa + length) to one host pointer. False when the range leaves the
    /// region that holds <paramref name="gpa"/> (out of range, overflowing, or crossing into the next
    /// region). A zero length succeeds when <paramref name="gpa"/> lies inside a region.</summary>
    public bool TryTranslate(ulong gpa, ulong length, out nint host)
    {
        if (_snapshot is { } s)
        {
            return TryTranslateIn(s.ByGpa, gpa, length, out host, out _);
        }
        host = 0;
        return false;
    }

    /// <summary>Translates a VMM user-space range (vhost-user ring addresses) to one host pointer.</summary>
    public bool TryTranslateUser(ulong userAddr, ulong length, out nint host)
    {
        if (_snapshot is { } s)
        {
            return TryTranslateIn(s.ByUser, userAddr, length, out host, out _);
        }
        host = 0;
        return false;
    }

    /// <summary>Like <see cref="TryTranslateUser"/>, also naming the region that holds the range.</summary>
    internal bool TryTranslateUser(ulong userAddr, ulong length, out nint host, out GuestMemoryRegion? region)
    {
        if (_snapshot is { } s)
        {
            return TryTranslateIn(s.ByUser, userAddr, length, out host, out region);
        }
        host = 0;
        region = null;
        return false;
    }

    /// <summary>Like <see cref="TryTranslate"/>, also naming the region that holds the range.</summary>
    internal bool TryTranslate(ulong gpa, ulong length, out nint host, out GuestMemoryRegion? region)
    {
        if (_snapshot is { } s)
        {
            return TryTranslateIn(s.ByGpa, gpa, length, out host, out region);
        }
        host = 0;
        region = null;
        return false;
    }

    /// <summary>Converts a guest-physical address to the VMM's user address for the same byte.</summary>
    public bool TryGuestPhysToUser(ulong gpa, out ulong userAddr)
    {
        userAddr = 0;
        if (_snapshot is not { } s)
        {
            return false;
        }
        int i = MemorySnapshot.Find(s.ByGpa, gpa);
        if (i < 0)
        {
            return false;
        }
        var region = s.ByGpa[i].Region;
        userAddr = region.UserAddr + (gpa - region.GuestPhysAddr);
        return true;
    }

    /// <summary>Translates [gpa, gpa + length) into host segments, one per region it passes through;
    /// adjacent regions (one ends where the next starts) are followed. Returns the number of segments
    /// written to <paramref name="output"/> (0 for a zero length at a valid address), or -1 when
    /// the range is out of memory, overflows, meets a gap, or needs more segments than <paramref name="output"/> holds.</summary>
    public int TryTranslateSplit(ulong gpa, ulong length, Span<IoVec> output)
        => TranslateSplit(gpa, length, output, countOnly: false);

    /// <summary>Segments that <see cref="TryTranslateSplit"/> would need for the range, or -1 when it is not in memory.</summary>
    public int CountSegments(ulong gpa, ulong length)
        => TranslateSplit(gpa, length, default, countOnly: true);

    private int TranslateSplit(ulong gpa, ulong length, Span<IoVec> output, bool countOnly)
    {
        if (_snapshot is not { } s)
        {
            return -1;
        }
        var entries = s.ByGpa;
        int i = MemorySnapshot.Find(entries, gpa);
        if (i < 0 || length > ulong.MaxValue - gpa)
        {
            return -1;
        }
        int count = 0;
        while (length > 0)
        {
            ref readonly var entry = ref entries[i];
            ulong offset = gpa - entry.Start;
            ulong chunk = Math.Min(length, entry.Size - offset);
            if (!countOnly)
            {
                if (count == output.Length)
                {
                    return -1;
                }
                // SAFETY: offset < entry.Size and offset + chunk <= entry.Size, so the segment lies inside the region's mapping.
                output[count] = new IoVec((void*)(entry.Host + (nint)offset), (nuint)chunk);
            }
            count++;
            length -= chunk;
            gpa += chunk;
            if (length > 0)
            {
                // Entries are sorted and disjoint: the next region, if adjacent, is the next entry.
                i++;
                if (i == entries.Length || entries[i].Start != gpa)
                {
                    return -1;
                }
            }
        }
        return count;
    }

    /// <summary>Releases the reference. Call once.</summary>
    public void Dispose()
    {
        _snapshot?.Release();
    }

    private static bool TryTranslateIn(ReadOnlySpan<RegionEntry> entries, ulong address, ulong length, out nint host, out GuestMemoryRegion? region)
    {
        int i = MemorySnapshot.Find(entries, address);
        if (i >= 0)
        {
            ref readonly var entry = ref entries[i];
            ulong offset = address - entry.Start;
            // offset < Size, so Size - offset cannot underflow; this also rejects address + length overflow.
            if (length <= entry.Size - offset)
            {
                host = entry.Host + (nint)offset;
                region = entry.Region;
                return true;
            }
        }
        host = 0;
        region = null;
        return false;
    }
}
