using System.Runtime.CompilerServices;

namespace Vhostfsd.Virtqueue;

/// <summary>The device side of a split virtqueue (virtio 1.x §2.7): pops the chains the driver made
/// available and publishes used elements. The guest is hostile: every index, length and address it
/// wrote is checked, and a bad chain is refused with a <see cref="ChainError"/>, never followed.</summary>
/// <remarks>
/// Threads: <see cref="TryPop"/>, <see cref="HasAvailable"/>, <see cref="DisableNotifications"/> and
/// <see cref="EnableNotifications"/> belong to one consumer thread (the queue worker).
/// <see cref="PushUsed"/> and <see cref="NeedsNotification"/> may be called from any thread.
/// Configuration (<see cref="Configure"/>, the setters, <see cref="Reset"/>) happens while the
/// worker is stopped.
/// <para>A worker that sleeps on the kick eventfd must not miss a kick. Either loop
/// <c>do { DisableNotifications(); while (TryPop(chain) == Popped) ...; } while (EnableNotifications());</c>
/// or just pop until <see cref="PopResult.Empty"/>: while notifications are enabled, an empty
/// pop re-arms avail_event (EVENT_IDX) with a full fence and re-checks before answering Empty.</para>
/// <para>Ring layout assumes a little-endian host (x86_64), as virtio 1.x rings are little-endian.</para>
/// </remarks>
public sealed unsafe class DeviceQueue
{
    private readonly ushort _mask;
    private readonly Lock _usedLock = new();
    private readonly GuestMemoryRegion?[] _pinned = new GuestMemoryRegion?[3];

    private GuestMemory? _memory;
    private byte* _desc;
    private byte* _avail;
    private byte* _used;
    private bool _eventIdx;
    private bool _indirect;
    private ushort _nextAvail;
    private bool _notificationsEnabled = true;

    // Guarded by _usedLock.
    private ushort _nextUsed;
    private ushort _signalledUsed;
    private bool _signalledValid;

    public DeviceQueue(ushort size)
    {
        if (!SplitRing.IsValidSize(size))
        {
            throw new ArgumentOutOfRangeException(nameof(size), size, "a split queue size is a power of 2 in 1..32768");
        }
        Size = size;
        _mask = (ushort)(size - 1);
        MaxIndirectEntries = size;
    }

    public ushort Size { get; }

    /// <summary>Most entries an indirect table may have. The spec bounds a whole chain by the queue
    /// size, which is the default; older Linux guests may build longer indirect tables when FUSE's
    /// max_pages exceeds the queue size, so a lenient device may raise it (up to 65536).</summary>
    public int MaxIndirectEntries
    {
        get;
        set
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(value, 1);
            ArgumentOutOfRangeException.ThrowIfGreaterThan(value, 65536);
            field = value;
        }
    }

    public bool IsConfigured => _avail != null;
    public bool EventIdx => _eventIdx;
    public bool IndirectDesc => _indirect;

    /// <summary>Index of the next avail ring entry to pop (SET_VRING_BASE / GET_VRING_BASE).</summary>
    public ushort NextAvail
    {
        get => _nextAvail;
        set => _nextAvail = value;
    }

    /// <summary>Index the next used element goes to; <see cref="Configure"/> reads it from used.idx.</summary>
    public ushort NextUsed
    {
        get
        {
            lock (_usedLock)
            {
                return _nextUsed;
            }
        }
        set
        {
            lock (_usedLock)
            {
                _nextUsed = value;
                _signalledValid = false;
            }
        }
    }

    /// <summary>Points the queue at rings the caller already translated to host addresses, which must stay
    /// mapped until <see cref="Reset"/> or the next Configure (with vhost-user, prefer <see cref="TryConfigureUser"/>,
    /// which pins them). Buffers are translated through <paramref name="memory"/> at each pop.
    /// Keeps <see cref="NextAvail"/>; sets <see cref="NextUsed"/> from the used ring's idx.</summary>
    public void Configure(GuestMemory memory, nint desc, nint avail, nint used, bool eventIdx, bool indirect)
    {
        ArgumentNullException.ThrowIfNull(memory);
        if (desc == 0 || avail == 0 || used == 0)
        {
            throw new ArgumentException("ring address is null");
        }
        Unconfigure();
        SetRings(memory, desc, avail, used, eventIdx, indirect);
    }

    /// <summary>Configures from VMM user addresses (vhost-user SET_VRING_ADDR): each ring must lie inside one
    /// region; those regions stay mapped while the queue uses them. False (queue left unconfigured) otherwise.</summary>
    public bool TryConfigureUser(GuestMemory memory, ulong descUserAddr, ulong availUserAddr, ulong usedUserAddr, bool eventIdx, bool indirect)
        => TryConfigureCore(memory, descUserAddr, availUserAddr, usedUserAddr, eventIdx, indirect, user: true);

    /// <summary>Configures from guest-physical ring addresses; see <see cref="TryConfigureUser"/>.</summary>
    public bool TryConfigureGuestPhys(GuestMemory memory, ulong descGpa, ulong availGpa, ulong usedGpa, bool eventIdx, bool indirect)
        => TryConfigureCore(memory, descGpa, availGpa, usedGpa, eventIdx, indirect, user: false);

    private bool TryConfigureCore(GuestMemory memory, ulong descAddr, ulong availAddr, ulong usedAddr, bool eventIdx, bool indirect, bool user)
    {
        ArgumentNullException.ThrowIfNull(memory);
        Unconfigure();
        using var view = memory.Acquire();
        Span<nint> hosts = stackalloc nint[3];
        ReadOnlySpan<ulong> addrs = [descAddr, availAddr, usedAddr];
        ReadOnlySpan<ulong> lengths = [SplitRing.DescTableBytes(Size), SplitRing.AvailRingBytes(Size), SplitRing.UsedRingBytes(Size)];
        var regions = new GuestMemoryRegion?[3];
        for (int i = 0; i < 3; i++)
        {
            bool ok = user
                ? view.TryTranslateUser(addrs[i], lengths[i], out hosts[i], out regions[i])
                : view.TryTranslate(addrs[i], lengths[i], out hosts[i], out regions[i]);
            if (!ok)
            {
                return false;
            }
        }
        for (int i = 0; i < 3; i++)
        {
            // The view keeps each region alive until we hold our own reference.
            regions[i]!.AddRef();
            _pinned[i] = regions[i];
        }
        SetRings(memory, hosts[0], hosts[1], hosts[2], eventIdx, indirect);
        return true;
    }

    private void SetRings(GuestMemory memory, nint desc, nint avail, nint used, bool eventIdx, bool indirect)
    {
        _memory = memory;
        _desc = (byte*)desc;
        _avail = (byte*)avail;
        _used = (byte*)used;
        _eventIdx = eventIdx;
        _indirect = indirect;
        _notificationsEnabled = true;
        lock (_usedLock)
        {
            // SAFETY: used points at a used ring of Size entries (caller's contract or checked translation).
            _nextUsed = Volatile.Read(ref *UsedIdx);
            _signalledValid = false;
        }
    }

    /// <summary>Forgets the rings (unpinning their regions) and zeroes both indices: the queue is
    /// unconfigured until the next Configure. Chains still held by callers stay valid until released.</summary>
    public void Reset()
    {
        Unconfigure();
        _nextAvail = 0;
        _notificationsEnabled = true;
        lock (_usedLock)
        {
            _nextUsed = 0;
            _signalledValid = false;
        }
    }

    private void Unconfigure()
    {
        lock (_usedLock)
        {
            _memory = null;
            _desc = null;
            _avail = null;
            _used = null;
        }
        Unpin();
    }

    private void Unpin()
    {
        for (int i = 0; i < _pinned.Length; i++)
        {
            var region = _pinned[i];
            _pinned[i] = null;
            region?.Release();
        }
    }

    // SAFETY (all ring accessors): the offsets stay inside the ring sizes given by SplitRing for Size
    // entries, because every ring index is masked with Size - 1 and the event fields sit at entry Size.
    private ushort* AvailFlags => (ushort*)_avail;
    private ushort* AvailIdx => (ushort*)(_avail + 2);
    private ushort* AvailRing(int i) => (ushort*)(_avail + 4 + 2 * i);
    private ushort* UsedEvent => (ushort*)(_avail + 4 + 2 * Size);
    private ushort* UsedFlags => (ushort*)_used;
    private ushort* UsedIdx => (ushort*)(_used + 2);
    private VirtqUsedElem* UsedRing(int i) => (VirtqUsedElem*)(_used + 4 + VirtqUsedElem.Size * i);
    private ushort* AvailEvent => (ushort*)(_used + 4 + VirtqUsedElem.Size * Size);

    /// <summary>True when the driver has published chains not yet popped (acquire read of avail.idx).</summary>
    public bool HasAvailable()
    {
        if (_avail == null)
        {
            return false;
        }
        // SAFETY: see the ring accessors.
        return Volatile.Read(ref *AvailIdx) != _nextAvail;
    }

    /// <summary>Pops the next available chain into <paramref name="chain"/> (releasing what it held).
    /// Never throws for guest data: a refused chain returns <see cref="PopResult.Malformed"/> with
    /// <see cref="DescriptorChain.Error"/> set. Does not allocate.</summary>
    public PopResult TryPop(DescriptorChain chain)
    {
        chain.Release();
        if (_avail == null)
        {
            return PopResult.Empty;
        }
        // SAFETY: see the ring accessors. Acquire: ring entries are read after the index that covers them.
        ushort availIdx = Volatile.Read(ref *AvailIdx);
        if (availIdx == _nextAvail)
        {
            if (!_notificationsEnabled || !_eventIdx || Volatile.Read(ref *AvailEvent) == _nextAvail)
            {
                return PopResult.Empty;
            }
            // Re-arm avail_event before reporting Empty, so the driver's next publish kicks us.
            Volatile.Write(ref *AvailEvent, _nextAvail);
            Interlocked.MemoryBarrier();
            availIdx = Volatile.Read(ref *AvailIdx);
            if (availIdx == _nextAvail)
            {
                return PopResult.Empty;
            }
        }
        if ((ushort)(availIdx - _nextAvail) > Size)
        {
            chain.Fail(0, ChainError.AvailIndexJump);
            return PopResult.Malformed;
        }
        // SAFETY: see the ring accessors.
        ushort head = Unsafe.ReadUnaligned<ushort>(AvailRing(_nextAvail & _mask));
        _nextAvail++;
        if (head >= Size)
        {
            chain.Fail(head, ChainError.HeadOutOfRange);
            return PopResult.Malformed;
        }
        chain.Begin(head, _memory!.Acquire());
        var error = Walk(chain, head);
        if (error != ChainError.None)
        {
            chain.Fail(head, error);
            return PopResult.Malformed;
        }
        return PopResult.Popped;
    }

    private ChainError Walk(DescriptorChain chain, ushort head)
    {
        ref readonly var view = ref chain.View;
        byte* table = _desc;
        uint tableEntries = Size;
        uint ttl = Size;
        uint index = head;
        bool inIndirect = false;
        bool seenWritable = false;
        ulong total = 0;
        while (true)
        {
            if (index >= tableEntries)
            {
                return ChainError.DescriptorIndexOutOfRange;
            }
            if (ttl == 0)
            {
                return ChainError.ChainTooLong;
            }
            ttl--;
            // SAFETY: index < tableEntries, and the table holds tableEntries descriptors: the ring's Size
            // (caller's contract) or an indirect table whose whole length was translated below.
            // One copy: the guest may rewrite the descriptor meanwhile; only the copy is checked and used.
            var desc = Unsafe.ReadUnaligned<VirtqDesc>(table + (nuint)index * VirtqDesc.Size);
            chain.CountDescriptor();
            if ((desc.Flags & VirtqDesc.FlagIndirect) != 0)
            {
                if (!_indirect)
                {
                    return ChainError.IndirectNotNegotiated;
                }
                if (inIndirect)
                {
                    return ChainError.NestedIndirect;
                }
                if ((desc.Flags & VirtqDesc.FlagNext) != 0)
                {
                    return ChainError.IndirectWithNext;
                }
                if (desc.Len == 0 || desc.Len % VirtqDesc.Size != 0)
                {
                    return ChainError.IndirectLengthInvalid;
                }
                uint entries = desc.Len / VirtqDesc.Size;
                if (entries > (uint)MaxIndirectEntries)
                {
                    return ChainError.IndirectTableTooLong;
                }
                if (!view.TryTranslate(desc.Addr, desc.Len, out nint tableHost))
                {
                    return ChainError.AddressOutOfRange;
                }
                chain.MarkIndirect();
                table = (byte*)tableHost;
                tableEntries = entries;
                ttl = entries;
                index = 0;
                inIndirect = true;
                continue;
            }
            bool writable = (desc.Flags & VirtqDesc.FlagWrite) != 0;
            if (!writable && seenWritable)
            {
                return ChainError.ReadableAfterWritable;
            }
            seenWritable |= writable;
            total += desc.Len;
            if (total > uint.MaxValue)
            {
                return ChainError.TotalLengthTooLarge;
            }
            int segments = view.TryTranslateSplit(desc.Addr, desc.Len, chain.FreeSegments);
            if (segments < 0)
            {
                return view.CountSegments(desc.Addr, desc.Len) < 0 ? ChainError.AddressOutOfRange : ChainError.TooManySegments;
            }
            chain.Append(segments, desc.Len, writable);
            if ((desc.Flags & VirtqDesc.FlagNext) == 0)
            {
                return ChainError.None;
            }
            index = desc.Next;
        }
    }

    /// <summary>Publishes a used element: the entry is written before used.idx (release). Any thread.
    /// False (nothing written) when the queue is not configured, e.g. a completion that arrives after
    /// <see cref="Reset"/>. A head outside the queue is a caller bug and throws.</summary>
    public bool PushUsed(ushort head, uint writtenBytes)
    {
        if (head >= Size)
        {
            throw new ArgumentOutOfRangeException(nameof(head), head, "not a descriptor index of this queue");
        }
        lock (_usedLock)
        {
            if (_used == null)
            {
                return false;
            }
            // SAFETY: see the ring accessors.
            var elem = UsedRing(_nextUsed & _mask);
            Unsafe.WriteUnaligned(elem, new VirtqUsedElem { Id = head, Len = writtenBytes });
            _nextUsed++;
            Volatile.Write(ref *UsedIdx, _nextUsed);
        }
        return true;
    }

    /// <summary>After pushes: true when the driver wants an interrupt (used-buffer notification) now.
    /// With EVENT_IDX, the spec's vring_need_event(used_event, new used idx, used idx at the previous
    /// check); the first check after configuration always answers true. Otherwise, unless the driver set
    /// VRING_AVAIL_F_NO_INTERRUPT. Any thread.</summary>
    public bool NeedsNotification()
    {
        lock (_usedLock)
        {
            if (_avail == null)
            {
                return false;
            }
            // The used.idx store must be visible before we read the driver's suppression state, and the
            // driver does the mirror image (write used_event, fence, read used.idx): a full fence.
            Interlocked.MemoryBarrier();
            if (!_eventIdx)
            {
                // SAFETY: see the ring accessors.
                return (Volatile.Read(ref *AvailFlags) & VirtqRingHeader.AvailFlagNoInterrupt) == 0;
            }
            // SAFETY: see the ring accessors.
            ushort usedEvent = Volatile.Read(ref *UsedEvent);
            ushort newIdx = _nextUsed;
            ushort oldIdx = _signalledUsed;
            bool first = !_signalledValid;
            _signalledUsed = newIdx;
            _signalledValid = true;
            return first || SplitRing.NeedEvent(usedEvent, newIdx, oldIdx);
        }
    }

    /// <summary>Asks the driver not to kick (VRING_USED_F_NO_NOTIFY, or with EVENT_IDX by putting avail_event
    /// one behind the next entry, where no publish crosses it). Worker thread.</summary>
    public void DisableNotifications()
    {
        if (_used == null)
        {
            return;
        }
        _notificationsEnabled = false;
        if (_eventIdx)
        {
            // SAFETY: see the ring accessors. Only this thread writes avail_event. One behind the next
            // index: the driver's next publish does not cross it, so it does not kick.
            Volatile.Write(ref *AvailEvent, (ushort)(_nextAvail - 1));
        }
        else
        {
            // SAFETY: see the ring accessors. Only this thread writes used.flags.
            Volatile.Write(ref *UsedFlags, (ushort)(*UsedFlags | VirtqRingHeader.UsedFlagNoNotify));
        }
    }

    /// <summary>Asks the driver to kick again (avail_event = next avail with EVENT_IDX, else clears
    /// VRING_USED_F_NO_NOTIFY), then re-checks behind a full fence. True when chains arrived meanwhile:
    /// the caller pops again instead of sleeping. Worker thread.</summary>
    public bool EnableNotifications()
    {
        if (_used == null)
        {
            return false;
        }
        _notificationsEnabled = true;
        // SAFETY: see the ring accessors. Only this thread writes used.flags and avail_event.
        if (_eventIdx)
        {
            Volatile.Write(ref *AvailEvent, _nextAvail);
        }
        else
        {
            Volatile.Write(ref *UsedFlags, (ushort)(*UsedFlags & ~VirtqRingHeader.UsedFlagNoNotify));
        }
        Interlocked.MemoryBarrier();
        return Volatile.Read(ref *AvailIdx) != _nextAvail;
    }
}
