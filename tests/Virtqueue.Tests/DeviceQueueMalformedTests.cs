using Vhostfsd.Testing;
using Xunit;

namespace Vhostfsd.Virtqueue.Tests;

/// <summary>Every refused chain gets Malformed with its reason, and the queue carries on with the next one.</summary>
public class DeviceQueueMalformedTests : IDisposable
{
    private const ushort QueueSize = 16;
    private const ushort R = 0;
    private const ushort W = VirtqDesc.FlagWrite;
    private readonly QueueTestMemory _mem = QueueTestMemory.Create(1 << 20);
    private readonly QueueMockDriver _driver;
    private readonly DescriptorChain _chain = new(64);

    public DeviceQueueMalformedTests()
    {
        _driver = new QueueMockDriver(_mem, QueueSize);
    }

    public void Dispose()
    {
        _chain.Release();
        _mem.Dispose();
    }

    private VirtqDesc Buf(uint len, ushort flags) => new(_driver.AllocBuffer(len), len, flags, 0);

    /// <summary>Pops once expecting <paramref name="error"/>, then checks that a good chain still pops.</summary>
    private void AssertRefused(DeviceQueue queue, ChainError error, ushort expectedNextAvail)
    {
        Assert.Equal(PopResult.Malformed, queue.TryPop(_chain));
        Assert.Equal(error, _chain.Error);
        Assert.False(_chain.IsHeld);
        Assert.Equal(0, _chain.Readable.Length);
        Assert.Equal(0, _chain.Writable.Length);
        Assert.Equal(expectedNextAvail, queue.NextAvail);
    }

    private void AssertQueueStillWorks(DeviceQueue queue)
    {
        ushort head = _driver.WriteChain(QueueSize - 2, [Buf(8, R), Buf(8, W)]);
        _driver.PushAvail(head);
        Assert.Equal(PopResult.Popped, queue.TryPop(_chain));
        Assert.Equal(head, _chain.Head);
        Assert.Equal(ChainError.None, _chain.Error);
        Assert.Equal(PopResult.Empty, queue.TryPop(_chain));
    }

    [Fact]
    public void AvailIndexThatJumpedMoreThanTheSizeAheadIsRefusedWithoutConsuming()
    {
        var queue = _driver.CreateDeviceQueue(eventIdx: false, indirect: false);
        _driver.AvailIdx = QueueSize + 1;
        AssertRefused(queue, ChainError.AvailIndexJump, 0);
        AssertRefused(queue, ChainError.AvailIndexJump, 0);
        // Exactly Size ahead is legal (a full ring).
        _driver.AvailIdx = QueueSize;
        for (ushort i = 0; i < QueueSize; i++)
        {
            _driver.SetAvailEntry(i, 0);
        }
        _driver.WriteDesc(0, Buf(4, R));
        for (int i = 0; i < QueueSize; i++)
        {
            Assert.Equal(PopResult.Popped, queue.TryPop(_chain));
        }
        Assert.Equal(PopResult.Empty, queue.TryPop(_chain));
    }

    [Fact]
    public void AvailIndexJumpIsDetectedAcrossTheWrap()
    {
        var queue = _driver.CreateDeviceQueue(eventIdx: false, indirect: false);
        queue.NextAvail = 0xFFF8;
        _driver.AvailIdx = unchecked((ushort)(0xFFF8 + QueueSize + 1)); // wraps to 0x0009
        AssertRefused(queue, ChainError.AvailIndexJump, 0xFFF8);
    }

    [Fact]
    public void HeadOutOfRangeIsRefusedAndConsumed()
    {
        var queue = _driver.CreateDeviceQueue(eventIdx: false, indirect: false);
        _driver.PushAvail(QueueSize);
        AssertRefused(queue, ChainError.HeadOutOfRange, 1);
        Assert.Equal(QueueSize, _chain.Head);
        _driver.PushAvail(0xFFFF);
        AssertRefused(queue, ChainError.HeadOutOfRange, 2);
        AssertQueueStillWorks(queue);
    }

    [Fact]
    public void NextIndexOutOfRangeIsRefused()
    {
        var queue = _driver.CreateDeviceQueue(eventIdx: false, indirect: false);
        var d = Buf(8, R);
        d.Flags = VirtqDesc.FlagNext;
        d.Next = QueueSize;
        _driver.WriteDesc(3, d);
        _driver.PushAvail(3);
        AssertRefused(queue, ChainError.DescriptorIndexOutOfRange, 1);
        Assert.Equal(3, _chain.Head);
        AssertQueueStillWorks(queue);
    }

    [Fact]
    public void SelfLoopIsRefused()
    {
        var queue = _driver.CreateDeviceQueue(eventIdx: false, indirect: false);
        var d = Buf(8, R);
        d.Flags = VirtqDesc.FlagNext;
        d.Next = 5;
        _driver.WriteDesc(5, d);
        _driver.PushAvail(5);
        AssertRefused(queue, ChainError.ChainTooLong, 1);
        AssertQueueStillWorks(queue);
    }

    [Fact]
    public void LongLoopIsRefused()
    {
        var queue = _driver.CreateDeviceQueue(eventIdx: false, indirect: false);
        // 0 -> 1 -> ... -> 9 -> 2: a loop entered after two descriptors, all writable so no other rule fires first.
        for (ushort i = 0; i < 10; i++)
        {
            var d = Buf(1, W);
            d.Flags |= VirtqDesc.FlagNext;
            d.Next = i == 9 ? (ushort)2 : (ushort)(i + 1);
            _driver.WriteDesc(i, d);
        }
        _driver.PushAvail(0);
        AssertRefused(queue, ChainError.ChainTooLong, 1);
        AssertQueueStillWorks(queue);
    }

    [Fact]
    public void ChainUsingEveryDescriptorIsAcceptedButNotOneMore()
    {
        var queue = _driver.CreateDeviceQueue(eventIdx: false, indirect: false);
        var descs = new VirtqDesc[QueueSize];
        for (int i = 0; i < descs.Length; i++)
        {
            descs[i] = Buf(1, R);
        }
        _driver.PushAvail(_driver.WriteChain(0, descs));
        Assert.Equal(PopResult.Popped, queue.TryPop(_chain));
        Assert.Equal(QueueSize, _chain.DescriptorCount);
        // Now point the last one back at the first: a loop of exactly Size + 1 steps.
        var last = _driver.ReadDesc(QueueSize - 1);
        last.Flags |= VirtqDesc.FlagNext;
        last.Next = 0;
        _driver.WriteDesc(QueueSize - 1, last);
        _driver.PushAvail(0);
        AssertRefused(queue, ChainError.ChainTooLong, 2);
    }

    [Fact]
    public void IndirectWithoutNegotiationIsRefused()
    {
        var queue = _driver.CreateDeviceQueue(eventIdx: false, indirect: false);
        _driver.WriteDesc(0, _driver.MakeIndirect([Buf(8, R)]));
        _driver.PushAvail(0);
        AssertRefused(queue, ChainError.IndirectNotNegotiated, 1);
        AssertQueueStillWorks(queue);
    }

    [Fact]
    public void IndirectInsideIndirectIsRefused()
    {
        var queue = _driver.CreateDeviceQueue(eventIdx: false, indirect: true);
        var inner = _driver.MakeIndirect([Buf(8, R)]);
        _driver.WriteDesc(0, _driver.MakeIndirect([Buf(8, R), inner]));
        _driver.PushAvail(0);
        AssertRefused(queue, ChainError.NestedIndirect, 1);
        AssertQueueStillWorks(queue);
    }

    [Fact]
    public void IndirectWithNextIsRefused()
    {
        var queue = _driver.CreateDeviceQueue(eventIdx: false, indirect: true);
        var ind = _driver.MakeIndirect([Buf(8, R)]);
        ind.Flags |= VirtqDesc.FlagNext;
        ind.Next = 1;
        _driver.WriteDesc(0, ind);
        _driver.WriteDesc(1, Buf(8, W));
        _driver.PushAvail(0);
        AssertRefused(queue, ChainError.IndirectWithNext, 1);
        AssertQueueStillWorks(queue);
    }

    [Theory]
    [InlineData(0u)]
    [InlineData(8u)]
    [InlineData(17u)]
    [InlineData(33u)]
    public void IndirectLengthNotAPositiveMultipleOf16IsRefused(uint len)
    {
        var queue = _driver.CreateDeviceQueue(eventIdx: false, indirect: true);
        var ind = _driver.MakeIndirect([Buf(8, R), Buf(8, R), Buf(8, R)]);
        ind.Len = len;
        _driver.WriteDesc(0, ind);
        _driver.PushAvail(0);
        AssertRefused(queue, ChainError.IndirectLengthInvalid, 1);
        AssertQueueStillWorks(queue);
    }

    [Fact]
    public void IndirectTableLongerThanTheLimitIsRefused()
    {
        var queue = _driver.CreateDeviceQueue(eventIdx: false, indirect: true);
        Assert.Equal(QueueSize, queue.MaxIndirectEntries);
        var table = new VirtqDesc[QueueSize + 1];
        for (int i = 0; i < table.Length; i++)
        {
            table[i] = Buf(1, R);
        }
        _driver.WriteDesc(0, _driver.MakeIndirect(table));
        _driver.PushAvail(0);
        AssertRefused(queue, ChainError.IndirectTableTooLong, 1);

        // The same table within a raised limit is fine.
        queue.MaxIndirectEntries = QueueSize + 1;
        _driver.PushAvail(0);
        Assert.Equal(PopResult.Popped, queue.TryPop(_chain));
        Assert.Equal(QueueSize + 1, _chain.Readable.Length);
        // A table that claims a huge length is refused before anything is read.
        var huge = _driver.MakeIndirect([Buf(1, R)]);
        huge.Len = 65536 * 16;
        _driver.WriteDesc(0, huge);
        _driver.PushAvail(0);
        AssertRefused(queue, ChainError.IndirectTableTooLong, 3);
    }

    [Fact]
    public void IndexOutOfRangeInsideAnIndirectTableIsRefused()
    {
        var queue = _driver.CreateDeviceQueue(eventIdx: false, indirect: true);
        var ind = _driver.MakeIndirect([Buf(8, R), Buf(8, R)]);
        // Entry 1 (the last) now says NEXT -> 2, past the 2-entry table (though < queue size).
        var entry1 = _mem.ReadObj<VirtqDesc>(ind.Addr + 16);
        entry1.Flags |= VirtqDesc.FlagNext;
        entry1.Next = 2;
        _mem.WriteObj(ind.Addr + 16, entry1);
        _driver.WriteDesc(0, ind);
        _driver.PushAvail(0);
        AssertRefused(queue, ChainError.DescriptorIndexOutOfRange, 1);
        AssertQueueStillWorks(queue);
    }

    [Fact]
    public void LoopInsideAnIndirectTableIsRefused()
    {
        var queue = _driver.CreateDeviceQueue(eventIdx: false, indirect: true);
        var ind = _driver.MakeIndirect([Buf(8, R), Buf(8, R), Buf(8, R)]);
        var entry2 = _mem.ReadObj<VirtqDesc>(ind.Addr + 32);
        entry2.Flags |= VirtqDesc.FlagNext;
        entry2.Next = 0;
        _mem.WriteObj(ind.Addr + 32, entry2);
        _driver.WriteDesc(0, ind);
        _driver.PushAvail(0);
        AssertRefused(queue, ChainError.ChainTooLong, 1);
        AssertQueueStillWorks(queue);
    }

    [Fact]
    public void IndirectTableOutsideMemoryIsRefused()
    {
        var queue = _driver.CreateDeviceQueue(eventIdx: false, indirect: true);
        _driver.WriteDesc(0, new VirtqDesc(2 << 20, 32, VirtqDesc.FlagIndirect, 0));
        _driver.PushAvail(0);
        AssertRefused(queue, ChainError.AddressOutOfRange, 1);
        // Straddling the end of memory.
        _driver.WriteDesc(0, new VirtqDesc((1 << 20) - 16, 32, VirtqDesc.FlagIndirect, 0));
        _driver.PushAvail(0);
        AssertRefused(queue, ChainError.AddressOutOfRange, 2);
        AssertQueueStillWorks(queue);
    }

    [Fact]
    public void ReadableAfterWritableIsRefused()
    {
        var queue = _driver.CreateDeviceQueue(eventIdx: false, indirect: true);
        _driver.PushAvail(_driver.WriteChain(0, [Buf(8, R), Buf(8, W), Buf(8, R)]));
        AssertRefused(queue, ChainError.ReadableAfterWritable, 1);
        // Also across the step into an indirect table: direct writable, then indirect readable.
        var ind = _driver.MakeIndirect([Buf(8, R)]);
        _driver.PushAvail(_driver.WriteChain(4, [Buf(8, W), ind]));
        AssertRefused(queue, ChainError.ReadableAfterWritable, 2);
        AssertQueueStillWorks(queue);
    }

    [Theory]
    [InlineData(1UL << 20, 8u)]                 // just past the end of memory
    [InlineData((1UL << 20) - 4, 8u)]           // straddles the end
    [InlineData(ulong.MaxValue - 3, 8u)]        // address + length overflows
    [InlineData(0x7000_0000_0000UL, 1u)]        // far away (a user address, not a guest-physical one)
    public void BufferOutsideMemoryIsRefused(ulong addr, uint len)
    {
        var queue = _driver.CreateDeviceQueue(eventIdx: false, indirect: false);
        _driver.PushAvail(_driver.WriteChain(0, [Buf(8, R), new VirtqDesc(addr, len, W, 0)]));
        AssertRefused(queue, ChainError.AddressOutOfRange, 1);
        Assert.Equal(0, _chain.Head);
        AssertQueueStillWorks(queue);
    }

    [Fact]
    public void BufferInAGapBetweenRegionsIsRefused()
    {
        using var mem = QueueTestMemory.Create((0, 1 << 16), (2 << 16, 1 << 16));
        var driver = new QueueMockDriver(mem, QueueSize, 0, 1 << 16);
        var queue = driver.CreateDeviceQueue(eventIdx: false, indirect: false);
        driver.WriteDesc(0, new VirtqDesc((1 << 16) - 8, 16, R, 0));
        driver.PushAvail(0);
        Assert.Equal(PopResult.Malformed, queue.TryPop(_chain));
        Assert.Equal(ChainError.AddressOutOfRange, _chain.Error);
        driver.WriteDesc(0, new VirtqDesc(1 << 16, 1, R, 0));
        driver.PushAvail(0);
        Assert.Equal(PopResult.Malformed, queue.TryPop(_chain));
        Assert.Equal(ChainError.AddressOutOfRange, _chain.Error);
    }

    [Fact]
    public void TotalLengthOver4GiBIsRefused()
    {
        // A sparse 5 GiB memfd: the lengths are real, the pages are never touched.
        using var mem = QueueTestMemory.Create(5UL << 30);
        var driver = new QueueMockDriver(mem, QueueSize);
        var queue = driver.CreateDeviceQueue(eventIdx: false, indirect: false);
        const ulong big = 1UL << 30;
        driver.PushAvail(driver.WriteChain(0, [new VirtqDesc(big, 3u << 30, R, 0), new VirtqDesc(big, 3u << 30, W, 0)]));
        Assert.Equal(PopResult.Malformed, queue.TryPop(_chain));
        Assert.Equal(ChainError.TotalLengthTooLarge, _chain.Error);

        driver.PushAvail(driver.WriteChain(2, [new VirtqDesc(big, uint.MaxValue, W, 0), new VirtqDesc(big, 1, W, 0)]));
        Assert.Equal(PopResult.Malformed, queue.TryPop(_chain));
        Assert.Equal(ChainError.TotalLengthTooLarge, _chain.Error);

        // Exactly 4 GiB - 1 is fine.
        driver.PushAvail(driver.WriteChain(4, [new VirtqDesc(big, uint.MaxValue - 1, R, 0), new VirtqDesc(big, 1, W, 0)]));
        Assert.Equal(PopResult.Popped, queue.TryPop(_chain));
        Assert.Equal((ulong)uint.MaxValue - 1, _chain.ReadableBytes);
        Assert.Equal(1UL, _chain.WritableBytes);
        _chain.Release();
    }

    [Fact]
    public void ChainWithMoreSegmentsThanTheChainObjectHoldsIsRefused()
    {
        var queue = _driver.CreateDeviceQueue(eventIdx: false, indirect: false);
        var small = new DescriptorChain(3);
        _driver.PushAvail(_driver.WriteChain(0, [Buf(1, R), Buf(1, R), Buf(1, W), Buf(1, W)]));
        Assert.Equal(PopResult.Malformed, queue.TryPop(small));
        Assert.Equal(ChainError.TooManySegments, small.Error);
        _driver.PushAvail(_driver.WriteChain(0, [Buf(1, R), Buf(1, R), Buf(1, W)]));
        Assert.Equal(PopResult.Popped, queue.TryPop(small));
        small.Release();
    }

    [Fact]
    public void MalformedChainsKeepTheirHeadSoTheyCanBeReturned()
    {
        var queue = _driver.CreateDeviceQueue(eventIdx: false, indirect: false);
        _driver.PushAvail(_driver.WriteChain(7, [Buf(8, W), Buf(8, R)]));
        AssertRefused(queue, ChainError.ReadableAfterWritable, 1);
        Assert.Equal(7, _chain.Head);
        queue.PushUsed(_chain.Head, 0);
        Assert.Equal(1, _driver.UsedIdx);
        Assert.Equal(7u, _driver.UsedElem(0).Id);
        Assert.Equal(0u, _driver.UsedElem(0).Len);
    }
}
