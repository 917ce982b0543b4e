using Vhostfsd.Testing;
using Xunit;

namespace Vhostfsd.Virtqueue.Tests;

public unsafe class DriverQueueTests : IDisposable
{
    private const ushort QueueSize = 8;
    private readonly QueueTestMemory _mem = QueueTestMemory.Create(1 << 20);
    private readonly QueueMockDriver _rings; // used only for its layout and to read the rings back
    private readonly DescriptorChain _chain = new(64);

    public DriverQueueTests()
    {
        _rings = new QueueMockDriver(_mem, QueueSize, 0x1000);
    }

    public void Dispose()
    {
        _chain.Release();
        _mem.Dispose();
    }

    private DriverQueue NewDriver(bool eventIdx, bool indirect = false)
        => new(_mem.Memory, QueueSize, _rings.DescGpa, _rings.AvailGpa, _rings.UsedGpa, eventIdx, indirect);

    private DeviceQueue NewDevice(bool eventIdx, bool indirect = false)
    {
        var device = new DeviceQueue(QueueSize);
        Assert.True(device.TryConfigureGuestPhys(_mem.Memory, _rings.DescGpa, _rings.AvailGpa, _rings.UsedGpa, eventIdx, indirect));
        return device;
    }

    [Fact]
    public void AddWritesLinkedDescriptorsAndPublishes()
    {
        using var driver = NewDriver(eventIdx: false);
        Assert.Equal(QueueSize, driver.FreeDescriptors);
        int head = driver.TryAdd([(0x8000, 10), (0x9000, 20)], [(0xA000, 30)]);
        Assert.Equal(0, head);
        Assert.Equal(QueueSize - 3, driver.FreeDescriptors);
        Assert.Equal(1, driver.InFlight);
        var d0 = _rings.ReadDesc(0);
        var d1 = _rings.ReadDesc(1);
        var d2 = _rings.ReadDesc(2);
        Assert.Equal((0x8000UL, 10u, VirtqDesc.FlagNext, (ushort)1), (d0.Addr, d0.Len, d0.Flags, d0.Next));
        Assert.Equal((0x9000UL, 20u, VirtqDesc.FlagNext, (ushort)2), (d1.Addr, d1.Len, d1.Flags, d1.Next));
        Assert.Equal((0xA000UL, 30u, VirtqDesc.FlagWrite), (d2.Addr, d2.Len, d2.Flags));
        // Not visible until published.
        Assert.Equal(0, _rings.AvailIdx);
        Assert.True(driver.PublishAndCheckKick());
        Assert.Equal(1, _rings.AvailIdx);
        Assert.Equal(0, _mem.ReadObj<ushort>(_rings.AvailGpa + 4));
        Assert.False(driver.PublishAndCheckKick());
    }

    [Fact]
    public void RefusesWhenDescriptorsRunOutAndReapFreesThem()
    {
        using var driver = NewDriver(eventIdx: false);
        var device = NewDevice(eventIdx: false);
        Assert.Equal(0, driver.TryAdd([(0x8000, 1), (0x8000, 1), (0x8000, 1)], []));
        Assert.Equal(3, driver.TryAdd([(0x8000, 1), (0x8000, 1), (0x8000, 1)], []));
        Assert.Equal(-1, driver.TryAdd([(0x8000, 1), (0x8000, 1), (0x8000, 1)], []));
        Assert.Equal(6, driver.TryAdd([(0x8000, 1)], [(0x8000, 1)]));
        Assert.Equal(0, driver.FreeDescriptors);
        Assert.Equal(-1, driver.TryAdd([(0x8000, 1)], []));
        driver.PublishAndCheckKick();

        Assert.False(driver.TryReapUsed(out _, out _));
        Assert.Equal(PopResult.Popped, device.TryPop(_chain));
        Assert.Equal(PopResult.Popped, device.TryPop(_chain));
        Assert.Equal(3, _chain.Head);
        device.PushUsed(3, 5);
        Assert.True(driver.HasUsed());
        Assert.True(driver.TryReapUsed(out ushort head, out uint len));
        Assert.Equal((3, 5u), (head, len));
        Assert.Equal(3, driver.FreeDescriptors);
        Assert.Equal(2, driver.InFlight);
        // The freed run is reused as a whole.
        Assert.Equal(3, driver.TryAdd([(0x8000, 1), (0x8000, 1)], [(0x8000, 1)]));
        Assert.Equal(0, driver.FreeDescriptors);
        Assert.Throws<ArgumentException>(() => driver.TryAdd([], []));
    }

    [Fact]
    public void KickDecisionWithoutEventIdxFollowsTheNoNotifyFlag()
    {
        using var driver = NewDriver(eventIdx: false);
        var device = NewDevice(eventIdx: false);
        driver.TryAdd([(0x8000, 1)], []);
        Assert.True(driver.PublishAndCheckKick());
        device.DisableNotifications();
        driver.TryAdd([(0x8000, 1)], []);
        Assert.False(driver.PublishAndCheckKick());
        Assert.True(device.EnableNotifications());
        driver.TryAdd([(0x8000, 1)], []);
        Assert.True(driver.PublishAndCheckKick());
    }

    [Fact]
    public void KickDecisionWithEventIdxFollowsAvailEvent()
    {
        using var driver = NewDriver(eventIdx: true);
        var device = NewDevice(eventIdx: true);
        // avail_event starts at 0: publishing entry 0 kicks.
        driver.TryAdd([(0x8000, 1)], []);
        Assert.True(driver.PublishAndCheckKick());
        // The device has not moved avail_event: entry 1 does not kick.
        driver.TryAdd([(0x8000, 1)], []);
        Assert.False(driver.PublishAndCheckKick());
        // The device drains and re-arms at 2: the next publish kicks, one more does not.
        device.DisableNotifications();
        Assert.Equal(PopResult.Popped, device.TryPop(_chain));
        Assert.Equal(PopResult.Popped, device.TryPop(_chain));
        Assert.False(device.EnableNotifications());
        Assert.Equal(2, _rings.AvailEvent);
        driver.TryAdd([(0x8000, 1)], []);
        driver.TryAdd([(0x8000, 1)], []);
        Assert.True(driver.PublishAndCheckKick());   // 2 -> 4 passes 2
        driver.TryAdd([(0x8000, 1)], []);
        Assert.False(driver.PublishAndCheckKick());
    }

    [Fact]
    public void CallbackSuppression()
    {
        using (var driver = NewDriver(eventIdx: false))
        {
            driver.DisableCallbacks();
            Assert.Equal(VirtqRingHeader.AvailFlagNoInterrupt, _rings.AvailFlags);
            Assert.False(driver.EnableCallbacks());
            Assert.Equal(0, _rings.AvailFlags);
        }
        using (var driver = NewDriver(eventIdx: true))
        {
            var device = NewDevice(eventIdx: true);
            device.NeedsNotification(); // the first check always says yes; start from a recorded state
            driver.TryAdd([(0x8000, 1)], []);
            driver.TryAdd([(0x8000, 1)], []);
            driver.PublishAndCheckKick();
            Assert.Equal(PopResult.Popped, device.TryPop(_chain));
            device.PushUsed(_chain.Head, 0);
            // used_event is 0 (zeroed rings): the device signals for entry 0.
            Assert.True(device.NeedsNotification());
            Assert.True(driver.TryReapUsed(out _, out _));
            // An empty reap with callbacks enabled re-arms used_event at 1.
            Assert.False(driver.TryReapUsed(out _, out _));
            Assert.Equal(1, _rings.UsedEvent);
            driver.DisableCallbacks();
            Assert.Equal(PopResult.Popped, device.TryPop(_chain));
            device.PushUsed(_chain.Head, 0);
            Assert.True(device.NeedsNotification()); // passes 1: the one notification that may still come
            Assert.True(driver.EnableCallbacks());   // something is waiting
            Assert.True(driver.TryReapUsed(out _, out _));
            Assert.Equal(0, driver.InFlight);
        }
    }

    [Fact]
    public void DeviceThatReturnsAHeadNotInFlightIsCaught()
    {
        using var driver = NewDriver(eventIdx: false);
        driver.TryAdd([(0x8000, 1), (0x8000, 1)], []);
        driver.PublishAndCheckKick();
        _mem.WriteObj(_rings.UsedGpa + 4, new VirtqUsedElem { Id = 1, Len = 0 }); // 1 is inside head 0's chain
        _rings.UsedIdx = 1;
        Assert.Throws<InvalidDataException>(() => driver.TryReapUsed(out _, out _));
        _mem.WriteObj(_rings.UsedGpa + 4, new VirtqUsedElem { Id = 99, Len = 0 });
        Assert.Throws<InvalidDataException>(() => driver.TryReapUsed(out _, out _));
        _rings.UsedIdx = 2; // more used than in flight
        Assert.Throws<InvalidDataException>(() => driver.TryReapUsed(out _, out _));
    }

    [Fact]
    public void IndirectChainsTakeOneDescriptor()
    {
        using var driver = NewDriver(eventIdx: false, indirect: true);
        var device = NewDevice(eventIdx: false, indirect: true);
        ulong area = 0x40000;
        driver.SetIndirectArea(_mem.Memory, area, 4);
        _mem.Write(0x8000, [1, 2, 3]);
        int head = driver.TryAdd([(0x8000, 3), (0x8100, 5)], [(0x9000, 7), (0x9100, 9)]);
        Assert.Equal(QueueSize - 1, driver.FreeDescriptors);
        // One buffer, or more than a table holds, goes direct.
        Assert.Equal(1, driver.TryAdd([(0x8000, 1)], []));
        Assert.Equal(2, driver.TryAdd([(0x8000, 1), (0x8000, 1), (0x8000, 1)], [(0x8000, 1), (0x8000, 1)]));
        Assert.Equal(QueueSize - 7, driver.FreeDescriptors);
        driver.PublishAndCheckKick();

        Assert.Equal(PopResult.Popped, device.TryPop(_chain));
        Assert.Equal(head, _chain.Head);
        Assert.True(_chain.IsIndirect);
        Assert.Equal(2, _chain.Readable.Length);
        Assert.Equal(2, _chain.Writable.Length);
        Assert.Equal(8UL, _chain.ReadableBytes);
        Assert.Equal(16UL, _chain.WritableBytes);
        Assert.Equal(1, ((byte*)_chain.Readable[0].Base)[0]);
        Assert.Equal(PopResult.Popped, device.TryPop(_chain));
        Assert.False(_chain.IsIndirect);
        Assert.Equal(PopResult.Popped, device.TryPop(_chain));
        Assert.Equal(5, _chain.DescriptorCount);
        device.PushUsed((ushort)head, 16);
        Assert.True(driver.TryReapUsed(out ushort reaped, out uint len));
        Assert.Equal((head, 16u), (reaped, len));
        Assert.Equal(QueueSize - 6, driver.FreeDescriptors);
    }

    [Fact]
    public void IndirectAreaNeedsTheFeatureAndMemory()
    {
        using var plain = NewDriver(eventIdx: false);
        Assert.Throws<InvalidOperationException>(() => plain.SetIndirectArea(_mem.Memory, 0x40000, 4));
        using var driver = NewDriver(eventIdx: false, indirect: true);
        Assert.Throws<ArgumentException>(() => driver.SetIndirectArea(_mem.Memory, (1 << 20) - 64, 4));
    }

    [Fact]
    public void RingsMustLieInGuestMemory()
    {
        Assert.Throws<ArgumentException>(() => new DriverQueue(_mem.Memory, QueueSize, 2 << 20, _rings.AvailGpa, _rings.UsedGpa, false, false));
        Assert.Throws<ArgumentOutOfRangeException>(() => new DriverQueue(_mem.Memory, 12, _rings.DescGpa, _rings.AvailGpa, _rings.UsedGpa, false, false));
    }
}
