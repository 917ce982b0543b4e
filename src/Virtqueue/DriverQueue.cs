using System.Runtime.CompilerServices;

namespace Vhostfsd.Virtqueue;

/// <summary>The driver side of a split virtqueue, for the guest shim: a descriptor free list, adding
/// chains of guest-physical buffers, publishing them (and deciding whether to kick), and reaping used
/// elements. The rings live in guest memory the caller laid out (see <see cref="SplitRing.Layout"/>).</summary>
/// <remarks>
/// Not thread-safe: adds, publishes, reaps and callback changes must be serialized by the caller
/// (e.g. one lock per queue). The device is not trusted: a used element naming a head that is not
/// in flight, or a used.idx that runs ahead of what was made available, throws <see cref="InvalidDataException"/>.
/// </remarks>
public sealed unsafe class DriverQueue : IDisposable
{
    private readonly ushort _mask;
    private readonly GuestMemoryRegion[] _pinned = new GuestMemoryRegion[3];
    private readonly byte* _desc;
    private readonly byte* _avail;
    private readonly byte* _used;
    private readonly bool _eventIdx;
    // Free list: _nextFree[i] links free descriptors, and also links the descriptors of an in-flight
    // direct chain in order (a chain is taken from the list as a run, so freeing returns the run).
    private readonly ushort[] _nextFree;
    private readonly ushort[] _chainDescriptors; // descriptors used by the chain whose head is i; 0 = not in flight
    private ushort _freeHead;
    private int _numFree;
    private ushort _availShadow;
    private ushort _availPublished;
    private ushort _lastUsed;
    private bool _callbacksEnabled = true;
    private int _inFlight;

    // Indirect tables: one per head, IndirectEntries descriptors each, at _indirectGpa + head * bytes.
    private GuestMemoryRegion? _indirectRegion;
    private ulong _indirectGpa;
    private byte* _indirectHost;
    private int _indirectEntries;

    /// <summary>Sets up the queue over rings at the given guest-physical addresses and zeroes them.
    /// Each ring must lie inside one region of <paramref name="memory"/>; those regions stay mapped until Dispose.</summary>
    public DriverQueue(GuestMemory memory, ushort size, ulong descGpa, ulong availGpa, ulong usedGpa, bool eventIdx, bool indirect)
    {
        ArgumentNullException.ThrowIfNull(memory);
        if (!SplitRing.IsValidSize(size))
        {
            throw new ArgumentOutOfRangeException(nameof(size), size, "a split queue size is a power of 2 in 1..32768");
        }
        Size = size;
        _mask = (ushort)(size - 1);
        _eventIdx = eventIdx;
        Indirect = indirect;
        _desc = (byte*)Pin(memory, 0, descGpa, SplitRing.DescTableBytes(size), "descriptor table");
        _avail = (byte*)Pin(memory, 1, availGpa, SplitRing.AvailRingBytes(size), "avail ring");
        _used = (byte*)Pin(memory, 2, usedGpa, SplitRing.UsedRingBytes(size), "used ring");
        // SAFETY: the three ranges were translated with their full lengths above.
        new Span<byte>(_desc, checked((int)SplitRing.DescTableBytes(size))).Clear();
        new Span<byte>(_avail, checked((int)SplitRing.AvailRingBytes(size))).Clear();
        new Span<byte>(_used, checked((int)SplitRing.UsedRingBytes(size))).Clear();
        _nextFree = new ushort[size];
        _chainDescriptors = new ushort[size];
        for (int i = 0; i < size; i++)
        {
            _nextFree[i] = (ushort)((i + 1) & _mask);
        }
        _numFree = size;
        DescGpa = descGpa;
        AvailGpa = availGpa;
        UsedGpa = usedGpa;
    }

    private nint Pin(GuestMemory memory, int slot, ulong gpa, ulong length, string what)
    {
        using var view = memory.Acquire();
        if (!view.TryTranslate(gpa, length, out nint host, out var region))
        {
            Dispose();
            throw new ArgumentException($"{what} at 0x{gpa:x} (+{length}) is not inside one guest memory region");
        }
        region!.AddRef();
        _pinned[slot] = region;
        return host;
    }

    public ushort Size { get; }
    public ulong DescGpa { get; }
    public ulong AvailGpa { get; }
    public ulong UsedGpa { get; }

    /// <summary>VIRTIO_F_INDIRECT_DESC was negotiated (indirect chains are used once <see cref="SetIndirectArea"/> gave tables).</summary>
    public bool Indirect { get; }

    public int FreeDescriptors => _numFree;

    /// <summary>Chains added and not yet reaped.</summary>
    public int InFlight => _inFlight;

    /// <summary>Bytes of guest memory <see cref="SetIndirectArea"/> needs for a queue of <paramref name="size"/>.</summary>
    public static ulong IndirectAreaBytes(ushort size, int entriesPerChain) => (ulong)size * (ulong)entriesPerChain * VirtqDesc.Size;

    /// <summary>Gives the queue guest memory for indirect tables (one table of <paramref name="entriesPerChain"/>
    /// descriptors per head, <see cref="IndirectAreaBytes"/> in all, inside one region). From then on a chain of
    /// 2..entriesPerChain buffers takes one ring descriptor. Requires <see cref="Indirect"/>.</summary>
    public void SetIndirectArea(GuestMemory memory, ulong gpa, int entriesPerChain)
    {
        if (!Indirect)
        {
            throw new InvalidOperationException("VIRTIO_F_INDIRECT_DESC was not negotiated for this queue");
        }
        ArgumentOutOfRangeException.ThrowIfLessThan(entriesPerChain, 2);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(entriesPerChain, 65536);
        if (_inFlight != 0)
        {
            throw new InvalidOperationException("indirect tables can only change while no chain is in flight");
        }
        ulong bytes = IndirectAreaBytes(Size, entriesPerChain);
        using var view = memory.Acquire();
        if (!view.TryTranslate(gpa, bytes, out nint host, out var region))
        {
            throw new ArgumentException($"indirect area at 0x{gpa:x} (+{bytes}) is not inside one guest memory region");
        }
        region!.AddRef();
        _indirectRegion?.Release();
        _indirectRegion = region;
        _indirectGpa = gpa;
        _indirectHost = (byte*)host;
        _indirectEntries = entriesPerChain;
    }

    // SAFETY (ring accessors): offsets stay inside the ring sizes for Size entries; indices are masked.
    private ushort* AvailFlags => (ushort*)_avail;
    private ushort* AvailIdx => (ushort*)(_avail + 2);
    private ushort* AvailRing(int i) => (ushort*)(_avail + 4 + 2 * i);
    private ushort* UsedEvent => (ushort*)(_avail + 4 + 2 * Size);
    private ushort* UsedFlags => (ushort*)_used;
    private ushort* UsedIdx => (ushort*)(_used + 2);
    private VirtqUsedElem* UsedRing(int i) => (VirtqUsedElem*)(_used + 4 + VirtqUsedElem.Size * i);
    private ushort* AvailEvent => (ushort*)(_used + 4 + VirtqUsedElem.Size * Size);

    /// <summary>Adds a chain: the device-readable buffers, then the device-writable ones (guest-physical
    /// address and length each). Returns the head index, or -1 when there are not enough free descriptors.
    /// The chain becomes visible to the device at the next <see cref="PublishAndCheckKick"/>.</summary>
    public int TryAdd(ReadOnlySpan<(ulong Gpa, uint Len)> readable, ReadOnlySpan<(ulong Gpa, uint Len)> writable)
    {
        int total = readable.Length + writable.Length;
        if (total == 0)
        {
            throw new ArgumentException("a chain needs at least one buffer");
        }
        if (_indirectHost != null && total > 1 && total <= _indirectEntries)
        {
            return AddIndirect(readable, writable);
        }
        if (total > _numFree)
        {
            return -1;
        }
        ushort head = _freeHead;
        ushort index = head;
        for (int i = 0; i < total; i++)
        {
            bool isWritable = i >= readable.Length;
            var (gpa, len) = isWritable ? writable[i - readable.Length] : readable[i];
            bool last = i == total - 1;
            ushort next = _nextFree[index];
            ushort flags = (ushort)((isWritable ? VirtqDesc.FlagWrite : 0) | (last ? 0 : VirtqDesc.FlagNext));
            // SAFETY: index < Size (free list entries are descriptor indices).
            Unsafe.WriteUnaligned(_desc + index * VirtqDesc.Size, new VirtqDesc(gpa, len, flags, last ? (ushort)0 : next));
            if (!last)
            {
                index = next;
            }
        }
        _freeHead = _nextFree[index];
        _numFree -= total;
        _chainDescriptors[head] = (ushort)total;
        MakeAvailable(head);
        return head;
    }

    private int AddIndirect(ReadOnlySpan<(ulong Gpa, uint Len)> readable, ReadOnlySpan<(ulong Gpa, uint Len)> writable)
    {
        if (_numFree == 0)
        {
            return -1;
        }
        ushort head = _freeHead;
        int total = readable.Length + writable.Length;
        ulong tableOffset = (ulong)head * (ulong)_indirectEntries * VirtqDesc.Size;
        byte* table = _indirectHost + tableOffset;
        for (int i = 0; i < total; i++)
        {
            bool isWritable = i >= readable.Length;
            var (gpa, len) = isWritable ? writable[i - readable.Length] : readable[i];
            bool last = i == total - 1;
            ushort flags = (ushort)((isWritable ? VirtqDesc.FlagWrite : 0) | (last ? 0 : VirtqDesc.FlagNext));
            // SAFETY: head < Size and i < total <= _indirectEntries: inside the indirect area translated in SetIndirectArea.
            Unsafe.WriteUnaligned(table + i * VirtqDesc.Size, new VirtqDesc(gpa, len, flags, last ? (ushort)0 : (ushort)(i + 1)));
        }
        // SAFETY: head < Size.
        Unsafe.WriteUnaligned(_desc + head * VirtqDesc.Size,
            new VirtqDesc(_indirectGpa + tableOffset, (uint)(total * VirtqDesc.Size), VirtqDesc.FlagIndirect, 0));
        _freeHead = _nextFree[head];
        _numFree--;
        _chainDescriptors[head] = 1;
        MakeAvailable(head);
        return head;
    }

    private void MakeAvailable(ushort head)
    {
        // SAFETY: see the ring accessors. The entry is published by the release store of avail.idx later.
        *AvailRing(_availShadow & _mask) = head;
        _availShadow++;
        _inFlight++;
    }

    /// <summary>Publishes the chains added since the last call (release store of avail.idx) and answers
    /// whether the device wants a kick: with EVENT_IDX, vring_need_event(avail_event, new, old); else unless
    /// it set VRING_USED_F_NO_NOTIFY. False when nothing was added.</summary>
    public bool PublishAndCheckKick()
    {
        ushort newIdx = _availShadow;
        ushort oldIdx = _availPublished;
        if (newIdx == oldIdx)
        {
            return false;
        }
        // SAFETY: see the ring accessors.
        Volatile.Write(ref *AvailIdx, newIdx);
        _availPublished = newIdx;
        // The device writes avail_event / used.flags, fences, then reads avail.idx: the mirror image.
        Interlocked.MemoryBarrier();
        if (_eventIdx)
        {
            return SplitRing.NeedEvent(Volatile.Read(ref *AvailEvent), newIdx, oldIdx);
        }
        return (Volatile.Read(ref *UsedFlags) & VirtqRingHeader.UsedFlagNoNotify) == 0;
    }

    /// <summary>Whether the device asks for a kick after the next chain published now (avail_event at the
    /// published index with EVENT_IDX, else no VRING_USED_F_NO_NOTIFY): false while it polls the ring.</summary>
    public bool WouldKickNext()
    {
        Interlocked.MemoryBarrier();
        if (_eventIdx)
        {
            // SAFETY: see the ring accessors.
            return Volatile.Read(ref *AvailEvent) == _availPublished;
        }
        // SAFETY: see the ring accessors.
        return (Volatile.Read(ref *UsedFlags) & VirtqRingHeader.UsedFlagNoNotify) == 0;
    }

    /// <summary>True when the device has published used elements not yet reaped.</summary>
    public bool HasUsed()
        // SAFETY: see the ring accessors.
        => Volatile.Read(ref *UsedIdx) != _lastUsed;

    /// <summary>Takes the next used element and frees its descriptors. False when there is none. While
    /// callbacks are enabled, an empty reap re-arms used_event (EVENT_IDX) behind a full fence and re-checks.</summary>
    public bool TryReapUsed(out ushort head, out uint len)
    {
        head = 0;
        len = 0;
        // SAFETY: see the ring accessors. Acquire: the element is read after the index that covers it.
        ushort usedIdx = Volatile.Read(ref *UsedIdx);
        if (usedIdx == _lastUsed)
        {
            if (!_callbacksEnabled || !_eventIdx || Volatile.Read(ref *UsedEvent) == _lastUsed)
            {
                return false;
            }
            Volatile.Write(ref *UsedEvent, _lastUsed);
            Interlocked.MemoryBarrier();
            usedIdx = Volatile.Read(ref *UsedIdx);
            if (usedIdx == _lastUsed)
            {
                return false;
            }
        }
        if ((ushort)(usedIdx - _lastUsed) > _inFlight)
        {
            throw new InvalidDataException($"device moved used.idx to {usedIdx}, {(ushort)(usedIdx - _lastUsed)} ahead, with {_inFlight} chains in flight");
        }
        // SAFETY: see the ring accessors.
        var elem = Unsafe.ReadUnaligned<VirtqUsedElem>(UsedRing(_lastUsed & _mask));
        if (elem.Id >= Size || _chainDescriptors[elem.Id] == 0)
        {
            throw new InvalidDataException($"device returned head {elem.Id}, which is not in flight");
        }
        _lastUsed++;
        head = (ushort)elem.Id;
        len = elem.Len;
        Free(head);
        return true;
    }

    private void Free(ushort head)
    {
        int count = _chainDescriptors[head];
        _chainDescriptors[head] = 0;
        ushort last = head;
        for (int i = 1; i < count; i++)
        {
            last = _nextFree[last];
        }
        _nextFree[last] = _freeHead;
        _freeHead = head;
        _numFree += count;
        _inFlight--;
    }

    /// <summary>Asks the device for used-buffer notifications (used_event = last reaped with EVENT_IDX, else
    /// clears VRING_AVAIL_F_NO_INTERRUPT), then re-checks behind a full fence: true when used elements are
    /// already waiting (reap them instead of sleeping).</summary>
    public bool EnableCallbacks()
    {
        _callbacksEnabled = true;
        // SAFETY: see the ring accessors. Only the driver writes avail.flags and used_event.
        if (_eventIdx)
        {
            Volatile.Write(ref *UsedEvent, _lastUsed);
        }
        else
        {
            Volatile.Write(ref *AvailFlags, (ushort)(*AvailFlags & ~VirtqRingHeader.AvailFlagNoInterrupt));
        }
        Interlocked.MemoryBarrier();
        return Volatile.Read(ref *UsedIdx) != _lastUsed;
    }

    /// <summary>Asks the device not to send used-buffer notifications (VRING_AVAIL_F_NO_INTERRUPT; with
    /// EVENT_IDX, used_event simply stops moving, so at most one more may come).</summary>
    public void DisableCallbacks()
    {
        _callbacksEnabled = false;
        if (!_eventIdx)
        {
            // SAFETY: see the ring accessors.
            Volatile.Write(ref *AvailFlags, (ushort)(*AvailFlags | VirtqRingHeader.AvailFlagNoInterrupt));
        }
    }

    /// <summary>Unpins the ring and indirect regions. The queue must not be used afterwards.</summary>
    public void Dispose()
    {
        for (int i = 0; i < _pinned.Length; i++)
        {
            var region = _pinned[i];
            _pinned[i] = null!;
            region?.Release();
        }
        var indirect = _indirectRegion;
        _indirectRegion = null;
        _indirectHost = null;
        indirect?.Release();
    }
}
