using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Xunit;

namespace Vhostfsd.Virtqueue.Tests;

/// <summary>Well-formed chains, the used ring, and notification decisions of the device side.</summary>
public unsafe class DeviceQueueTests : IDisposable
{
    private const ushort QueueSize = 8;
    private const ushort R = 0;
    private const ushort W = VirtqDesc.FlagWrite;
    private readonly QueueTestMemory _mem = QueueTestMemory.Create(1 << 20);
    private readonly QueueMockDriver _driver;
    private readonly DescriptorChain _chain = new(64);

    public DeviceQueueTests()
    {
        _driver = new QueueMockDriver(_mem, QueueSize);
    }

    public void Dispose()
    {
        _chain.Release();
        _mem.Dispose();
    }

    private VirtqDesc Filled(uint len, ushort flags, byte seed)
    {
        var d = new VirtqDesc(_driver.AllocBuffer(len), len, flags, 0);
        var bytes = new byte[len];
        for (int i = 0; i < bytes.Length; i++)
        {
            bytes[i] = (byte)(seed + i);
        }
        _mem.Write(d.Addr, bytes);
        return d;
    }

    private static byte[] Gather(ReadOnlySpan<IoVec> iov)
    {
        var result = new List<byte>();
        foreach (var v in iov)
        {
            result.AddRange(new ReadOnlySpan<byte>(v.Base, (int)v.Length).ToArray());
        }
        return result.ToArray();
    }

    [Theory]
    [InlineData(1, 0)]
    [InlineData(0, 1)]
    [InlineData(1, 1)]
    [InlineData(3, 2)]
    [InlineData(5, 3)]
    public void PopsReadableThenWritableSegmentsInOrder(int readable, int writable)
    {
        var queue = _driver.CreateDeviceQueue(eventIdx: false, indirect: false);
        var descs = new VirtqDesc[readable + writable];
        for (int i = 0; i < descs.Length; i++)
        {
            descs[i] = Filled((uint)(10 + i), i < readable ? R : W, (byte)(i * 40));
        }
        _driver.PushAvail(_driver.WriteChain(1, descs));
        Assert.True(queue.HasAvailable());
        Assert.Equal(PopResult.Popped, queue.TryPop(_chain));
        Assert.False(queue.HasAvailable());
        Assert.Equal(1, _chain.Head);
        Assert.Equal(ChainError.None, _chain.Error);
        Assert.Equal(readable, _chain.Readable.Length);
        Assert.Equal(writable, _chain.Writable.Length);
        Assert.Equal(descs.Length, _chain.DescriptorCount);
        Assert.False(_chain.IsIndirect);
        ulong rBytes = 0;
        ulong wBytes = 0;
        for (int i = 0; i < descs.Length; i++)
        {
            var seg = i < readable ? _chain.Readable[i] : _chain.Writable[i - readable];
            Assert.Equal((nuint)descs[i].Len, seg.Length);
            Assert.Equal(_mem.Host(descs[i].Addr, descs[i].Len), (nint)seg.Base);
            Assert.Equal((byte)(i * 40), *(byte*)seg.Base);
            if (i < readable)
            {
                rBytes += descs[i].Len;
            }
            else
            {
                wBytes += descs[i].Len;
            }
        }
        Assert.Equal(rBytes, _chain.ReadableBytes);
        Assert.Equal(wBytes, _chain.WritableBytes);
        Assert.Equal(PopResult.Empty, queue.TryPop(_chain));
        Assert.False(_chain.IsHeld);
    }

    [Fact]
    public void PopsChainsInAvailOrderAcrossTheRingWrap()
    {
        var queue = _driver.CreateDeviceQueue(eventIdx: false, indirect: false);
        for (ushort i = 0; i < QueueSize; i++)
        {
            _driver.WriteDesc(i, Filled(4, R, (byte)i));
        }
        // Start near the 16-bit wrap so both the ring slot and the index wrap.
        queue.NextAvail = 0xFFFC;
        _driver.AvailIdx = 0xFFFC;
        var order = new ushort[] { 5, 2, 7, 0, 1, 6, 3, 4 };
        foreach (ushort head in order)
        {
            _driver.PushAvail(head);
        }
        Assert.Equal(4, _driver.AvailIdx);
        foreach (ushort head in order)
        {
            Assert.Equal(PopResult.Popped, queue.TryPop(_chain));
            Assert.Equal(head, _chain.Head);
            Assert.Equal((byte)head, *(byte*)_chain.Readable[0].Base);
        }
        Assert.Equal(PopResult.Empty, queue.TryPop(_chain));
        Assert.Equal(4, queue.NextAvail);
    }

    [Fact]
    public void IndirectChainsArePresentedLikeDirectOnes()
    {
        var queue = _driver.CreateDeviceQueue(eventIdx: false, indirect: true);
        var ind = _driver.MakeIndirect([Filled(16, R, 1), Filled(16, R, 2), Filled(32, W, 3)]);
        // The WRITE flag of the descriptor pointing at a table is ignored (spec).
        ind.Flags |= VirtqDesc.FlagWrite;
        _driver.WriteDesc(2, ind);
        _driver.PushAvail(2);
        Assert.Equal(PopResult.Popped, queue.TryPop(_chain));
        Assert.True(_chain.IsIndirect);
        Assert.Equal(2, _chain.Head);
        Assert.Equal(2, _chain.Readable.Length);
        Assert.Equal(1, _chain.Writable.Length);
        Assert.Equal(32UL, _chain.ReadableBytes);
        Assert.Equal(32UL, _chain.WritableBytes);
        Assert.Equal(4, _chain.DescriptorCount);
        Assert.Equal(2, *(byte*)_chain.Readable[1].Base);
    }

    [Fact]
    public void DirectDescriptorsMayPrecedeTheIndirectOne()
    {
        var queue = _driver.CreateDeviceQueue(eventIdx: false, indirect: true);
        var ind = _driver.MakeIndirect([Filled(8, R, 20), Filled(8, W, 30)]);
        _driver.PushAvail(_driver.WriteChain(0, [Filled(8, R, 10), ind]));
        Assert.Equal(PopResult.Popped, queue.TryPop(_chain));
        Assert.Equal(2, _chain.Readable.Length);
        Assert.Equal(1, _chain.Writable.Length);
        Assert.Equal(10, *(byte*)_chain.Readable[0].Base);
        Assert.Equal(20, *(byte*)_chain.Readable[1].Base);
        Assert.Equal(30, *(byte*)_chain.Writable[0].Base);
    }

    [Fact]
    public void ZeroLengthBuffersAddNoSegment()
    {
        var queue = _driver.CreateDeviceQueue(eventIdx: false, indirect: false);
        _driver.PushAvail(_driver.WriteChain(0, [Filled(8, R, 1), new VirtqDesc(_driver.AllocBuffer(1), 0, R, 0), Filled(8, W, 2)]));
        Assert.Equal(PopResult.Popped, queue.TryPop(_chain));
        Assert.Equal(1, _chain.Readable.Length);
        Assert.Equal(1, _chain.Writable.Length);
        Assert.Equal(3, _chain.DescriptorCount);
    }

    [Fact]
    public void BufferSpanningAdjacentRegionsBecomesTwoSegments()
    {
        using var mem = QueueTestMemory.Create((0, 1 << 16), (1 << 16, 1 << 16));
        var driver = new QueueMockDriver(mem, QueueSize, 0, 1 << 16);
        var queue = driver.CreateDeviceQueue(eventIdx: false, indirect: false);
        mem.Write((1 << 16) - 4, [1, 2, 3, 4]);
        mem.Write(1 << 16, [5, 6, 7, 8]);
        driver.WriteDesc(0, new VirtqDesc((1 << 16) - 4, 8, R, 0));
        driver.PushAvail(0);
        Assert.Equal(PopResult.Popped, queue.TryPop(_chain));
        Assert.Equal(2, _chain.Readable.Length);
        Assert.Equal(new byte[] { 1, 2, 3, 4, 5, 6, 7, 8 }, Gather(_chain.Readable));
        Assert.Equal(8UL, _chain.ReadableBytes);
        _chain.Release();
    }

    [Fact]
    public void ChainKeepsARemovedRegionMappedUntilReleased()
    {
        using var mem = QueueTestMemory.Create((0, 1 << 16), (1 << 20, 1 << 16));
        var driver = new QueueMockDriver(mem, QueueSize, 0, 1 << 16);
        var queue = driver.CreateDeviceQueue(eventIdx: false, indirect: false);
        mem.Write(1 << 20, [42]);
        driver.WriteDesc(0, new VirtqDesc(1 << 20, 64, W, 0));
        driver.PushAvail(0);
        var region = mem.Memory.GetRegions()[1];
        Assert.Equal(PopResult.Popped, queue.TryPop(_chain));
        Assert.True(mem.Memory.RemoveRegion(1 << 20, 1 << 16));
        Assert.False(region.IsUnmapped);
        Assert.Equal(42, *(byte*)_chain.Writable[0].Base);
        *(byte*)_chain.Writable[0].Base = 43;
        _chain.Release();
        Assert.True(region.IsUnmapped);
        // The ring region stays pinned by the queue even when removed from the memory.
        var ringRegion = mem.Memory.GetRegions()[0];
        Assert.True(mem.Memory.RemoveRegion(0, 1 << 16));
        Assert.False(ringRegion.IsUnmapped);
        Assert.False(queue.HasAvailable());
        queue.Reset();
        Assert.True(ringRegion.IsUnmapped);
        Assert.False(queue.IsConfigured);
    }

    [Fact]
    public void PushUsedWritesElementsThenIndexAcrossTheWrap()
    {
        _driver.UsedIdx = 0xFFFE;
        var queue = _driver.CreateDeviceQueue(eventIdx: false, indirect: false);
        Assert.Equal(0xFFFE, queue.NextUsed);
        Assert.True(queue.PushUsed(3, 100));
        queue.PushUsed(7, 0);
        queue.PushUsed(1, uint.MaxValue);
        Assert.Equal(1, _driver.UsedIdx);
        Assert.Equal(1, queue.NextUsed);
        var e0 = _driver.UsedElem(0xFFFE);
        var e1 = _driver.UsedElem(0xFFFF);
        var e2 = _driver.UsedElem(0);
        Assert.Equal((3u, 100u), (e0.Id, e0.Len));
        Assert.Equal((7u, 0u), (e1.Id, e1.Len));
        Assert.Equal((1u, uint.MaxValue), (e2.Id, e2.Len));
        // Slots 6 and 7 of the 8-entry ring, then slot 0.
        Assert.Equal(3u, _mem.ReadObj<uint>(_driver.UsedGpa + 4 + 8 * 6));
        Assert.Equal(1u, _mem.ReadObj<uint>(_driver.UsedGpa + 4 + 8 * 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => queue.PushUsed(QueueSize, 0));
        // A completion after the queue was reset is dropped, not written.
        queue.Reset();
        Assert.False(queue.PushUsed(2, 1));
        Assert.Equal(1, _driver.UsedIdx);
    }

    [Fact]
    public void PushUsedFromManyThreadsLosesNothing()
    {
        using var mem = QueueTestMemory.Create(1 << 20);
        var driver = new QueueMockDriver(mem, 1024);
        var queue = driver.CreateDeviceQueue(eventIdx: true, indirect: false);
        var threads = new Thread[4];
        for (int t = 0; t < threads.Length; t++)
        {
            int id = t;
            threads[t] = new Thread(() =>
            {
                for (int i = 0; i < 256; i++)
                {
                    queue.PushUsed((ushort)(id * 256 + i), (uint)(id * 256 + i) * 3);
                    queue.NeedsNotification();
                }
            });
            threads[t].Start();
        }
        foreach (var t in threads)
        {
            t.Join();
        }
        Assert.Equal(1024, driver.UsedIdx);
        var seen = new bool[1024];
        for (ushort i = 0; i < 1024; i++)
        {
            var e = driver.UsedElem(i);
            Assert.Equal(e.Id * 3, e.Len);
            Assert.False(seen[e.Id]);
            seen[e.Id] = true;
        }
    }

    [Fact]
    public void WithoutEventIdxTheNoInterruptFlagDecides()
    {
        var queue = _driver.CreateDeviceQueue(eventIdx: false, indirect: false);
        queue.PushUsed(0, 1);
        Assert.True(queue.NeedsNotification());
        _driver.AvailFlags = VirtqRingHeader.AvailFlagNoInterrupt;
        queue.PushUsed(0, 1);
        Assert.False(queue.NeedsNotification());
        _driver.AvailFlags = 0;
        Assert.True(queue.NeedsNotification());
    }

    /// <summary>used_event decides, by vring_need_event, with 16-bit wrap-around.</summary>
    [Theory]
    // old, pushes, used_event, expected
    [InlineData(0, 1, 0, true)]           // the driver wants to hear about entry 0
    [InlineData(0, 1, 1, false)]          // ...about entry 1 only: not yet
    [InlineData(0, 4, 3, true)]           // passed in a batch
    [InlineData(0, 4, 4, false)]
    [InlineData(10, 2, 9, false)]         // event behind the batch: already told
    [InlineData(0xFFFE, 4, 0xFFFF, true)] // 0xFFFE -> 0x0002 passes 0xFFFF
    [InlineData(0xFFFE, 4, 0x0001, true)] // ...and 0x0001
    [InlineData(0xFFFE, 4, 0x0002, false)]
    [InlineData(0xFFFE, 4, 0xFFFD, false)]
    [InlineData(0xFFFF, 1, 0xFFFF, true)]
    public void WithEventIdxUsedEventDecides(int old, int pushes, int usedEvent, bool expected)
    {
        _driver.UsedIdx = (ushort)old;
        var queue = _driver.CreateDeviceQueue(eventIdx: true, indirect: false);
        // The first check after configuration always notifies, and records the index.
        Assert.True(queue.NeedsNotification());
        // Nothing new since: no notification whatever used_event says.
        _driver.UsedEvent = (ushort)old;
        Assert.False(queue.NeedsNotification());
        for (int i = 0; i < pushes; i++)
        {
            queue.PushUsed(0, 0);
        }
        _driver.UsedEvent = (ushort)usedEvent;
        // The flag is ignored with EVENT_IDX.
        _driver.AvailFlags = VirtqRingHeader.AvailFlagNoInterrupt;
        Assert.Equal(expected, queue.NeedsNotification());
        Assert.Equal(expected, SplitRing.NeedEvent((ushort)usedEvent, (ushort)(old + pushes), (ushort)old));
    }

    [Fact]
    public void NeedEventMatchesTheSpecFormulaEverywhere()
    {
        // The spec's definition, written out in ints: notify when event lies in [old, new) modulo 2^16.
        var rng = new Random(1234);
        for (int n = 0; n < 100_000; n++)
        {
            ushort old = (ushort)rng.Next(65536);
            ushort newIdx = (ushort)(old + rng.Next(0, 40));
            ushort ev = rng.Next(4) == 0 ? (ushort)rng.Next(65536) : (ushort)(old + rng.Next(-5, 45));
            int distance = (ev - old + 65536) % 65536;
            int moved = (newIdx - old + 65536) % 65536;
            Assert.Equal(distance < moved, SplitRing.NeedEvent(ev, newIdx, old));
        }
    }

    [Fact]
    public void KickSuppressionWithoutEventIdxUsesTheUsedFlag()
    {
        var queue = _driver.CreateDeviceQueue(eventIdx: false, indirect: false);
        Assert.Equal(0, _driver.UsedFlags);
        queue.DisableNotifications();
        Assert.Equal(VirtqRingHeader.UsedFlagNoNotify, _driver.UsedFlags);
        Assert.False(queue.EnableNotifications());
        Assert.Equal(0, _driver.UsedFlags);
        queue.DisableNotifications();
        _driver.WriteDesc(0, Filled(4, R, 0));
        _driver.PushAvail(0);
        Assert.True(queue.EnableNotifications());
        Assert.Equal(PopResult.Popped, queue.TryPop(_chain));
        Assert.False(queue.EnableNotifications());
    }

    [Fact]
    public void KickSuppressionWithEventIdxMovesAvailEvent()
    {
        var queue = _driver.CreateDeviceQueue(eventIdx: true, indirect: false);
        _driver.WriteDesc(0, Filled(4, R, 0));
        _driver.PushAvail(0);
        _driver.PushAvail(0);
        queue.DisableNotifications();
        // Disabled: avail_event one behind the next entry (0), so publishing it does not kick.
        Assert.Equal(0xFFFF, _driver.AvailEvent);
        Assert.False(SplitRing.NeedEvent(_driver.AvailEvent, 1, 0));
        Assert.Equal(PopResult.Popped, queue.TryPop(_chain));
        Assert.Equal(PopResult.Popped, queue.TryPop(_chain));
        // An empty pop leaves avail_event alone, and the flag is never used with EVENT_IDX.
        Assert.Equal(PopResult.Empty, queue.TryPop(_chain));
        Assert.Equal(0xFFFF, _driver.AvailEvent);
        Assert.Equal(0, _driver.UsedFlags);
        // Disabling again after popping two: one behind entry 2, and the driver publishing it does not kick.
        queue.DisableNotifications();
        Assert.Equal(1, _driver.AvailEvent);
        Assert.False(SplitRing.NeedEvent(_driver.AvailEvent, 3, 2));
        Assert.False(queue.EnableNotifications());
        Assert.Equal(2, _driver.AvailEvent);
        // The driver publishing entry 2 passes avail_event 2: it would kick.
        Assert.True(SplitRing.NeedEvent(_driver.AvailEvent, 3, 2));

        // Enabled: an empty pop re-arms avail_event at the next entry.
        _driver.PushAvail(0);
        Assert.Equal(PopResult.Popped, queue.TryPop(_chain));
        Assert.Equal(2, _driver.AvailEvent);
        Assert.Equal(PopResult.Empty, queue.TryPop(_chain));
        Assert.Equal(3, _driver.AvailEvent);
    }

    [Fact]
    public void ConfigureKeepsNextAvailAndReadsNextUsed()
    {
        _driver.UsedIdx = 77;
        var queue = new DeviceQueue(QueueSize);
        queue.NextAvail = 80;
        Assert.True(queue.TryConfigureUser(_mem.Memory, _driver.DescGpa + QueueTestMemory.UserOffset,
            _driver.AvailGpa + QueueTestMemory.UserOffset, _driver.UsedGpa + QueueTestMemory.UserOffset, false, false));
        Assert.Equal(80, queue.NextAvail);
        Assert.Equal(77, queue.NextUsed);
        Assert.True(queue.IsConfigured);
        queue.Reset();
        Assert.Equal(0, queue.NextAvail);
        Assert.Equal(PopResult.Empty, queue.TryPop(_chain));
        Assert.False(queue.NeedsNotification());
        Assert.False(queue.HasAvailable());

        // By guest-physical addresses, and with host pointers.
        Assert.True(queue.TryConfigureGuestPhys(_mem.Memory, _driver.DescGpa, _driver.AvailGpa, _driver.UsedGpa, false, false));
        queue.Configure(_mem.Memory, _mem.Host(_driver.DescGpa, 1), _mem.Host(_driver.AvailGpa, 1), _mem.Host(_driver.UsedGpa, 1), false, false);
        _driver.WriteDesc(0, Filled(4, R, 9));
        _driver.AvailIdx = 80;
        queue.NextAvail = 80;
        _driver.PushAvail(0);
        Assert.Equal(PopResult.Popped, queue.TryPop(_chain));
        Assert.Equal(9, *(byte*)_chain.Readable[0].Base);
    }

    [Fact]
    public void ConfigureRefusesRingsOutsideMemory()
    {
        var queue = new DeviceQueue(QueueSize);
        ulong u = QueueTestMemory.UserOffset;
        Assert.False(queue.TryConfigureUser(_mem.Memory, _driver.DescGpa, _driver.AvailGpa, _driver.UsedGpa, false, false));
        Assert.False(queue.TryConfigureUser(_mem.Memory, u + (1 << 20) - 64, u + _driver.AvailGpa, u + _driver.UsedGpa, false, false));
        Assert.False(queue.TryConfigureUser(_mem.Memory, u + _driver.DescGpa, u + _driver.AvailGpa, u + (1 << 20) - 8, false, false));
        Assert.False(queue.IsConfigured);
        Assert.Throws<ArgumentOutOfRangeException>(() => new DeviceQueue(3));
        Assert.Throws<ArgumentOutOfRangeException>(() => new DeviceQueue(0));
        Assert.Equal(SplitRing.MaxSize, new DeviceQueue(SplitRing.MaxSize).Size);
    }

    [Fact]
    public void PopAndPushDoNotAllocate()
    {
        using var mem = QueueTestMemory.Create((0, 1 << 20), (1 << 20, 1 << 20));
        var driver = new QueueMockDriver(mem, 256);
        var queue = driver.CreateDeviceQueue(eventIdx: true, indirect: true);
        queue.NeedsNotification();
        var ind = driver.MakeIndirect([new VirtqDesc(driver.AllocBuffer(64), 64, R, 0), new VirtqDesc((1 << 20) - 8, 16, W, 0)]);
        driver.WriteDesc(0, ind);
        driver.WriteChain(1, [new VirtqDesc(driver.AllocBuffer(64), 64, R, 0), new VirtqDesc(driver.AllocBuffer(64), 64, W, 0)]);
        int popped = 0;
        for (int round = 0; round < 2; round++)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < 5000; i++)
            {
                driver.PushAvail((ushort)(i & 1));
                if (queue.TryPop(_chain) == PopResult.Popped)
                {
                    popped++;
                }
                queue.PushUsed(_chain.Head, (uint)_chain.WritableBytes);
                _chain.Release();
                queue.NeedsNotification();
                queue.TryPop(_chain);
                queue.EnableNotifications();
            }
            long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            if (round == 1)
            {
                Assert.Equal(0, allocated);
            }
        }
        Assert.Equal(10_000, popped);
    }
}
