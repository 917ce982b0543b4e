using System.Diagnostics;
using Serilog.Events;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Vhostfsd.VhostUser;
using Vhostfsd.Virtqueue;
using Xunit;

namespace Vhostfsd.VhostUser.Tests;

/// <summary>Ring workers: chains kept by the handler, stopping with chains in flight, broken rings,
/// and rings moving when the memory table is replaced under them.</summary>
public sealed class VringWorkerTests : IDisposable
{
    private readonly VhostUserTestDevice _device = new(queueCount: 2, maxQueueSize: 1024);
    private readonly KeepingVringHandler _keeper = new();
    private readonly VhostUserTestGuest _guest = new(queueCount: 2, queueSize: 64);
    private VhostUserBackendHarness? _h;

    public void Dispose()
    {
        _h?.Dispose();
        _guest.Dispose();
    }

    private VhostUserBackendHarness Start(IVringHandler? handler = null, TimeSpan? drainTimeout = null)
    {
        if (handler != null)
        {
            _device.HandlerFactory = _ => handler;
        }
        var options = new VhostUserBackendOptions { InFlightDrainTimeout = drainTimeout ?? TimeSpan.FromSeconds(5) };
        _h = new VhostUserBackendHarness(_device, options);
        var f = _h.Frontend;
        f.Initialize(2);
        f.Start(_guest.RingFeatures, _guest.MemoryRegions, _guest.Setups);
        return _h;
    }

    private int Add(int slot, int length = 16)
    {
        var q = _guest.Queue(0);
        ulong rd = _guest.SlotGpa(0, slot, false), wr = _guest.SlotGpa(0, slot, true);
        _guest.Bytes(rd, length).Fill((byte)slot);
        int head = q.TryAdd([(rd, (uint)length)], [(wr, (uint)length)]);
        Assert.True(head >= 0);
        if (q.PublishAndCheckKick())
        {
            _guest.Kick(0).Signal();
        }
        return head;
    }

    private void ReapOne(int slot, int length = 16)
    {
        var q = _guest.Queue(0);
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        uint len;
        while (!q.TryReapUsed(out _, out len))
        {
            Assert.True(DateTime.UtcNow < deadline, "no used element within 10 s");
            _guest.WaitCall(0, 100);
        }
        Assert.Equal((uint)length, len);
        Assert.Equal(EchoVringHandler.Transform((byte)slot, 1), _guest.Bytes(_guest.SlotGpa(0, slot, true), 2)[1]);
    }

    [Fact]
    public void KeptChainsAreCompletedFromAnotherThreadAndTheQueueDoesNotStall()
    {
        Start(_keeper);
        for (int i = 0; i < 8; i++)
        {
            Add(i);
        }
        // All eight reach the handler although none was completed: the worker pops on with fresh chains.
        var kept = new List<(Vring, DescriptorChain)>();
        for (int i = 0; i < 8; i++)
        {
            kept.Add(_keeper.Take());
        }
        Assert.Equal(8, _h!.Backend.Vrings[0].InFlightCount);
        Assert.Equal(8, kept.Select(k => k.Item2).Distinct().Count());
        var completer = new Thread(() =>
        {
            foreach (var (vring, chain) in kept)
            {
                vring.Complete(chain, EchoVringHandler.Echo(chain));
            }
        });
        completer.Start();
        completer.Join();
        var q = _guest.Queue(0);
        int reaped = 0;
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (reaped < 8)
        {
            if (q.TryReapUsed(out _, out uint len))
            {
                Assert.Equal(16u, len);
                reaped++;
            }
            else
            {
                Assert.True(DateTime.UtcNow < deadline);
                _guest.WaitCall(0, 100);
            }
        }
        Assert.Equal(0, _h.Backend.Vrings[0].InFlightCount);
    }

    [Fact]
    public void GetVringBaseWaitsForChainsInFlightBeforeReplying()
    {
        Start(_keeper);
        for (int i = 0; i < 3; i++)
        {
            Add(i);
        }
        var kept = new[] { _keeper.Take(), _keeper.Take(), _keeper.Take() };
        var completer = new Thread(() =>
        {
            Thread.Sleep(300);
            foreach (var (vring, chain) in kept)
            {
                vring.Complete(chain, EchoVringHandler.Echo(chain));
            }
        });
        var watch = Stopwatch.StartNew();
        completer.Start();
        Assert.Equal(3u, _h!.Frontend.GetVringBase(0));
        Assert.True(watch.ElapsedMilliseconds >= 250, $"GET_VRING_BASE answered after {watch.ElapsedMilliseconds} ms, before the chains completed");
        // Every completion was published before the reply.
        var q = _guest.Queue(0);
        for (int i = 0; i < 3; i++)
        {
            Assert.True(q.TryReapUsed(out _, out _));
        }
        completer.Join();
    }

    [Fact]
    public void GetVringBaseAbandonsChainsAfterTheTimeoutAndLateCompletionsAreDropped()
    {
        Start(_keeper, drainTimeout: TimeSpan.FromMilliseconds(200));
        Add(0);
        Add(1);
        var a = _keeper.Take();
        var b = _keeper.Take();
        var watch = Stopwatch.StartNew();
        Assert.Equal(2u, _h!.Frontend.GetVringBase(0));
        Assert.InRange(watch.ElapsedMilliseconds, 150, 5000);
        Assert.Contains(_h.Log.Messages(LogEventLevel.Warning), m => m.Contains("abandoned"));
        a.Vring.Complete(a.Chain, 16);
        b.Vring.Complete(b.Chain, 16);
        Assert.False(_guest.Queue(0).HasUsed());
        Assert.False(a.Chain.IsHeld);
        Assert.Equal(2UL, _h.Frontend.GetQueueNum());
    }

    [Fact]
    public unsafe void ADriverReusingAHeadInFlightBreaksTheRing()
    {
        Start(_keeper, drainTimeout: TimeSpan.FromMilliseconds(200));
        int head = Add(0);
        _keeper.Take();
        // Publish the same head again by hand: avail.ring[1] = head, avail.idx = 2.
        var q = _guest.Queue(0);
        var avail = _guest.Bytes(q.AvailGpa, 8);
        avail[6] = (byte)head;
        avail[7] = (byte)(head >> 8);
        fixed (byte* p = avail)
        {
            // SAFETY: avail covers flags, idx, ring[0], ring[1] of the avail ring.
            Volatile.Write(ref *(ushort*)(p + 2), (ushort)2);
        }
        _guest.Kick(0).Signal();
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (!_h!.Backend.Vrings[0].IsBroken)
        {
            Assert.True(DateTime.UtcNow < deadline, "the ring was not broken");
            Thread.Sleep(5);
        }
        WaitForError("again while it is in flight");
        Assert.Equal(1, _h.Backend.Vrings[0].InFlightCount);
    }

    /// <summary>The ring is marked broken a moment before its error line is written: wait for the line.</summary>
    private void WaitForError(string text)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (!_h!.Log.Messages(LogEventLevel.Error).Any(m => m.Contains(text, StringComparison.Ordinal)))
        {
            Assert.True(DateTime.UtcNow < deadline, $"no error line containing \"{text}\" was logged");
            Thread.Sleep(5);
        }
    }

    [Fact]
    public void AHandlerThatThrowsBreaksTheRingAndStoppingDoesNotWaitForItsChain()
    {
        _keeper.Throw = true;
        Start(_keeper);
        Add(0);
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (!_h!.Backend.Vrings[0].IsBroken)
        {
            Assert.True(DateTime.UtcNow < deadline, "the ring was not broken");
            Thread.Sleep(5);
        }
        WaitForError("handler failure (test)");
        var watch = Stopwatch.StartNew();
        Assert.Equal(1u, _h.Frontend.GetVringBase(0));
        Assert.True(watch.ElapsedMilliseconds < 2000, $"GET_VRING_BASE took {watch.ElapsedMilliseconds} ms");
    }

    [Fact]
    public void ReplacingTheMemoryTableWhileRunningMovesTheRingsAndTrafficGoesOn()
    {
        Start(new EchoVringHandler());
        for (int i = 0; i < 5; i++)
        {
            Add(i);
            ReapOne(i);
            Assert.False(_guest.Queue(0).TryReapUsed(out _, out _));
        }
        // Same memory, mapped afresh by the back-end (what QEMU does on a memory layout change).
        _h!.Frontend.SetMemTable([.. _guest.MemoryRegions]);
        Assert.True(_h.Backend.Vrings[0].IsProcessing);
        for (int i = 5; i < 10; i++)
        {
            Add(i);
            ReapOne(i);
            Assert.False(_guest.Queue(0).TryReapUsed(out _, out _));
        }
        Assert.Equal(10u, _h.Frontend.GetVringBase(0));
    }

    [Fact]
    public void ResetOwnerStopsTheRings()
    {
        Start(new EchoVringHandler());
        Assert.True(_h!.Backend.Vrings[1].IsProcessing);
        _h.Frontend.ResetOwner();
        Assert.False(_h.Backend.Vrings[0].IsStarted);
        Assert.False(_h.Backend.Vrings[1].IsProcessing);
    }
}
