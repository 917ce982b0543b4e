using Vhostfsd.Posix;
using Vhostfsd.VhostUser;
using Vhostfsd.Virtqueue;

namespace Vhostfsd.Testing;

/// <summary>The guest side of a vhost-user test: memfd-backed guest memory (guest-physical and VMM
/// user addresses deliberately different, so mixing them up fails), split rings laid out in it, a
/// <see cref="DriverQueue"/> plus kick and call eventfds per queue, and a data area of fixed-size
/// buffer slots (one readable and one writable buffer per descriptor slot of each queue).</summary>
public sealed unsafe class VhostUserTestGuest : IDisposable
{
    public const ulong GuestPhysBase = 0x4000_0000;
    public const ulong UserBase = 0x7f12_0000_0000;
    public const int IndirectEntries = 8;

    private readonly List<(SafeFd Fd, MemoryRegionDescription Description)> _regions = new();
    private readonly DriverQueue[] _queues;
    private readonly EventFd[] _kicks;
    private readonly EventFd[] _calls;
    private readonly ulong[] _dataBase;
    private ulong _nextGpa;

    public VhostUserTestGuest(int queueCount, ushort queueSize, int slotSize = 4096, bool eventIdx = true, bool indirect = false)
    {
        QueueCount = queueCount;
        QueueSize = queueSize;
        SlotSize = slotSize;
        EventIdx = eventIdx;
        IndirectDesc = indirect;
        ulong ringBytes = AlignUp(SplitRing.Layout(queueSize, 0, out _, out _, out _), 4096);
        ulong indirectBytes = indirect ? AlignUp(DriverQueue.IndirectAreaBytes(queueSize, IndirectEntries), 4096) : 0;
        ulong dataBytes = (ulong)queueSize * 2 * (ulong)slotSize;
        ulong size = AlignUp((ulong)queueCount * (ringBytes + indirectBytes + dataBytes), 2 << 20);
        Memory = new GuestMemory();
        _nextGpa = GuestPhysBase;
        AddRegion(size);
        _queues = new DriverQueue[queueCount];
        _kicks = new EventFd[queueCount];
        _calls = new EventFd[queueCount];
        _dataBase = new ulong[queueCount];
        ulong cursor = GuestPhysBase;
        Setups = new VhostUserQueueSetup[queueCount];
        for (int q = 0; q < queueCount; q++)
        {
            SplitRing.Layout(queueSize, cursor, out ulong desc, out ulong avail, out ulong used);
            cursor += ringBytes;
            _queues[q] = new DriverQueue(Memory, queueSize, desc, avail, used, eventIdx, indirect);
            if (indirect)
            {
                _queues[q].SetIndirectArea(Memory, cursor, IndirectEntries);
                cursor += indirectBytes;
            }
            _dataBase[q] = cursor;
            cursor += dataBytes;
            _kicks[q] = EventFd.Create(nonBlocking: true);
            _calls[q] = EventFd.Create(nonBlocking: true);
            Setups[q] = new VhostUserQueueSetup((uint)q, queueSize, ToUser(desc), ToUser(avail), ToUser(used), _kicks[q].Fd, _calls[q].Fd);
        }
    }

    public int QueueCount { get; }

    /// <summary>The name of this guest's memfds (unique: find its mappings in /proc/self/maps).</summary>
    public string MemFdName { get; } = "vhost-user-test-guest-" + Guid.NewGuid().ToString("N");

    public ushort QueueSize { get; }
    public int SlotSize { get; }
    public bool EventIdx { get; }
    public bool IndirectDesc { get; }
    public GuestMemory Memory { get; }

    /// <summary>Queue setups for <see cref="VhostUserFrontend.Start"/>.</summary>
    public VhostUserQueueSetup[] Setups { get; }

    /// <summary>Ring features to acknowledge for this layout.</summary>
    public ulong RingFeatures => VirtioFeatures.Version1
        | (EventIdx ? VirtioFeatures.RingEventIdx : 0) | (IndirectDesc ? VirtioFeatures.RingIndirectDesc : 0);

    /// <summary>The regions as the front-end sends them (only the first, unless more were added).</summary>
    public IReadOnlyList<VhostUserMemoryRegion> MemoryRegions
    {
        get
        {
            var list = new List<VhostUserMemoryRegion>(_regions.Count);
            foreach (var (fd, description) in _regions)
            {
                list.Add(new VhostUserMemoryRegion(description, fd.Fd));
            }
            return list;
        }
    }

    public DriverQueue Queue(int q) => _queues[q];
    public EventFd Kick(int q) => _kicks[q];
    public EventFd Call(int q) => _calls[q];

    /// <summary>The VMM user address of a guest-physical address in the first region.</summary>
    public static ulong ToUser(ulong gpa) => gpa - GuestPhysBase + UserBase;

    /// <summary>Guest-physical address of the readable (or writable) buffer of <paramref name="slot"/> of queue <paramref name="q"/>.</summary>
    public ulong SlotGpa(int q, int slot, bool writable) => _dataBase[q] + ((ulong)slot * 2 + (writable ? 1UL : 0UL)) * (ulong)SlotSize;

    /// <summary>Adds another memfd region right after the last one (guest and user side alike);
    /// returns what ADD_MEM_REG carries. The guest's own memory maps it too.</summary>
    public VhostUserMemoryRegion AddRegion(ulong size)
    {
        var fd = MemFd.Create(MemFdName, size);
        ulong gpa = _nextGpa;
        ulong user = gpa - GuestPhysBase + UserBase;
        var region = GuestMemoryRegion.Map(fd, 0, size, gpa, user);
        Memory.AddRegion(region);
        var description = new MemoryRegionDescription(gpa, size, user, 0);
        _regions.Add((fd, description));
        _nextGpa = gpa + size;
        return new VhostUserMemoryRegion(description, fd.Fd);
    }

    /// <summary>Forgets a region added by <see cref="AddRegion"/> (after REM_MEM_REG).</summary>
    public void RemoveRegion(MemoryRegionDescription description)
    {
        Memory.RemoveRegion(description.GuestPhysAddr, description.MemorySize);
        int index = _regions.FindIndex(r => r.Description.GuestPhysAddr == description.GuestPhysAddr);
        _regions[index].Fd.Dispose();
        _regions.RemoveAt(index);
    }

    /// <summary>A writable view of guest memory (the guest's own mapping).</summary>
    public Span<byte> Bytes(ulong gpa, int length)
    {
        using var view = Memory.Acquire();
        if (!view.TryTranslate(gpa, (ulong)length, out nint host))
        {
            throw new ArgumentOutOfRangeException(nameof(gpa), $"0x{gpa:x}+{length} is not in guest memory");
        }
        // SAFETY: the range was translated with its full length; the region stays mapped while this
        // guest (which owns the memory) is alive, and tests do not remove regions they still read.
        return new Span<byte>((void*)host, length);
    }

    /// <summary>Waits until the call eventfd of <paramref name="q"/> fires or <paramref name="timeoutMs"/> passes.</summary>
    public bool WaitCall(int q, int timeoutMs)
    {
        var pfd = new PollFd { Fd = _calls[q].Fd, Events = Libc.POLLIN };
        int n;
        do
        {
            // SAFETY: one PollFd on this frame.
            n = Libc.Poll(&pfd, 1, timeoutMs);
        }
        while (n < 0 && Libc.LastErrno == Errno.EINTR);
        if (n > 0)
        {
            _calls[q].Consume();
            return true;
        }
        return false;
    }

    private static ulong AlignUp(ulong value, ulong align) => (value + align - 1) / align * align;

    public void Dispose()
    {
        foreach (var queue in _queues)
        {
            queue?.Dispose();
        }
        foreach (var e in _kicks)
        {
            e?.Dispose();
        }
        foreach (var e in _calls)
        {
            e?.Dispose();
        }
        Memory.Dispose();
        foreach (var (fd, _) in _regions)
        {
            fd.Dispose();
        }
    }
}
