using Vhostfsd.Logging;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Vhostfsd.VhostUser;
using Vhostfsd.Virtqueue;
using Xunit;

namespace Vhostfsd.VhostUser.Tests;

/// <summary>The back-end state machine, one message at a time over a socketpair, with a recording device.</summary>
public sealed class BackendMessageTests : IDisposable
{
    private readonly VhostUserTestDevice _device;
    private readonly VhostUserBackendHarness _h;
    private VhostUserTestGuest? _guest;

    public BackendMessageTests()
    {
        _device = new VhostUserTestDevice(queueCount: 2, maxQueueSize: 1024);
        _h = new VhostUserBackendHarness(_device);
    }

    public void Dispose()
    {
        _h.Dispose();
        _guest?.Dispose();
    }

    private VhostUserFrontend F => _h.Frontend;
    private VhostUserBackend B => _h.Backend;

    /// <summary>Negotiates features; REPLY_ACK on by default so every message is checked.</summary>
    private void Negotiate(bool replyAck = true, bool protocolFeaturesBit = true,
        VhostUserProtocolFeatures protocol = VhostUserBackend.ImplementedProtocolFeatures | VhostUserProtocolFeatures.Config)
    {
        ulong features = F.GetFeatures();
        if (!replyAck)
        {
            protocol &= ~VhostUserProtocolFeatures.ReplyAck;
        }
        F.SetProtocolFeatures(protocol);
        F.SetFeatures(VirtioFeatures.Version1 | VirtioFeatures.RingEventIdx | (protocolFeaturesBit ? VirtioFeatures.ProtocolFeatures : 0));
        Assert.NotEqual(0UL, features);
    }

    private VhostUserTestGuest Guest(ushort queueSize = 64)
        => _guest ??= new VhostUserTestGuest(queueCount: 2, queueSize: queueSize);

    private void SendMemory()
    {
        F.SetMemTable([.. Guest().MemoryRegions]);
    }

    private void SetupRing(int q, bool kick = true)
    {
        var g = Guest();
        var s = g.Setups[q];
        F.SetVringNum(s.Index, s.Size);
        F.SetVringBase(s.Index, 0);
        F.SetVringAddr(new VringAddress { Index = s.Index, DescriptorTable = s.DescUserAddr, AvailableRing = s.AvailUserAddr, UsedRing = s.UsedUserAddr });
        F.SetVringCall(s.Index, s.CallFd);
        if (kick)
        {
            F.SetVringKick(s.Index, s.KickFd);
        }
    }

    private static ulong ReadAck(VhostUserChannel channel, VhostUserRequest request)
    {
        var reply = new VhostUserMessage();
        channel.ReceiveReply(reply, (uint)request);
        Assert.Equal(8, reply.Payload.Length);
        return reply.Read<ulong>();
    }

    private static void WaitUntil(Func<bool> condition, string what)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (!condition())
        {
            if (DateTime.UtcNow > deadline)
            {
                Assert.Fail("timed out waiting until " + what);
            }
            Thread.Sleep(5);
        }
    }

    // ---- features ----

    [Fact]
    public void GetFeaturesOffersTheTransportBitsAndNoOthers()
    {
        ulong features = F.GetFeatures();
        Assert.Equal(VirtioFeatures.Version1 | VirtioFeatures.RingEventIdx | VirtioFeatures.RingIndirectDesc
            | VirtioFeatures.NotifyOnEmpty | VirtioFeatures.ProtocolFeatures, features);
    }

    [Fact]
    public void GetProtocolFeaturesOffersWhatIsImplemented()
    {
        var offered = F.GetProtocolFeatures();
        Assert.Equal(VhostUserProtocolFeatures.Mq | VhostUserProtocolFeatures.ReplyAck | VhostUserProtocolFeatures.BackendReq
            | VhostUserProtocolFeatures.ConfigureMemSlots | VhostUserProtocolFeatures.Status | VhostUserProtocolFeatures.ResetDevice
            | VhostUserProtocolFeatures.Config, offered);
        Assert.Equal(0UL, (ulong)(offered & (VhostUserProtocolFeatures.LogShmfd | VhostUserProtocolFeatures.InflightShmfd
            | VhostUserProtocolFeatures.Pagefault | VhostUserProtocolFeatures.HostNotifier | VhostUserProtocolFeatures.DeviceState)));
    }

    [Fact]
    public void ConfigIsOfferedOnlyWhenTheDeviceOffersIt()
    {
        using var h = new VhostUserBackendHarness(new VhostUserTestDevice(tag: null));
        Assert.Equal(0UL, (ulong)(h.Frontend.GetProtocolFeatures() & VhostUserProtocolFeatures.Config));
    }

    [Fact]
    public void SetFeaturesWithUnofferedBitsIsRefusedAndChangesNothing()
    {
        Negotiate();
        ulong before = B.AckedFeatures;
        var e = Assert.Throws<VhostUserRequestFailedException>(() => F.SetFeatures(VirtioFeatures.Version1 | VirtioFeatures.LogAll));
        Assert.Equal(VhostUserRequest.SetFeatures, e.Request);
        Assert.Equal(before, B.AckedFeatures);
        Assert.Throws<VhostUserRequestFailedException>(() => F.SetFeatures(1UL << 63));
        F.SetFeatures(VirtioFeatures.Version1 | VirtioFeatures.ProtocolFeatures | VirtioFeatures.RingIndirectDesc);
        Assert.Equal(VirtioFeatures.Version1 | VirtioFeatures.ProtocolFeatures | VirtioFeatures.RingIndirectDesc, B.AckedFeatures);
    }

    [Fact]
    public void SetProtocolFeaturesWithUnofferedBitsIsRefused()
    {
        F.SetProtocolFeatures(VhostUserProtocolFeatures.ReplyAck);
        Assert.Equal(VhostUserProtocolFeatures.ReplyAck, B.AckedProtocolFeatures);
        Assert.Throws<VhostUserRequestFailedException>(() => F.SetProtocolFeatures(VhostUserProtocolFeatures.ReplyAck | VhostUserProtocolFeatures.LogShmfd));
        Assert.Equal(VhostUserProtocolFeatures.ReplyAck, B.AckedProtocolFeatures);
    }

    // ---- REPLY_ACK ----

    [Fact]
    public void WithReplyAckEveryMessageIsAcknowledged()
    {
        F.Transcript = new();
        Negotiate();
        F.SetOwner();
        SendMemory();
        SetupRing(0);
        F.SetVringEnable(0, true);
        Assert.All(F.Transcript, t => Assert.True(t.Answered, $"{t.Request} was not answered"));
        Assert.Contains(F.Transcript, t => t.Request == VhostUserRequest.SetVringKick);
    }

    [Fact]
    public void WithoutReplyAckNeedReplyGetsNoAck()
    {
        var c = F.Channel;
        // REPLY_ACK not negotiated: the need_reply flag alone asks for nothing.
        c.Send((uint)VhostUserRequest.SetOwner, VhostUserHeaderFlags.NeedReply, default);
        c.Send((uint)VhostUserRequest.GetQueueNum, 0, default);
        var reply = new VhostUserMessage();
        c.ReceiveReply(reply, (uint)VhostUserRequest.GetQueueNum);
        Assert.Equal(2UL, reply.Read<ulong>());
        Assert.True(B.IsOwned);
    }

    [Fact]
    public void WithReplyAckOnlyMessagesAskingForItAreAcknowledged()
    {
        F.SetProtocolFeatures(VhostUserProtocolFeatures.ReplyAck);
        var c = F.Channel;
        c.Send((uint)VhostUserRequest.SetOwner, 0, default);
        c.Send((uint)VhostUserRequest.SetOwner, VhostUserHeaderFlags.NeedReply, default);
        // The first got no reply; the second (already owned) is refused with a non-zero ack.
        Assert.NotEqual(0UL, ReadAck(c, VhostUserRequest.SetOwner));
    }

    [Fact]
    public void RequestsWithTheirOwnReplyGetNoExtraAck()
    {
        F.SetProtocolFeatures(VhostUserProtocolFeatures.ReplyAck);
        var c = F.Channel;
        c.Send((uint)VhostUserRequest.GetQueueNum, VhostUserHeaderFlags.NeedReply, default);
        c.Send((uint)VhostUserRequest.GetMaxMemSlots, VhostUserHeaderFlags.NeedReply, default);
        var reply = new VhostUserMessage();
        c.ReceiveReply(reply, (uint)VhostUserRequest.GetQueueNum);
        Assert.Equal(2UL, reply.Read<ulong>());
        c.ReceiveReply(reply, (uint)VhostUserRequest.GetMaxMemSlots);
        Assert.Equal((ulong)VhostUserLimits.MaxMemSlots, reply.Read<ulong>());
    }

    // ---- unknown and unsupported requests ----

    [Fact]
    public void UnknownRequestWithNeedReplyGetsAnErrorAndTheConnectionSurvives()
    {
        F.SetProtocolFeatures(VhostUserProtocolFeatures.ReplyAck);
        F.Channel.Send(99, VhostUserHeaderFlags.NeedReply, new byte[16]);
        Assert.NotEqual(0UL, ReadAck(F.Channel, (VhostUserRequest)99));
        Assert.Equal(2UL, F.GetQueueNum());
        Assert.False(_h.HasEnded);
    }

    [Fact]
    public void UnknownRequestWithoutNeedReplyIsLoggedAndIgnored()
    {
        F.Channel.Send(77, 0, new byte[8]);
        Assert.Equal(2UL, F.GetQueueNum());
        Assert.Contains(_h.Log.Messages(LogEventLevel.Warning), m => m.Contains("request 77"));
        Assert.False(_h.HasEnded);
    }

    [Theory]
    [InlineData(VhostUserRequest.SetLogFd)]
    [InlineData(VhostUserRequest.SetInflightFd)]
    [InlineData(VhostUserRequest.GpuSetSocket)]
    public void UnsupportedRequestsAreRefusedAndTheirFdsClosed(VhostUserRequest request)
    {
        F.SetProtocolFeatures(VhostUserProtocolFeatures.ReplyAck);
        var (a, b) = Pipe();
        using (a)
        using (b)
        {
            F.Channel.Send((uint)request, VhostUserHeaderFlags.NeedReply, request == VhostUserRequest.SetInflightFd ? new byte[24] : default, [a.Fd]);
            Assert.NotEqual(0UL, ReadAck(F.Channel, request));
            // Only our two ends of the pipe are left: the back-end closed its copy.
            Assert.Equal(2, CountFdsTo(a));
        }
    }

    // ---- owner, queue count, slots ----

    [Fact]
    public void SetOwnerTwiceIsRefusedAndResetOwnerClearsIt()
    {
        F.SetProtocolFeatures(VhostUserProtocolFeatures.ReplyAck);
        F.SetOwner();
        Assert.True(B.IsOwned);
        Assert.Throws<VhostUserRequestFailedException>(() => F.SetOwner());
        F.ResetOwner();
        Assert.False(B.IsOwned);
        F.SetOwner();
        Assert.True(B.IsOwned);
    }

    [Fact]
    public void QueueNumAndMaxMemSlots()
    {
        Assert.Equal(2UL, F.GetQueueNum());
        Assert.Equal(509UL, F.GetMaxMemSlots());
    }

    // ---- memory ----

    [Fact]
    public unsafe void SetMemTableMapsTheRegionsAtTheirUserAndGuestAddresses()
    {
        Negotiate();
        var g = Guest();
        SendMemory();
        Assert.Equal(1, B.Memory.RegionCount);
        ulong gpa = g.SlotGpa(0, 3, writable: false);
        g.Bytes(gpa, 4).Fill(0x3C);
        using var view = B.Memory.Acquire();
        Assert.True(view.TryTranslate(gpa, 4, out nint host));
        // SAFETY: translated for 4 bytes just above.
        Assert.Equal(0x3C3C3C3Cu, *(uint*)host);
        Assert.True(view.TryTranslateUser(VhostUserTestGuest.ToUser(gpa), 4, out nint viaUser));
        Assert.Equal(host, viaUser);
        // The back-end's mapping is its own, not the guest's.
        using var guestView = g.Memory.Acquire();
        Assert.True(guestView.TryTranslate(gpa, 4, out nint guestHost));
        Assert.NotEqual(guestHost, host);
    }

    [Fact]
    public void SetMemTableWithOverlappingRegionsIsRefusedAndKeepsTheOldTable()
    {
        Negotiate();
        var g = Guest();
        SendMemory();
        var r = g.MemoryRegions[0];
        var second = r.Description with { UserAddr = r.Description.UserAddr + r.Description.MemorySize };
        Assert.Throws<VhostUserRequestFailedException>(() => F.SetMemTable([r, new VhostUserMemoryRegion(second, r.Fd)]));
        Assert.Equal(1, B.Memory.RegionCount);
    }

    [Fact]
    public void SetMemTableWithAWrappingRegionIsRefused()
    {
        Negotiate();
        var r = Guest().MemoryRegions[0];
        var bad = r.Description with { GuestPhysAddr = ulong.MaxValue - 10 };
        Assert.Throws<VhostUserRequestFailedException>(() => F.SetMemTable([new VhostUserMemoryRegion(bad, r.Fd)]));
        Assert.Equal(0, B.Memory.RegionCount);
    }

    [Fact]
    public void SetMemTableRefusedAtItsSecondRegionUnmapsTheFirst()
    {
        Negotiate();
        var r = Guest().MemoryRegions[0];
        var disjoint = r.Description with
        {
            GuestPhysAddr = r.Description.GuestPhysAddr + (1UL << 40),
            UserAddr = r.Description.UserAddr + (1UL << 40),
            MemorySize = r.Description.MemorySize + 4096,
        };
        int mappedBefore = MappingsOf(Guest().MemFdName);
        Assert.Throws<VhostUserRequestFailedException>(() => F.SetMemTable([r, new VhostUserMemoryRegion(disjoint, r.Fd)]));
        Assert.Equal(0, B.Memory.RegionCount);
        // Only the guest's own mapping is left: the back-end's map of region 0 went with the refusal.
        Assert.Equal(mappedBefore, MappingsOf(Guest().MemFdName));
    }

    private static int MappingsOf(string memfdName)
        => File.ReadLines("/proc/self/maps").Count(line => line.Contains(memfdName, StringComparison.Ordinal));

    [Fact]
    public void RegionsReachingPastTheirBackingFileAreRefused()
    {
        Negotiate();
        var r = Guest().MemoryRegions[0];
        var tooLong = r.Description with { MemorySize = r.Description.MemorySize + 4096 };
        Assert.Throws<VhostUserRequestFailedException>(() => F.SetMemTable([new VhostUserMemoryRegion(tooLong, r.Fd)]));
        var shifted = r.Description with { MmapOffset = 8192 };
        Assert.Throws<VhostUserRequestFailedException>(() => F.AddMemRegion(shifted, r.Fd));
        Assert.Equal(0, B.Memory.RegionCount);
        // A region that is a window inside the file is fine.
        F.AddMemRegion(r.Description with { MmapOffset = 8192, MemorySize = r.Description.MemorySize - 8192 }, r.Fd);
        Assert.Equal(1, B.Memory.RegionCount);
    }

    [Fact]
    public void AddAndRemoveMemoryRegions()
    {
        Negotiate();
        var g = Guest();
        SendMemory();
        var extra = g.AddRegion(2 << 20);
        F.AddMemRegion(extra.Description, extra.Fd);
        Assert.Equal(2, B.Memory.RegionCount);
        // Overlapping, or removing what is not there, is refused.
        Assert.Throws<VhostUserRequestFailedException>(() => F.AddMemRegion(extra.Description, extra.Fd));
        Assert.Throws<VhostUserRequestFailedException>(() => F.RemoveMemRegion(extra.Description with { MemorySize = 4096 }));
        F.RemoveMemRegion(extra.Description);
        Assert.Equal(1, B.Memory.RegionCount);
    }

    [Fact]
    public void AddMemRegionNeedsConfigureMemSlots()
    {
        Negotiate(protocol: VhostUserProtocolFeatures.ReplyAck);
        var extra = Guest().AddRegion(2 << 20);
        Assert.Throws<VhostUserRequestFailedException>(() => F.AddMemRegion(extra.Description, extra.Fd));
        Assert.Equal(0, B.Memory.RegionCount);
    }

    // ---- vrings ----

    [Theory]
    [InlineData(0u)]
    [InlineData(3u)]
    [InlineData(1000u)]
    [InlineData(2048u)]
    [InlineData(65536u)]
    public void InvalidVringNumIsRefused(uint num)
    {
        Negotiate();
        Assert.Throws<VhostUserRequestFailedException>(() => F.SetVringNum(0, num));
        Assert.Equal(1024, B.Vrings[0].Size);
    }

    [Fact]
    public void VringNumAboveTheSpecMaximumIsRefusedEvenForTheLargestDevice()
    {
        using var h = new VhostUserBackendHarness(new VhostUserTestDevice(maxQueueSize: 32768));
        h.Frontend.SetProtocolFeatures(VhostUserProtocolFeatures.ReplyAck);
        h.Frontend.SetVringNum(1, 32768);
        Assert.Equal(32768, h.Backend.Vrings[1].Size);
        Assert.Throws<VhostUserRequestFailedException>(() => h.Frontend.SetVringNum(1, 65536));
        Assert.Throws<VhostUserRequestFailedException>(() => h.Frontend.SetVringNum(1, 32769));
    }

    [Fact]
    public void VringMessagesForARingThatDoesNotExistAreRefused()
    {
        Negotiate();
        Assert.Throws<VhostUserRequestFailedException>(() => F.SetVringNum(2, 64));
        Assert.Throws<VhostUserRequestFailedException>(() => F.SetVringBase(7, 0));
        using var e = EventFd.Create();
        Assert.Throws<VhostUserRequestFailedException>(() => F.SetVringCall(5, e.Fd));
        Assert.Throws<VhostUserRequestFailedException>(() => F.SetVringEnable(2, true));
    }

    [Fact]
    public void SetVringNumAndBase()
    {
        Negotiate();
        F.SetVringNum(1, 256);
        F.SetVringBase(1, 77);
        Assert.Equal(256, B.Vrings[1].Size);
        Assert.Equal(77u, F.GetVringBase(1));
        Assert.Throws<VhostUserRequestFailedException>(() => F.SetVringBase(1, 0x10000));
    }

    [Fact]
    public void SetVringAddrOutsideMemoryIsRefused()
    {
        Negotiate();
        var g = Guest();
        var s = g.Setups[0];
        var address = new VringAddress { Index = 0, DescriptorTable = s.DescUserAddr, AvailableRing = s.AvailUserAddr, UsedRing = s.UsedUserAddr };
        // No memory table yet: nothing is inside memory.
        Assert.Throws<VhostUserRequestFailedException>(() => F.SetVringAddr(address));
        SendMemory();
        F.SetVringNum(0, s.Size);
        ulong end = VhostUserTestGuest.UserBase + g.MemoryRegions[0].Description.MemorySize;
        // Guest-physical addresses are not user addresses.
        Assert.Throws<VhostUserRequestFailedException>(() => F.SetVringAddr(address with { DescriptorTable = g.Queue(0).DescGpa }));
        // A used ring that runs past the end of the region.
        Assert.Throws<VhostUserRequestFailedException>(() => F.SetVringAddr(address with { UsedRing = end - 64 }));
        Assert.Throws<VhostUserRequestFailedException>(() => F.SetVringAddr(address with { AvailableRing = ulong.MaxValue - 1 }));
        // Misaligned descriptor table, unknown flags.
        Assert.Throws<VhostUserRequestFailedException>(() => F.SetVringAddr(address with { DescriptorTable = s.DescUserAddr + 8 }));
        Assert.Throws<VhostUserRequestFailedException>(() => F.SetVringAddr(address with { Flags = 2 }));
        Assert.False(B.Vrings[0].HasAddress);
        F.SetVringAddr(address);
        Assert.True(B.Vrings[0].HasAddress);
    }

    [Fact]
    public void RingStartsWithAddressAndKickAndIsProcessedOnlyOnceEnabled()
    {
        Negotiate();
        SendMemory();
        SetupRing(0, kick: false);
        var ring = B.Vrings[0];
        Assert.False(ring.IsStarted);
        F.SetVringKick(0, Guest().Setups[0].KickFd);
        Assert.True(ring.IsStarted);
        Assert.False(ring.IsEnabled);
        Assert.False(ring.IsProcessing);
        F.SetVringEnable(0, true);
        Assert.True(ring.IsProcessing);
        Assert.Contains("handler 0", _device.Events);
        F.SetVringEnable(0, false);
        Assert.False(ring.IsProcessing);
        Assert.True(ring.IsStarted);
    }

    [Fact]
    public void WithoutProtocolFeaturesRingsAreEnabledOnStart()
    {
        Negotiate(protocolFeaturesBit: false);
        SendMemory();
        SetupRing(1);
        Assert.True(B.Vrings[1].IsStarted);
        Assert.True(B.Vrings[1].IsEnabled);
        Assert.True(B.Vrings[1].IsProcessing);
        // SET_VRING_ENABLE is not legal then.
        Assert.Throws<VhostUserRequestFailedException>(() => F.SetVringEnable(1, false));
    }

    [Fact]
    public void SetVringEnableRejectsValuesOtherThanZeroAndOne()
    {
        Negotiate();
        var state = new VringState(0, 2);
        Assert.Throws<VhostUserRequestFailedException>(() => F.Send(VhostUserRequest.SetVringEnable, Wire.AsBytes(in state)));
    }

    [Fact]
    public void KickWithTheNoFdFlagMeansPolling()
    {
        Negotiate();
        SendMemory();
        SetupRing(0, kick: false);
        F.SetVringKick(0, -1);
        F.SetVringEnable(0, true);
        var ring = B.Vrings[0];
        Assert.True(ring.IsPolling);
        Assert.True(ring.IsProcessing);
        // A chain is processed without any kick.
        var g = Guest();
        var q = g.Queue(0);
        ulong rd = g.SlotGpa(0, 0, false), wr = g.SlotGpa(0, 0, true);
        g.Bytes(rd, 4).Fill(7);
        q.TryAdd([(rd, 4)], [(wr, 4)]);
        q.PublishAndCheckKick();
        Assert.True(g.WaitCall(0, 5000));
        Assert.True(q.TryReapUsed(out _, out uint len));
        Assert.Equal(4u, len);
        Assert.Equal(EchoVringHandler.Transform(7, 2), g.Bytes(wr, 4)[2]);
    }

    [Fact]
    public void CallAndErrFdsAreStoredAndTheNoFdFlagClearsThem()
    {
        Negotiate();
        using var call = EventFd.Create();
        using var err = EventFd.Create();
        F.SetVringCall(1, call.Fd);
        F.SetVringErr(1, err.Fd);
        Assert.True(B.Vrings[1].HasCall);
        Assert.True(B.Vrings[1].HasErr);
        F.SetVringCall(1, -1);
        F.SetVringErr(1, -1);
        Assert.False(B.Vrings[1].HasCall);
        Assert.False(B.Vrings[1].HasErr);
    }

    [Fact]
    public void VringFdMessagesWithUnknownBitsAreRefused()
    {
        Negotiate();
        ulong value = 0x200;
        using var call = EventFd.Create();
        Assert.Throws<VhostUserRequestFailedException>(() => F.Send(VhostUserRequest.SetVringCall, Wire.AsBytes(in value), [call.Fd]));
        Assert.False(B.Vrings[0].HasCall);
    }

    [Fact]
    public void GetVringBaseStopsTheRingAndReturnsTheNextAvailIndex()
    {
        Negotiate();
        SendMemory();
        SetupRing(0);
        F.SetVringEnable(0, true);
        var g = Guest();
        var q = g.Queue(0);
        for (int i = 0; i < 5; i++)
        {
            ulong rd = g.SlotGpa(0, i, false), wr = g.SlotGpa(0, i, true);
            q.TryAdd([(rd, 16)], [(wr, 16)]);
            if (q.PublishAndCheckKick())
            {
                g.Kick(0).Signal();
            }
            Assert.True(g.WaitCall(0, 5000));
            Assert.True(q.TryReapUsed(out _, out _));
            // An empty reap re-arms used_event (EVENT_IDX) for the next interrupt.
            Assert.False(q.TryReapUsed(out _, out _));
        }
        Assert.Equal(5u, F.GetVringBase(0));
        var ring = B.Vrings[0];
        Assert.False(ring.IsStarted);
        Assert.False(ring.IsProcessing);
        Assert.False(ring.HasCall);
        // Restart from a new base: the ring continues there.
        F.SetVringBase(0, 5);
        F.SetVringKick(0, g.Setups[0].KickFd);
        F.SetVringCall(0, g.Setups[0].CallFd);
        Assert.True(ring.IsProcessing);
        Assert.Equal(5u, F.GetVringBase(0));
    }

    [Fact]
    public void GetVringBaseForARingThatDoesNotExistClosesTheConnection()
    {
        var state = new VringState(9, 0);
        F.Channel.Send((uint)VhostUserRequest.GetVringBase, 0, Wire.AsBytes(in state));
        Assert.Equal(VhostUserSessionEnd.ProtocolError, _h.WaitForEnd());
    }

    [Fact]
    public void SetVringNumWhileStartedIsRefused()
    {
        Negotiate();
        SendMemory();
        SetupRing(0);
        Assert.Throws<VhostUserRequestFailedException>(() => F.SetVringNum(0, 128));
        Assert.Throws<VhostUserRequestFailedException>(() => F.SetVringBase(0, 1));
    }

    [Fact]
    public unsafe void MalformedChainBreaksTheRingSignalsErrAndTheSessionGoesOn()
    {
        Negotiate();
        SendMemory();
        SetupRing(0);
        using var err = EventFd.Create(nonBlocking: true);
        F.SetVringErr(0, err.Fd);
        F.SetVringEnable(0, true);
        var g = Guest();
        // Publish an avail entry naming head 0xFFFF (>= queue size) by hand.
        var avail = g.Bytes(g.Queue(0).AvailGpa, 6);
        avail[4] = 0xFF;
        avail[5] = 0xFF;
        fixed (byte* p = avail)
        {
            // SAFETY: avail spans the 6 first bytes of the avail ring: flags, idx, ring[0].
            Volatile.Write(ref *(ushort*)(p + 2), (ushort)1);
        }
        g.Kick(0).Signal();
        WaitUntil(() => B.Vrings[0].IsBroken, "the ring is broken");
        WaitUntil(() => err.Consume() > 0, "the err eventfd fired");
        Assert.Single(_h.Log.Messages(LogEventLevel.Error), m => m.Contains("vring 0 is broken") && m.Contains("HeadOutOfRange"));
        Assert.Equal(VirtioDeviceStatus.DeviceNeedsReset, (VirtioDeviceStatus)(B.Status & (byte)VirtioDeviceStatus.DeviceNeedsReset));
        Assert.Equal(2UL, F.GetQueueNum());
        Assert.False(_h.HasEnded);
    }

    // ---- config, status, backend channel, reset ----

    [Fact]
    public void GetConfigReturnsTheDeviceConfigSpace()
    {
        Negotiate();
        var config = new byte[VirtioFsConfig.Size];
        F.GetConfig(0, config);
        Assert.Equal(_device.ConfigSpace.ToArray(), config);
        Assert.Equal("testfs", Wire.Read<VirtioFsConfig>(config).TagString);
        var tail = new byte[4];
        F.GetConfig(36, tail);
        Assert.Equal(1u, BitConverter.ToUInt32(tail));
    }

    [Fact]
    public void GetConfigOutOfRangeGetsTheEmptyErrorReply()
    {
        Negotiate();
        Assert.Throws<VhostUserRequestFailedException>(() => F.GetConfig(32, new byte[16]));
        Assert.Throws<VhostUserRequestFailedException>(() => F.GetConfig(0, new byte[8], flags: 7));
        Assert.Equal(2UL, F.GetQueueNum());
    }

    [Fact]
    public void GetConfigWithoutConfigNegotiatedIsRefused()
    {
        Negotiate(protocol: VhostUserProtocolFeatures.ReplyAck);
        Assert.Throws<VhostUserRequestFailedException>(() => F.GetConfig(0, new byte[4]));
    }

    [Fact]
    public void SetConfigGoesToTheDeviceWhichMayRefuse()
    {
        Negotiate();
        Assert.Throws<VhostUserRequestFailedException>(() => F.SetConfig(0, [1, 2, 3, 4]));
        Assert.Contains("config-write 0 4 0", _device.Events);
        _device.AcceptConfigWrites = true;
        F.SetConfig(36, [9, 0, 0, 0], ConfigHeader.FlagLiveMigration);
        Assert.Contains("config-write 36 4 1", _device.Events);
        Assert.Equal(9, _device.ConfigSpace[36]);
    }

    [Fact]
    public void StatusRoundTripsAndIsCheckedAndGated()
    {
        Negotiate();
        F.SetStatus(0x0F);
        Assert.Equal(0x0F, F.GetStatus());
        ulong big = 0x100;
        Assert.Throws<VhostUserRequestFailedException>(() => F.Send(VhostUserRequest.SetStatus, Wire.AsBytes(in big)));
        Assert.Equal(0x0F, F.GetStatus());
        using var h = new VhostUserBackendHarness(new VhostUserTestDevice());
        h.Frontend.SetProtocolFeatures(VhostUserProtocolFeatures.ReplyAck);
        Assert.Throws<VhostUserRequestFailedException>(() => h.Frontend.SetStatus(1));
    }

    [Fact]
    public void BackendReqFdIsStoredWhenNegotiated()
    {
        Negotiate(protocol: VhostUserProtocolFeatures.ReplyAck);
        var (a, b) = UnixSocket.Pair();
        using (a)
        using (b)
        {
            Assert.Throws<VhostUserRequestFailedException>(() => F.SetBackendReqFd(b.Fd));
            F.SetProtocolFeatures(VhostUserProtocolFeatures.ReplyAck | VhostUserProtocolFeatures.BackendReq);
            F.SetBackendReqFd(b.Fd);
            Assert.NotNull(B.BackendChannel);
            // It is the same connection: what the back-end sends on it arrives at our end.
            B.BackendChannel!.Send((uint)VhostUserBackendRequest.ConfigChangeMsg, 0, default);
            var message = new VhostUserMessage();
            Assert.True(new VhostUserChannel(a).ReceiveMessage(message));
            Assert.Equal((uint)VhostUserBackendRequest.ConfigChangeMsg, message.Header.Request);
        }
    }

    [Fact]
    public void ResetDeviceStopsRingsClearsFeaturesAndResetsTheDevice()
    {
        Negotiate();
        SendMemory();
        SetupRing(0);
        F.SetVringEnable(0, true);
        F.SetStatus(0x0F);
        Assert.True(B.Vrings[0].IsProcessing);
        F.ResetDevice();
        Assert.False(B.Vrings[0].IsStarted);
        Assert.False(B.Vrings[0].IsProcessing);
        Assert.False(B.Vrings[0].HasAddress);
        Assert.Equal(0UL, B.AckedFeatures);
        Assert.Equal(0, F.GetStatus());
        Assert.Equal(1, _device.ResetCount);
        // Still owned, memory kept, protocol features kept.
        Assert.Equal(1, B.Memory.RegionCount);
        Assert.NotEqual(VhostUserProtocolFeatures.None, B.AckedProtocolFeatures);
    }

    [Fact]
    public void ResetDeviceNeedsItsProtocolFeature()
    {
        Negotiate(protocol: VhostUserProtocolFeatures.ReplyAck);
        Assert.Throws<VhostUserRequestFailedException>(() => F.ResetDevice());
        Assert.Equal(0, _device.ResetCount);
    }

    // ---- framing faults end the session ----

    [Theory]
    [InlineData(0x0u, 0u, "malformed header")]
    [InlineData(0x3u, 0u, "malformed header")]
    [InlineData(0x101u, 0u, "malformed header")]
    [InlineData(0x1u, 0x10000u, "oversized payload")]
    public void MalformedHeaderClosesTheConnectionWithOneLogLine(uint flags, uint size, string expected)
    {
        F.SetOwner();
        F.Channel.SendRaw(new VhostUserHeader { Request = (uint)VhostUserRequest.GetFeatures, Flags = flags, PayloadSize = size }, default);
        Assert.Equal(VhostUserSessionEnd.ProtocolError, _h.WaitForEnd());
        var errors = _h.Log.Messages(LogEventLevel.Error).ToList();
        Assert.Single(errors);
        Assert.Contains(expected, errors[0]);
        // The back-end closed its end: reading gives end-of-stream.
        Assert.Equal(0, F.Channel.Socket.Receive(new byte[1], new int[8], out _, out _));
    }

    [Fact]
    public void FdCountMismatchClosesTheConnection()
    {
        var (a, b) = Pipe();
        using (a)
        using (b)
        {
            F.Channel.Send((uint)VhostUserRequest.GetQueueNum, 0, default, [a.Fd]);
            Assert.Equal(VhostUserSessionEnd.ProtocolError, _h.WaitForEnd());
            Assert.Contains(_h.Log.Messages(LogEventLevel.Error), m => m.Contains("fd count mismatch"));
            Assert.Equal(2, CountFdsTo(a));
        }
    }

    [Fact]
    public void MemTableWithTooFewFdsClosesTheConnection()
    {
        var r = Guest().MemoryRegions[0];
        var table = new MemoryTable { Header = new MemoryTableHeader { NumRegions = 2 } };
        table.Regions[0] = r.Description;
        table.Regions[1] = r.Description with { GuestPhysAddr = 0x1_0000_0000, UserAddr = 0x1_0000_0000 };
        F.Channel.Send((uint)VhostUserRequest.SetMemTable, 0, Wire.AsBytes(in table)[..MemoryTable.PayloadSize(2)], [r.Fd]);
        Assert.Equal(VhostUserSessionEnd.ProtocolError, _h.WaitForEnd());
        Assert.Equal(0, B.Memory.RegionCount);
    }

    [Fact]
    public void DisconnectStopsRingsUnmapsMemoryClosesFdsAndResetsTheDevice()
    {
        Negotiate();
        var g = Guest();
        SendMemory();
        SetupRing(0, kick: false);
        var (a, b) = Pipe();
        using (a)
        using (b)
        {
            F.SetVringKick(0, a.Fd);
            F.SetVringEnable(0, true);
            Assert.True(B.Vrings[0].IsProcessing);
            Assert.Equal(3, CountFdsTo(a));
            Assert.Equal(2, CountMappings(g.MemFdName));
            F.Dispose();
            Assert.Equal(VhostUserSessionEnd.Disconnected, _h.WaitForEnd());
            Assert.False(B.Vrings[0].IsProcessing);
            Assert.Equal(2, CountFdsTo(a));
            Assert.Equal(1, CountMappings(g.MemFdName));
            Assert.Equal(1, _device.ResetCount);
        }
    }

    private static (SafeFd Read, SafeFd Write) Pipe()
    {
        unsafe
        {
            int* fds = stackalloc int[2];
            PosixException.Check(Libc.Pipe2(fds, Libc.O_CLOEXEC | Libc.O_NONBLOCK), "pipe2");
            return (new SafeFd(fds[0]), new SafeFd(fds[1]));
        }
    }

    /// <summary>How many fds of this process refer to the same pipe as <paramref name="fd"/>.</summary>
    private static int CountFdsTo(SafeFd fd)
    {
        string target = File.ResolveLinkTarget($"/proc/self/fd/{fd.Fd}", false)!.ToString();
        int count = 0;
        foreach (var link in Directory.GetFiles("/proc/self/fd"))
        {
            try
            {
                if (File.ResolveLinkTarget(link, false)?.ToString() == target)
                {
                    count++;
                }
            }
            catch (IOException)
            {
                // The fd closed while we looked (the directory's own fd, for one).
            }
        }
        return count;
    }

    private static int CountMappings(string memfdName)
    {
        int count = 0;
        foreach (var line in File.ReadLines("/proc/self/maps"))
        {
            if (line.Contains(memfdName))
            {
                count++;
            }
        }
        return count;
    }
}
