using Vhostfsd.Virtqueue;

namespace Vhostfsd.Testing;

/// <summary>A mock virtio driver for device-queue tests (the shape of rust-vmm virtio-queue's mock.rs):
/// it lays out real split rings in <see cref="QueueTestMemory"/> and writes any descriptor, avail entry or
/// index the test asks for, well-formed or not, with no checks, so every malformed chain can be built.
/// It also reads back what the device wrote (used ring, used.flags, avail_event).</summary>
public sealed class QueueMockDriver
{
    private ulong _nextBuffer;
    private readonly ulong _bufferEnd;

    /// <param name="ringBase">Guest-physical address where the rings go (16-aligned); buffers from
    /// <see cref="AllocBuffer"/> are carved from the rest of that region up to <paramref name="bufferEnd"/>.</param>
    public QueueMockDriver(QueueTestMemory memory, ushort size, ulong ringBase = 0, ulong bufferEnd = 0)
    {
        Memory = memory;
        Size = size;
        ulong bytes = SplitRing.Layout(size, ringBase, out ulong desc, out ulong avail, out ulong used);
        DescGpa = desc;
        AvailGpa = avail;
        UsedGpa = used;
        _nextBuffer = AlignUp(ringBase + bytes, 4096);
        _bufferEnd = bufferEnd == 0 ? ulong.MaxValue : bufferEnd;
        // Rings start zeroed, as a driver allocates them.
        memory.Write(desc, new byte[bytes]);
    }

    public QueueTestMemory Memory { get; }
    public ushort Size { get; }
    public ulong DescGpa { get; }
    public ulong AvailGpa { get; }
    public ulong UsedGpa { get; }

    /// <summary>A device queue configured on these rings through VMM user addresses, as vhost-user does.</summary>
    public DeviceQueue CreateDeviceQueue(bool eventIdx, bool indirect, int? maxIndirectEntries = null)
    {
        var queue = new DeviceQueue(Size);
        if (maxIndirectEntries is int max)
        {
            queue.MaxIndirectEntries = max;
        }
        if (!queue.TryConfigureUser(Memory.Memory, DescGpa + QueueTestMemory.UserOffset, AvailGpa + QueueTestMemory.UserOffset,
                UsedGpa + QueueTestMemory.UserOffset, eventIdx, indirect))
        {
            throw new InvalidOperationException("rings are not inside guest memory");
        }
        return queue;
    }

    /// <summary>Reserves <paramref name="length"/> bytes of buffer space (page-granular bump allocation), zeroed.</summary>
    public ulong AllocBuffer(ulong length, ulong align = 16)
    {
        ulong gpa = AlignUp(_nextBuffer, align);
        if (gpa + length > _bufferEnd)
        {
            throw new InvalidOperationException("mock driver buffer space exhausted");
        }
        _nextBuffer = gpa + length;
        if (length > 0 && length <= int.MaxValue)
        {
            Memory.Write(gpa, new byte[length]);
        }
        return gpa;
    }

    /// <summary>Writes descriptor <paramref name="index"/> of the ring's table (index masked only by the table: any index &lt; Size).</summary>
    public void WriteDesc(ushort index, VirtqDesc desc)
    {
        if (index >= Size)
        {
            throw new ArgumentOutOfRangeException(nameof(index));
        }
        Memory.WriteObj(DescGpa + (ulong)index * VirtqDesc.Size, desc);
    }

    public VirtqDesc ReadDesc(ushort index) => Memory.ReadObj<VirtqDesc>(DescGpa + (ulong)index * VirtqDesc.Size);

    /// <summary>Writes an indirect table at <paramref name="gpa"/>.</summary>
    public void WriteTable(ulong gpa, ReadOnlySpan<VirtqDesc> table)
    {
        for (int i = 0; i < table.Length; i++)
        {
            Memory.WriteObj(gpa + (ulong)i * VirtqDesc.Size, table[i]);
        }
    }

    /// <summary>Writes descriptors <paramref name="first"/>, first+1, ... (wrapping at the queue size) linked by
    /// NEXT (the last without NEXT unless its flags already carry it), and returns the head. Other flags are kept.</summary>
    public ushort WriteChain(ushort first, ReadOnlySpan<VirtqDesc> descs)
    {
        int mask = Size - 1;
        for (int i = 0; i < descs.Length; i++)
        {
            var d = descs[i];
            if (i < descs.Length - 1)
            {
                d.Flags |= VirtqDesc.FlagNext;
                d.Next = (ushort)((first + i + 1) & mask);
            }
            WriteDesc((ushort)((first + i) & mask), d);
        }
        return first;
    }

    /// <summary>An indirect table of <paramref name="descs"/> linked by NEXT, written to fresh buffer space;
    /// returns the descriptor that points at it.</summary>
    public VirtqDesc MakeIndirect(ReadOnlySpan<VirtqDesc> descs)
    {
        ulong gpa = AllocBuffer((ulong)descs.Length * VirtqDesc.Size);
        var table = descs.ToArray();
        for (int i = 0; i < table.Length - 1; i++)
        {
            table[i].Flags |= VirtqDesc.FlagNext;
            table[i].Next = (ushort)(i + 1);
        }
        WriteTable(gpa, table);
        return new VirtqDesc(gpa, (uint)(descs.Length * VirtqDesc.Size), VirtqDesc.FlagIndirect, 0);
    }

    public ushort AvailFlags
    {
        get => Memory.ReadObj<ushort>(AvailGpa);
        set => Memory.WriteObj(AvailGpa, value);
    }

    public ushort AvailIdx
    {
        get => Memory.ReadObj<ushort>(AvailGpa + 2);
        set => Memory.WriteObj(AvailGpa + 2, value);
    }

    /// <summary>Writes avail ring slot <paramref name="ringIndex"/> (masked by the size).</summary>
    public void SetAvailEntry(ushort ringIndex, ushort head)
        => Memory.WriteObj(AvailGpa + 4 + 2UL * (ulong)(ringIndex & (Size - 1)), head);

    /// <summary>Puts <paramref name="head"/> in the next avail slot and moves avail.idx past it.</summary>
    public void PushAvail(ushort head)
    {
        ushort idx = AvailIdx;
        SetAvailEntry(idx, head);
        AvailIdx = (ushort)(idx + 1);
    }

    /// <summary>used_event (after the avail ring; read by the device with EVENT_IDX).</summary>
    public ushort UsedEvent
    {
        get => Memory.ReadObj<ushort>(AvailGpa + 4 + 2UL * Size);
        set => Memory.WriteObj(AvailGpa + 4 + 2UL * Size, value);
    }

    public ushort UsedFlags
    {
        get => Memory.ReadObj<ushort>(UsedGpa);
        set => Memory.WriteObj(UsedGpa, value);
    }

    public ushort UsedIdx
    {
        get => Memory.ReadObj<ushort>(UsedGpa + 2);
        set => Memory.WriteObj(UsedGpa + 2, value);
    }

    /// <summary>Used ring slot <paramref name="ringIndex"/> (masked by the size).</summary>
    public VirtqUsedElem UsedElem(ushort ringIndex)
        => Memory.ReadObj<VirtqUsedElem>(UsedGpa + 4 + (ulong)VirtqUsedElem.Size * (ulong)(ringIndex & (Size - 1)));

    /// <summary>avail_event (after the used ring; written by the device with EVENT_IDX).</summary>
    public ushort AvailEvent
    {
        get => Memory.ReadObj<ushort>(UsedGpa + 4 + (ulong)VirtqUsedElem.Size * Size);
        set => Memory.WriteObj(UsedGpa + 4 + (ulong)VirtqUsedElem.Size * Size, value);
    }

    private static ulong AlignUp(ulong value, ulong align) => (value + align - 1) / align * align;
}
