using System.Collections.Concurrent;
using System.Diagnostics;
using Vhostfsd.Logging;
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

    private VhostUserBackendHarness Start(IVringHandler? handler = null, TimeSpan? drainTimeout = null, TimeSpan? stopTimeout = null)
    {
        if (handler != null)
        {
            _device.HandlerFactory = _ => handler;
        }
        var options = new VhostUserBackendOptions
        {
            InFlightDrainTimeout = drainTimeout ?? TimeSpan.FromSeconds(5),
            WorkerStopTimeout = stopTimeout ?? TimeSpan.FromSeconds(10),
        };
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
        var kept = new List<OwnedChain>();
        for (int i = 0; i < 8; i++)
        {
            kept.Add(_keeper.Take());
        }
        Assert.Equal(8, _h!.Backend.Vrings[0].InFlightCount);
        Assert.Equal(8, kept.Select(k => k.Chain).Distinct().Count());
        var completer = new Thread(() =>
        {
            foreach (var chain in kept)
            {
                chain.Complete(EchoVringHandler.Echo(chain));
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
            foreach (var chain in kept)
            {
                chain.Complete(EchoVringHandler.Echo(chain));
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
        a.Complete(16);
        b.Complete(16);
        Assert.False(_guest.Queue(0).HasUsed());
        Assert.False(a.Chain.IsHeld);
        Assert.Equal(2UL, _h.Frontend.GetQueueNum());
    }

    [Fact]
    public void ASecondCompletionOfAHandOutLeavesTheNextPopIntoItsChainAlone()
    {
        Start(_keeper);
        var ring = _h!.Backend.Vrings[0];
        Add(0);
        var first = _keeper.Take();
        first.Complete(EchoVringHandler.Echo(first));
        ReapOne(0);
        Assert.False(first.IsCurrent);

        // The completed chain object goes back to the ring's pool: pop until the worker pops into it again.
        var held = new List<OwnedChain>();
        OwnedChain reused = default;
        for (int slot = 1; slot <= 4 && reused.Chain is null; slot++)
        {
            Add(slot);
            var owned = _keeper.Take();
            held.Add(owned);
            if (ReferenceEquals(owned.Chain, first.Chain))
            {
                reused = owned;
            }
        }
        Assert.NotNull(reused.Chain);

        // A handler bug: the first hand-out completed again. It must neither publish nor release the new one.
        first.Complete(16);
        Assert.True(reused.IsCurrent, "the second completion released the chain's next hand-out");
        Assert.True(reused.Chain.IsHeld);
        Assert.Equal(held.Count, ring.InFlightCount);
        Assert.False(_guest.Queue(0).HasUsed());

        foreach (var owned in held)
        {
            owned.Complete(EchoVringHandler.Echo(owned));
        }
        var used = ReapExactly(held.Count);
        Assert.All(used.Values, len => Assert.Equal(16u, len));
        Assert.Equal(0, ring.InFlightCount);
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

    // ---- a worker left behind in a handler (security review 22, finding 6) ----

    /// <summary>Reaps <paramref name="count"/> used elements (10 s at most), then checks for 200 ms that
    /// no other comes. Returns head → used length.</summary>
    private Dictionary<int, uint> ReapExactly(int count)
    {
        var q = _guest.Queue(0);
        var used = new Dictionary<int, uint>();
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (used.Count < count)
        {
            if (q.TryReapUsed(out ushort head, out uint len))
            {
                Assert.True(used.TryAdd(head, len), $"head {head} was used twice");
                continue;
            }
            Assert.True(DateTime.UtcNow < deadline, $"{used.Count} of {count} used elements within 10 s");
            _guest.WaitCall(0, 50);
        }
        Thread.Sleep(200);
        Assert.False(q.TryReapUsed(out ushort extra, out _), $"head {extra} was used although nothing else was completed");
        return used;
    }

    private void AssertEchoed(int slot) =>
        Assert.Equal(EchoVringHandler.Transform((byte)slot, 1), _guest.Bytes(_guest.SlotGpa(0, slot, true), 2)[1]);

    /// <summary>The new worker hands out fresh, distinct chains: eight held at once are eight
    /// objects, each still holding its own bytes (a chain returned to the pool twice, or released by
    /// someone else, would show up here), and they complete once each.</summary>
    private void AssertChainsAreDistinctAndIntact(GatedVringHandler gated, int firstSlot)
    {
        gated.KeepFrom = firstSlot;
        var heads = new List<int>();
        for (int slot = firstSlot; slot < firstSlot + 8; slot++)
        {
            heads.Add(Add(slot));
        }
        var kept = new List<OwnedChain>();
        for (int i = 0; i < 8; i++)
        {
            kept.Add(gated.Take());
        }
        Assert.Equal(8, kept.Select(k => k.Chain).Distinct().Count());
        foreach (var owned in kept)
        {
            Assert.True(owned.Chain.IsHeld, $"chain of head {owned.Chain.Head} was released while its handler held it");
            Assert.True(owned.IsCurrent, $"chain of head {owned.Chain.Head} was popped into again while its handler held it");
            Assert.Equal(16UL, owned.Chain.ReadableBytes);
            owned.Complete(EchoVringHandler.Echo(owned));
        }
        var used = ReapExactly(8);
        Assert.Equal(heads.Order(), used.Keys.Order());
        Assert.All(used.Values, len => Assert.Equal(16u, len));
    }

    [Fact]
    public void AWorkerLeftInAHandlerNeverTouchesTheNextWorkerOfItsRing()
    {
        var gated = new GatedVringHandler();
        Start(gated, drainTimeout: TimeSpan.FromMilliseconds(200), stopTimeout: TimeSpan.FromMilliseconds(200));
        var ring = _h!.Backend.Vrings[0];
        gated.Gate(0);
        Add(0);
        gated.WaitEntered(0);

        // GET_VRING_BASE gives up on the worker, then on its chain; the ring starts again.
        Assert.Equal(1u, _h.Frontend.GetVringBase(0));
        Assert.Contains(_h.Log.Messages(LogEventLevel.Error), m => m.Contains("left behind"));
        _h.Frontend.SetVringCall(0, _guest.Call(0).Fd);
        _h.Frontend.SetVringKick(0, _guest.Kick(0).Fd);
        Assert.True(ring.IsProcessing);

        // The new worker is in its handler for slot 1, slot 2 waits behind it, when the old worker's
        // handler returns and completes a chain of the stopped ring.
        gated.Gate(1);
        int head1 = Add(1);
        gated.WaitEntered(1);
        Assert.NotSame(gated.Threads[0], gated.Threads[1]);
        int head2 = Add(2);
        gated.Open(0);
        Assert.True(gated.Threads[0].Join(TimeSpan.FromSeconds(10)), "the old worker did not exit after its handler returned");
        gated.Open(1);

        // The late completion is dropped; the new worker's chains complete once each, in full, and its
        // handler still learns that a chain waits behind it.
        var used = ReapExactly(2);
        Assert.Equal(new[] { head1, head2 }.Order(), used.Keys.Order());
        Assert.All(used.Values, len => Assert.Equal(16u, len));
        AssertEchoed(1);
        AssertEchoed(2);
        Assert.True(gated.MoreAvailable[1], "the new worker's state was changed by the old one: it saw nothing waiting behind slot 1");
        Assert.False(ring.IsBroken);
        Assert.Equal(0, ring.InFlightCount);
        AssertChainsAreDistinctAndIntact(gated, firstSlot: 3);
    }

    [Fact]
    public void AWorkerLeftInAHandlerAcrossDisableAndEnableCompletesItsChainOnceBesideTheNewWorker()
    {
        var gated = new GatedVringHandler();
        Start(gated, stopTimeout: TimeSpan.FromMilliseconds(200));
        var ring = _h!.Backend.Vrings[0];
        gated.Gate(0);
        int head0 = Add(0);
        gated.WaitEntered(0);

        // Disable gives up on the worker; the ring itself is not stopped, so its chain stays in flight.
        _h.Frontend.SetVringEnable(0, false);
        _h.Frontend.SetVringEnable(0, true);
        _h.Frontend.GetQueueNum();
        Assert.True(ring.IsProcessing);
        Assert.Equal(1, ring.InFlightCount);

        gated.Gate(1);
        int head1 = Add(1);
        gated.WaitEntered(1);
        Assert.NotSame(gated.Threads[0], gated.Threads[1]);
        int head2 = Add(2);
        gated.Open(0);
        Assert.True(gated.Threads[0].Join(TimeSpan.FromSeconds(10)), "the old worker did not exit after its handler returned");
        gated.Open(1);

        // The driver still waits for the old chain: it is published, once, like any other thread's completion.
        var used = ReapExactly(3);
        Assert.Equal(new[] { head0, head1, head2 }.Order(), used.Keys.Order());
        Assert.All(used.Values, len => Assert.Equal(16u, len));
        AssertEchoed(0);
        AssertEchoed(1);
        AssertEchoed(2);
        Assert.True(gated.MoreAvailable[1], "the new worker's state was changed by the old one: it saw nothing waiting behind slot 1");
        Assert.Equal(0, ring.InFlightCount);
        AssertChainsAreDistinctAndIntact(gated, firstSlot: 3);
    }

    [Fact]
    public void AHandlerLeftBehindThatThrowsDoesNotBreakTheRestartedRing()
    {
        var gated = new GatedVringHandler();
        Start(gated, drainTimeout: TimeSpan.FromMilliseconds(200), stopTimeout: TimeSpan.FromMilliseconds(200));
        var ring = _h!.Backend.Vrings[0];
        gated.Gate(0);
        gated.ThrowAfterGate.Add(0);
        Add(0);
        gated.WaitEntered(0);
        Assert.Equal(1u, _h.Frontend.GetVringBase(0));
        _h.Frontend.SetVringCall(0, _guest.Call(0).Fd);
        _h.Frontend.SetVringKick(0, _guest.Kick(0).Fd);
        Add(1);
        ReapOne(1);

        gated.Open(0);
        Assert.True(gated.Threads[0].Join(TimeSpan.FromSeconds(10)), "the old worker did not exit after its handler threw");
        Assert.False(ring.IsBroken, "the old worker's failure broke the ring its successor serves");
        Assert.Contains(_h.Log.Messages(LogEventLevel.Error), m => m.Contains("handler failure (test)"));
        Add(2);
        ReapOne(2);
    }

    /// <summary>Runs each chain on the ring's worker: waits in HandleChain while its slot (the first
    /// readable byte) has a closed gate, records the thread and whether more chains wait behind it,
    /// then throws (when told), keeps the chain (slots from <see cref="KeepFrom"/>), or completes it
    /// with the echo.</summary>
    private sealed unsafe class GatedVringHandler : IVringHandler
    {
        private readonly ConcurrentDictionary<int, ManualResetEventSlim> _gates = new();
        private readonly ConcurrentDictionary<int, ManualResetEventSlim> _entered = new();
        private readonly BlockingCollection<OwnedChain> _kept = new();

        public ConcurrentDictionary<int, Thread> Threads { get; } = new();
        public ConcurrentDictionary<int, bool> MoreAvailable { get; } = new();
        public ConcurrentBag<int> ThrowAfterGate { get; } = new();
        public int KeepFrom { get; set; } = int.MaxValue;

        public void Gate(int slot)
        {
            _entered[slot] = new ManualResetEventSlim();
            _gates[slot] = new ManualResetEventSlim();
        }

        public void Open(int slot) => _gates[slot].Set();

        public void WaitEntered(int slot) => Assert.True(_entered[slot].Wait(TimeSpan.FromSeconds(10)), $"slot {slot} did not reach the handler");

        public OwnedChain Take()
        {
            Assert.True(_kept.TryTake(out var item, TimeSpan.FromSeconds(10)), "no chain was kept within 10 s");
            return item;
        }

        public void HandleChain(OwnedChain chain, RingBacklog backlog)
        {
            // SAFETY: the test's requests have at least one readable byte, in a segment the chain holds.
            int slot = *(byte*)chain.Readable[0].Base;
            Threads[slot] = Thread.CurrentThread;
            if (_gates.TryGetValue(slot, out var gate))
            {
                _entered[slot].Set();
                gate.Wait(TimeSpan.FromSeconds(30));
            }
            MoreAvailable[slot] = backlog.HasMore;
            if (ThrowAfterGate.Contains(slot))
            {
                throw new InvalidOperationException("handler failure (test)");
            }
            if (slot >= KeepFrom)
            {
                _kept.Add(chain);
                return;
            }
            chain.Complete(EchoVringHandler.Echo(chain));
        }
    }
}
