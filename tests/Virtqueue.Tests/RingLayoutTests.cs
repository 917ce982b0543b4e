using System.Runtime.InteropServices;
using Xunit;

namespace Vhostfsd.Virtqueue.Tests;

public unsafe class RingLayoutTests
{
    [Fact]
    public void WireStructsHaveSpecSizesAndOffsets()
    {
        Assert.Equal(VirtqDesc.Size, sizeof(VirtqDesc));
        Assert.Equal(16, VirtqDesc.Size);
        Assert.Equal(0, (int)Marshal.OffsetOf<VirtqDesc>(nameof(VirtqDesc.Addr)));
        Assert.Equal(8, (int)Marshal.OffsetOf<VirtqDesc>(nameof(VirtqDesc.Len)));
        Assert.Equal(12, (int)Marshal.OffsetOf<VirtqDesc>(nameof(VirtqDesc.Flags)));
        Assert.Equal(14, (int)Marshal.OffsetOf<VirtqDesc>(nameof(VirtqDesc.Next)));

        Assert.Equal(VirtqUsedElem.Size, sizeof(VirtqUsedElem));
        Assert.Equal(8, VirtqUsedElem.Size);
        Assert.Equal(0, (int)Marshal.OffsetOf<VirtqUsedElem>(nameof(VirtqUsedElem.Id)));
        Assert.Equal(4, (int)Marshal.OffsetOf<VirtqUsedElem>(nameof(VirtqUsedElem.Len)));

        Assert.Equal(VirtqRingHeader.Size, sizeof(VirtqRingHeader));
        Assert.Equal(4, VirtqRingHeader.Size);
        Assert.Equal(0, (int)Marshal.OffsetOf<VirtqRingHeader>(nameof(VirtqRingHeader.Flags)));
        Assert.Equal(2, (int)Marshal.OffsetOf<VirtqRingHeader>(nameof(VirtqRingHeader.Idx)));
    }

    [Fact]
    public void FlagValuesMatchTheSpec()
    {
        Assert.Equal(1, VirtqDesc.FlagNext);
        Assert.Equal(2, VirtqDesc.FlagWrite);
        Assert.Equal(4, VirtqDesc.FlagIndirect);
        Assert.Equal(1, VirtqRingHeader.AvailFlagNoInterrupt);
        Assert.Equal(1, VirtqRingHeader.UsedFlagNoNotify);
        Assert.Equal(28, SplitRing.FeatureIndirectDesc);
        Assert.Equal(29, SplitRing.FeatureEventIdx);
    }

    [Theory]
    [InlineData(1, 16UL, 8UL, 14UL)]
    [InlineData(128, 2048UL, 262UL, 1030UL)]
    [InlineData(32768, 524288UL, 65542UL, 262150UL)]
    public void RingPartSizes(int size, ulong desc, ulong avail, ulong used)
    {
        Assert.Equal(desc, SplitRing.DescTableBytes((ushort)size));
        Assert.Equal(avail, SplitRing.AvailRingBytes((ushort)size));
        Assert.Equal(used, SplitRing.UsedRingBytes((ushort)size));
    }

    [Fact]
    public void LayoutAlignsEachPart()
    {
        // size 1: desc 16 bytes at 0x1000, avail 8 bytes at 0x1010, used at 0x1018 (4-aligned), 14 bytes.
        ulong total = SplitRing.Layout(1, 0x1000, out ulong desc, out ulong avail, out ulong used);
        Assert.Equal((0x1000UL, 0x1010UL, 0x1018UL), (desc, avail, used));
        Assert.Equal(0x18UL + 14, total);
        // size 2: avail is 10 bytes (0x1020..0x102a), so used rounds up from 0x102a to 0x102c.
        SplitRing.Layout(2, 0x1000, out _, out avail, out used);
        Assert.Equal(0x1020UL, avail);
        Assert.Equal(0x102cUL, used);
        Assert.Equal(0UL, used % SplitRing.UsedAlign);
        Assert.Throws<ArgumentException>(() => SplitRing.Layout(8, 0x1008, out _, out _, out _));
        Assert.Throws<ArgumentOutOfRangeException>(() => SplitRing.Layout(6, 0x1000, out _, out _, out _));
    }

    [Theory]
    [InlineData(0, false)]
    [InlineData(1, true)]
    [InlineData(2, true)]
    [InlineData(3, false)]
    [InlineData(256, true)]
    [InlineData(1000, false)]
    [InlineData(32768, true)]
    [InlineData(65536, false)]
    public void QueueSizesArePowersOfTwoUpTo32768(int size, bool valid)
    {
        Assert.Equal(valid, SplitRing.IsValidSize(size));
    }
}
