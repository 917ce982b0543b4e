using Vhostfsd.Logging;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Vhostfsd.VhostUser;
using Vhostfsd.Virtqueue;
using Xunit;

namespace Vhostfsd.VhostUser.Tests;

/// <summary>The front-end and the back-end over a real UNIX socket path, with the echo handler:
/// chains go through every queue and come back transformed, checked byte for byte; memory regions
/// are added and removed while idle and traffic goes on afterwards.</summary>
public sealed class LoopbackTests
{
    private const int QueueSize = 128;
    private const int SlotSize = 512;
    private const int Depth = 24;

    [Theory]
    [InlineData(1, true, false, 0)]
    [InlineData(1, false, false, 3)]
    [InlineData(4, true, true, 5)]
    [InlineData(4, false, true, 0)]
    public void TenThousandChainsEchoByteForByte(int queues, bool eventIdx, bool indirect, int deferEvery)
    {
        const int total = 10_000;
        string dir = Directory.CreateTempSubdirectory("vhost-user-loopback-").FullName;
        string path = Path.Combine(dir, "backend.sock");
        var log = new ListLogSink();
        var device = new VhostUserTestDevice(queueCount: queues, maxQueueSize: 1024);
        var handlers = new List<EchoVringHandler>();
        device.HandlerFactory = _ =>
        {
            var handler = new EchoVringHandler(deferEvery);
            lock (handlers)
            {
                handlers.Add(handler);
            }
            return handler;
        };
        using var listener = UnixSocket.Listen(path);
        VhostUserSessionEnd? end = null;
        var backendThread = new Thread(() =>
        {
            using var connection = listener.Accept();
            using var backend = new VhostUserBackend(connection, device, null, log.CreateLogger());
            end = backend.Run();
        }) { IsBackground = true, Name = "loopback-backend" };
        backendThread.Start();

        using var guest = new VhostUserTestGuest(queues, QueueSize, SlotSize, eventIdx, indirect);
        try
        {
            using (var frontend = VhostUserFrontend.Connect(path, TimeSpan.FromSeconds(10)))
            {
                frontend.Transcript = new();
                var info = frontend.Initialize(queues);
                Assert.Equal(queues, info.QueueCount);
                Assert.True(frontend.Negotiated(VhostUserProtocolFeatures.ConfigureMemSlots));
                frontend.Start(guest.RingFeatures, guest.MemoryRegions, guest.Setups);
                Assert.All(frontend.Transcript, t => Assert.True(t.Answered, $"{t.Request} was not acknowledged"));

                var drivers = new QueueDriver[queues];
                for (int q = 0; q < queues; q++)
                {
                    drivers[q] = new QueueDriver(guest, q);
                }
                RunAll(drivers, total / queues);

                // Add a region while idle, move traffic through buffers inside it, remove it, go on.
                var extra = guest.AddRegion(1 << 20);
                frontend.AddMemRegion(extra.Description, extra.Fd);
                foreach (var d in drivers)
                {
                    d.DataRegion = extra.Description.GuestPhysAddr;
                }
                RunAll(drivers, 200);
                foreach (var d in drivers)
                {
                    d.DataRegion = null;
                }
                frontend.RemoveMemRegion(extra.Description);
                guest.RemoveRegion(extra.Description);
                RunAll(drivers, 200);

                uint[] bases = frontend.Stop(Enumerable.Range(0, queues).Select(q => (uint)q).ToArray());
                for (int q = 0; q < queues; q++)
                {
                    Assert.Equal((uint)drivers[q].Completed, bases[q]);
                    Assert.Equal(total / queues + 400, drivers[q].Completed);
                }
                Assert.All(frontend.Transcript, t => Assert.True(t.Answered, $"{t.Request} was not acknowledged"));
            }
            Assert.True(backendThread.Join(TimeSpan.FromSeconds(20)), "the back-end did not end after the disconnect");
            Assert.Equal(VhostUserSessionEnd.Disconnected, end);
            Assert.Empty(log.Messages(LogEventLevel.Warning));
            long handled = 0, deferred = 0;
            lock (handlers)
            {
                foreach (var h in handlers)
                {
                    handled += h.Handled;
                    deferred += h.Deferred;
                    h.Dispose();
                }
            }
            Assert.Equal(total + 400L * queues, handled);
            if (deferEvery > 0)
            {
                Assert.Equal(handled / deferEvery, deferred, tolerance: queues);
            }
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    [Fact]
    public void TheWorkerHotPathDoesNotAllocate()
    {
        var probe = new AllocationProbeHandler(warmup: 2000, measured: 4000);
        var device = new VhostUserTestDevice(queueCount: 1, maxQueueSize: 1024) { HandlerFactory = _ => probe };
        using var h = new VhostUserBackendHarness(device);
        using var guest = new VhostUserTestGuest(1, QueueSize, SlotSize, eventIdx: true, indirect: true);
        h.Frontend.Initialize(1);
        h.Frontend.Start(guest.RingFeatures, guest.MemoryRegions, guest.Setups);
        RunAll([new QueueDriver(guest, 0)], 7000);
        Assert.True(probe.Done, "the probe did not see enough chains");
        // Pop, echo, push used, signal and the wait for the next kick: nothing on the heap.
        Assert.True(probe.AllocatedBytes <= 512, $"the worker thread allocated {probe.AllocatedBytes} bytes over {probe.Measured} chains");
    }

    /// <summary>Echoes inline and reads the worker thread's allocation counter at two points.</summary>
    private sealed class AllocationProbeHandler(int warmup, int measured) : IVringHandler
    {
        private int _count;
        private long _start;

        public int Measured => measured;
        public long AllocatedBytes { get; private set; }
        public bool Done { get; private set; }

        public void HandleChain(OwnedChain chain, RingBacklog backlog)
        {
            chain.Complete(EchoVringHandler.Echo(chain));
            _count++;
            if (_count == warmup)
            {
                _start = GC.GetAllocatedBytesForCurrentThread();
            }
            else if (_count == warmup + measured)
            {
                AllocatedBytes = GC.GetAllocatedBytesForCurrentThread() - _start;
                Done = true;
            }
        }
    }

    private static void RunAll(QueueDriver[] drivers, int chainsPerQueue)
    {
        var threads = new Thread[drivers.Length];
        var failures = new Exception?[drivers.Length];
        for (int q = 0; q < drivers.Length; q++)
        {
            int index = q;
            threads[q] = new Thread(() =>
            {
                try
                {
                    drivers[index].Run(chainsPerQueue);
                }
                catch (Exception e)
                {
                    failures[index] = e;
                }
            }) { IsBackground = true, Name = $"guest-queue-{q}" };
            threads[q].Start();
        }
        foreach (var t in threads)
        {
            Assert.True(t.Join(TimeSpan.FromSeconds(120)), "a guest queue driver hung");
        }
        foreach (var f in failures)
        {
            if (f != null)
            {
                throw new Xunit.Sdk.XunitException("guest queue driver failed: " + f);
            }
        }
    }

    /// <summary>Plays the guest driver of one queue: keeps up to <see cref="Depth"/> chains in flight,
    /// each with a payload in one or two readable buffers and one or two writable ones, kicks when the
    /// device asks, and checks every completion against what was sent.</summary>
    private sealed class QueueDriver
    {
        private readonly VhostUserTestGuest _guest;
        private readonly int _q;
        private readonly Stack<int> _freeSlots = new();
        private readonly (int Slot, int Length, int Seq)[] _byHead = new (int, int, int)[QueueSize];
        private int _seq;

        public QueueDriver(VhostUserTestGuest guest, int q)
        {
            _guest = guest;
            _q = q;
            for (int s = QueueSize - 1; s >= 0; s--)
            {
                _freeSlots.Push(s);
            }
        }

        public int Completed { get; private set; }

        /// <summary>When set, buffers are placed in the region at this guest-physical address instead.</summary>
        public ulong? DataRegion { get; set; }

        private ulong SlotGpa(int slot, bool writable)
        {
            if (DataRegion is { } baseGpa)
            {
                // Up to 1 MiB / (2 * 512) = 1024 slots per region: each queue takes its own 256-slot band.
                return baseGpa + (((ulong)_q * QueueSize + (ulong)slot) * 2 + (writable ? 1UL : 0UL)) * SlotSize;
            }
            return _guest.SlotGpa(_q, slot, writable);
        }

        private static byte Pattern(int q, int seq, int i) => (byte)(seq * 7 + i * 13 + q * 101);

        public void Run(int count)
        {
            var queue = _guest.Queue(_q);
            int sent = 0, done = 0, inFlight = 0;
            var readable = new (ulong, uint)[2];
            var writable = new (ulong, uint)[2];
            while (done < count)
            {
                bool added = false;
                while (inFlight < Depth && sent < count)
                {
                    int seq = _seq++;
                    int slot = _freeSlots.Pop();
                    int length = 1 + (int)((uint)(seq * 2654435761u) % SlotSize);
                    ulong rd = SlotGpa(slot, false), wr = SlotGpa(slot, true);
                    var payload = _guest.Bytes(rd, length);
                    for (int i = 0; i < length; i++)
                    {
                        payload[i] = Pattern(_q, seq, i);
                    }
                    _guest.Bytes(wr, SlotSize).Clear();
                    // Split buffers in two on odd sequence numbers to exercise multi-segment chains.
                    int rCount = 1, wCount = 1;
                    if ((seq & 1) != 0 && length > 1)
                    {
                        readable[0] = (rd, (uint)(length / 2));
                        readable[1] = (rd + (ulong)(length / 2), (uint)(length - length / 2));
                        writable[0] = (wr, 100);
                        writable[1] = (wr + 100, SlotSize - 100);
                        rCount = wCount = 2;
                    }
                    else
                    {
                        readable[0] = (rd, (uint)length);
                        writable[0] = (wr, SlotSize);
                    }
                    int head = queue.TryAdd(readable.AsSpan(0, rCount), writable.AsSpan(0, wCount));
                    Assert.True(head >= 0, "the driver ran out of descriptors");
                    _byHead[head] = (slot, length, seq);
                    sent++;
                    inFlight++;
                    added = true;
                }
                if (added && queue.PublishAndCheckKick())
                {
                    Assert.Equal(0, _guest.Kick(_q).Signal());
                }
                bool reaped = false;
                while (queue.TryReapUsed(out ushort usedHead, out uint len))
                {
                    var (slot, length, seq) = _byHead[usedHead];
                    Assert.Equal((uint)length, len);
                    var echoed = _guest.Bytes(SlotGpa(slot, true), SlotSize);
                    for (int i = 0; i < length; i++)
                    {
                        if (echoed[i] != EchoVringHandler.Transform(Pattern(_q, seq, i), i))
                        {
                            Assert.Fail($"queue {_q} chain {seq}: byte {i} is 0x{echoed[i]:x2}, expected 0x{EchoVringHandler.Transform(Pattern(_q, seq, i), i):x2}");
                        }
                    }
                    if (length < SlotSize)
                    {
                        Assert.Equal(0, echoed[length]);
                    }
                    _freeSlots.Push(slot);
                    inFlight--;
                    done++;
                    Completed++;
                    reaped = true;
                }
                if (!reaped && inFlight > 0 && !_guest.WaitCall(_q, 10_000))
                {
                    Assert.Fail($"queue {_q}: no used buffer notification within 10 s ({inFlight} in flight, {done} done)");
                }
            }
        }
    }
}
