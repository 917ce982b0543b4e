using System.Runtime.InteropServices;

namespace Vhostfsd.Virtqueue;

/// <summary>struct virtq_desc (virtio 1.x, split virtqueue): one guest buffer. 16 bytes, little-endian.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct VirtqDesc
{
    public const int Size = 16;

    /// <summary>This descriptor continues via <see cref="Next"/>.</summary>
    public const ushort FlagNext = 1;
    /// <summary>The buffer is device-writable (otherwise device-readable).</summary>
    public const ushort FlagWrite = 2;
    /// <summary>The buffer holds a table of descriptors (VIRTIO_F_INDIRECT_DESC).</summary>
    public const ushort FlagIndirect = 4;

    /// <summary>Guest-physical address of the buffer.</summary>
    public ulong Addr;
    public uint Len;
    public ushort Flags;
    public ushort Next;

    public VirtqDesc(ulong addr, uint len, ushort flags, ushort next)
    {
        Addr = addr;
        Len = len;
        Flags = flags;
        Next = next;
    }
}

/// <summary>struct virtq_used_elem: one completed chain. 8 bytes (the id is 32 bits wide on the wire).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct VirtqUsedElem
{
    public const int Size = 8;

    /// <summary>Head index of the completed chain.</summary>
    public uint Id;
    /// <summary>Bytes the device wrote into the chain's writable buffers.</summary>
    public uint Len;
}

/// <summary>The first 4 bytes of struct virtq_avail and struct virtq_used: flags, then the
/// free-running 16-bit index. The ring entries follow, then the 16-bit event field
/// (used_event after the avail ring, avail_event after the used ring) when EVENT_IDX is negotiated.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct VirtqRingHeader
{
    public const int Size = 4;

    /// <summary>avail.flags: the driver asks the device not to interrupt (ignored with EVENT_IDX).</summary>
    public const ushort AvailFlagNoInterrupt = 1;
    /// <summary>used.flags: the device asks the driver not to kick (ignored with EVENT_IDX).</summary>
    public const ushort UsedFlagNoNotify = 1;

    public ushort Flags;
    public ushort Idx;
}

/// <summary>Sizes, alignments and offsets of the three parts of a split virtqueue
/// (virtio 1.x §2.7: descriptor table, driver area = avail ring, device area = used ring).</summary>
public static class SplitRing
{
    public const ushort MaxSize = 32768;
    public const int DescAlign = 16;
    public const int AvailAlign = 2;
    public const int UsedAlign = 4;

    /// <summary>Virtio feature bits that change the ring format.</summary>
    public const int FeatureIndirectDesc = 28;
    public const int FeatureEventIdx = 29;

    /// <summary>True when <paramref name="size"/> is a valid split queue size: a power of 2 in 1..32768.</summary>
    public static bool IsValidSize(int size) => size >= 1 && size <= MaxSize && (size & (size - 1)) == 0;

    /// <summary>Bytes of the descriptor table: 16 * size.</summary>
    public static ulong DescTableBytes(ushort size) => (ulong)VirtqDesc.Size * size;

    /// <summary>Bytes of the avail ring including used_event: 6 + 2 * size.</summary>
    public static ulong AvailRingBytes(ushort size) => 6 + 2UL * size;

    /// <summary>Bytes of the used ring including avail_event: 6 + 8 * size.</summary>
    public static ulong UsedRingBytes(ushort size) => 6 + (ulong)VirtqUsedElem.Size * size;

    /// <summary>Lays the three parts out one after another from <paramref name="baseAddress"/>
    /// (which must be 16-aligned), each at its alignment. Returns the total bytes used.</summary>
    public static ulong Layout(ushort size, ulong baseAddress, out ulong desc, out ulong avail, out ulong used)
    {
        if (!IsValidSize(size))
        {
            throw new ArgumentOutOfRangeException(nameof(size), size, "a split queue size is a power of 2 in 1..32768");
        }
        if (baseAddress % DescAlign != 0)
        {
            throw new ArgumentException($"ring base 0x{baseAddress:x} is not {DescAlign}-byte aligned", nameof(baseAddress));
        }
        desc = baseAddress;
        avail = AlignUp(desc + DescTableBytes(size), AvailAlign);
        used = AlignUp(avail + AvailRingBytes(size), UsedAlign);
        return used + UsedRingBytes(size) - baseAddress;
    }

    /// <summary>The spec's vring_need_event: true when the index moving from <paramref name="oldIdx"/>
    /// to <paramref name="newIdx"/> passed <paramref name="eventIdx"/> (all 16-bit, wrapping).</summary>
    public static bool NeedEvent(ushort eventIdx, ushort newIdx, ushort oldIdx)
        => (ushort)(newIdx - eventIdx - 1) < (ushort)(newIdx - oldIdx);

    private static ulong AlignUp(ulong value, ulong align) => (value + align - 1) & ~(align - 1);
}
