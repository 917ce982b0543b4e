using Vhostfsd.Virtqueue;

namespace Vhostfsd.VhostUser;

/// <summary>What SET_VRING_ADDR must satisfy before a ring may use the addresses: known flags, the
/// split ring's alignments (virtio 1.x 2.7), and all three rings, at the ring's size, inside guest
/// memory as VMM user addresses. Checked apart from <see cref="Vring"/>, which only stores what passed.</summary>
public static class VringAddressRules
{
    /// <summary>Null when <paramref name="address"/> is acceptable for ring <paramref name="index"/>
    /// of <paramref name="size"/> entries in <paramref name="memory"/>; else why not.</summary>
    public static string? Check(int index, in VringAddress address, ushort size, GuestMemory memory)
    {
        if ((address.Flags & ~VhostUserLimits.VringAddrFlagLog) != 0)
        {
            return $"vring {index} address flags 0x{address.Flags:x} unknown";
        }
        if ((address.DescriptorTable & (SplitRing.DescAlign - 1)) != 0
            || (address.AvailableRing & (SplitRing.AvailAlign - 1)) != 0
            || (address.UsedRing & (SplitRing.UsedAlign - 1)) != 0)
        {
            return $"vring {index} rings misaligned (desc 0x{address.DescriptorTable:x}, avail 0x{address.AvailableRing:x}, used 0x{address.UsedRing:x})";
        }
        using var view = memory.Acquire();
        if (!view.TryTranslateUser(address.DescriptorTable, SplitRing.DescTableBytes(size), out _))
        {
            return $"vring {index} descriptor table 0x{address.DescriptorTable:x} (+{SplitRing.DescTableBytes(size)}) is outside guest memory";
        }
        if (!view.TryTranslateUser(address.AvailableRing, SplitRing.AvailRingBytes(size), out _))
        {
            return $"vring {index} avail ring 0x{address.AvailableRing:x} (+{SplitRing.AvailRingBytes(size)}) is outside guest memory";
        }
        if (!view.TryTranslateUser(address.UsedRing, SplitRing.UsedRingBytes(size), out _))
        {
            return $"vring {index} used ring 0x{address.UsedRing:x} (+{SplitRing.UsedRingBytes(size)}) is outside guest memory";
        }
        return null;
    }
}
