using System.Buffers.Binary;
using Vhostfsd.Virtqueue;

namespace Vhostfsd.Fuzz.Targets;

/// <summary>An independent reading of virtio 1.x §2.7 (split virtqueue, device side), used as the
/// oracle for <see cref="DeviceQueue.TryPop"/>: given the same guest memory it says whether the next
/// chain is valid and, if so, exactly which guest ranges (split at region edges) it consists of.
/// Written from the spec, not from DeviceQueue, so that the two can disagree.</summary>
internal sealed class QueueModel
{
    public enum Verdict
    {
        Empty,
        Popped,
        /// <summary>Refused; the avail entry was consumed.</summary>
        Refused,
        /// <summary>Refused; nothing consumed (avail.idx ran more than a ring ahead).</summary>
        RefusedNotConsumed,
    }

    public readonly record struct Segment(ulong Gpa, ulong Length, bool Writable);

    private readonly Func<ulong, int, byte[]> _read;
    private readonly (ulong Gpa, ulong Size)[] _regions;

    /// <param name="read">Reads guest memory (the same bytes the device sees).</param>
    /// <param name="regions">Guest memory regions, sorted by address.</param>
    public QueueModel(Func<ulong, int, byte[]> read, (ulong Gpa, ulong Size)[] regions)
    {
        _read = read;
        _regions = regions;
    }

    public Verdict Pop(ushort size, ulong descGpa, ulong availGpa, ushort nextAvail, bool indirectNegotiated, int maxIndirect,
        int capacity, out ushort head, List<Segment> segments)
    {
        segments.Clear();
        head = 0;
        ushort availIdx = BinaryPrimitives.ReadUInt16LittleEndian(_read(availGpa + 2, 2));
        if (availIdx == nextAvail)
        {
            return Verdict.Empty;
        }
        // The driver can be at most a full ring ahead of the device.
        if ((ushort)(availIdx - nextAvail) > size)
        {
            return Verdict.RefusedNotConsumed;
        }
        head = BinaryPrimitives.ReadUInt16LittleEndian(_read(availGpa + 4 + 2UL * (ulong)(nextAvail % size), 2));
        if (head >= size)
        {
            return Verdict.Refused;
        }
        ulong table = descGpa;
        uint entries = size;
        uint budget = size;
        uint index = head;
        bool inIndirect = false;
        bool writableSeen = false;
        ulong total = 0;
        int segmentCount = 0;
        while (true)
        {
            if (index >= entries || budget == 0)
            {
                return Verdict.Refused;
            }
            budget--;
            byte[] d = _read(table + 16UL * index, 16);
            ulong addr = BinaryPrimitives.ReadUInt64LittleEndian(d);
            uint len = BinaryPrimitives.ReadUInt32LittleEndian(d.AsSpan(8));
            ushort flags = BinaryPrimitives.ReadUInt16LittleEndian(d.AsSpan(12));
            ushort next = BinaryPrimitives.ReadUInt16LittleEndian(d.AsSpan(14));
            if ((flags & VirtqDesc.FlagIndirect) != 0)
            {
                // One level only, never chained on, a whole number of descriptors, inside one region.
                if (!indirectNegotiated || inIndirect || (flags & VirtqDesc.FlagNext) != 0 || len == 0 || len % 16 != 0
                    || len / 16 > (uint)maxIndirect || !InsideOneRegion(addr, len))
                {
                    return Verdict.Refused;
                }
                table = addr;
                entries = len / 16;
                budget = entries;
                index = 0;
                inIndirect = true;
                continue;
            }
            bool writable = (flags & VirtqDesc.FlagWrite) != 0;
            if (writableSeen && !writable)
            {
                return Verdict.Refused;
            }
            writableSeen |= writable;
            total += len;
            if (total > uint.MaxValue)
            {
                return Verdict.Refused;
            }
            if (!Split(addr, len, writable, segments, ref segmentCount) || segmentCount > capacity)
            {
                return Verdict.Refused;
            }
            if ((flags & VirtqDesc.FlagNext) == 0)
            {
                return Verdict.Popped;
            }
            index = next;
        }
    }

    private int RegionOf(ulong gpa)
    {
        for (int i = 0; i < _regions.Length; i++)
        {
            if (gpa >= _regions[i].Gpa && gpa - _regions[i].Gpa < _regions[i].Size)
            {
                return i;
            }
        }
        return -1;
    }

    private bool InsideOneRegion(ulong gpa, ulong length)
    {
        int r = RegionOf(gpa);
        return r >= 0 && length <= _regions[r].Size - (gpa - _regions[r].Gpa);
    }

    /// <summary>Splits [gpa, gpa+len) at region edges; contiguous regions may be crossed, gaps may not.
    /// A zero-length buffer must still start inside memory.</summary>
    private bool Split(ulong gpa, ulong length, bool writable, List<Segment> segments, ref int count)
    {
        int r = RegionOf(gpa);
        if (r < 0 || length > ulong.MaxValue - gpa)
        {
            return false;
        }
        while (length > 0)
        {
            ulong end = _regions[r].Gpa + _regions[r].Size;
            ulong chunk = Math.Min(length, end - gpa);
            segments.Add(new Segment(gpa, chunk, writable));
            count++;
            gpa += chunk;
            length -= chunk;
            if (length > 0)
            {
                r++;
                if (r == _regions.Length || _regions[r].Gpa != gpa)
                {
                    return false;
                }
            }
        }
        return true;
    }
}
