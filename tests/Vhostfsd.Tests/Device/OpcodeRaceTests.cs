using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Vhostfsd.Device;
using Vhostfsd.FusePassthrough;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Vhostfsd.Virtqueue;
using Xunit;

namespace Vhostfsd.Tests.Device;

/// <summary>A hostile guest rewrites a request's opcode while the device works on it. The device
/// decides where a request runs (on the ring's worker, or on the pool when it may wait for long) from
/// the opcode; the request that runs must be the one that was routed, or a GETATTR routed to the
/// worker becomes a SETLKW that waits for a lock on the worker, and the whole queue stops with it.</summary>
public sealed class OpcodeRaceTests : IDisposable
{
    private const int RaceSlot = 1;
    private const int ProbeSlot = 2;
    private const int ControlSlot = 3;
    private const int FirstReplySlot = 4;
    private const int MaxPending = 8;

    private readonly string _share = Directory.CreateTempSubdirectory("vfsrace-").FullName;
    private readonly FuseServer _server;
    private readonly BlockingRequestPool _pool;
    private readonly VhostUserBackendHarness _harness;
    private readonly VhostUserTestGuest _guest;
    private readonly QueueFuseTransport _transport;

    public OpcodeRaceTests()
    {
        _server = new FuseServer(new PassthroughOptions { SharedDir = _share, Cache = CachePolicy.Never, PosixLocks = true });
        _pool = new BlockingRequestPool(_server, 2);
        var device = new VirtioFsDevice(_server, "racetest", requestQueues: 1, _pool);
        _harness = new VhostUserBackendHarness(device);
        _guest = new VhostUserTestGuest(queueCount: 2, queueSize: 64, slotSize: 4096);
        _harness.Frontend.Initialize(2);
        _harness.Frontend.Start(_guest.RingFeatures, _guest.MemoryRegions, _guest.Setups);
        _transport = new QueueFuseTransport(_guest);
    }

    [Fact]
    public unsafe void AnOpcodeRewrittenWhileTheDeviceRoutesItNeverParksALockWaitOnTheRing()
    {
        var client = new FuseTestClient((r, w) => _transport.RoundTrip(1, r, w)) { ReplyCapacity = 4096 };
        client.Init();
        var (entry, fh) = client.CreateOk(FuseConstants.RootId, "locked");
        client.Lock(FuseOpcode.Setlk, entry.NodeId, fh, owner: 1, Libc.F_WRLCK).Ok();

        // One request body that is valid both ways: as GETATTR (answered at once) and as SETLKW of
        // owner 2 on the whole file (waits for owner 1's lock). The guest flips the opcode's low
        // byte between the two while the device has the request.
        var q = _guest.Queue(1);
        ulong raceGpa = _guest.SlotGpa(1, RaceSlot, writable: false);
        Span<byte> race = _guest.Bytes(raceGpa, FuseInHeader.Size + FuseLkIn.Size);
        var header = new FuseInHeader { Len = (uint)race.Length, Opcode = (uint)FuseOpcode.Getattr, Unique = 1 << 20, NodeId = entry.NodeId };
        var lk = new FuseLkIn { Fh = fh, Owner = 2, Lk = new FuseFileLock { Start = 0, End = long.MaxValue, Type = (uint)Libc.F_WRLCK } };
        MemoryMarshal.Write(race, in header);
        MemoryMarshal.Write(race[FuseInHeader.Size..], in lk);
        nint opcodeAddress = (nint)Unsafe.AsPointer(ref race[4]);

        var pending = new HashSet<ushort>();
        int rounds = 0, lockResets = 0;
        bool stop = false;
        var flipper = new Thread(() =>
        {
            while (!Volatile.Read(ref stop))
            {
                // SAFETY: the address is the opcode's low byte in the guest's memfd mapping, which outlives this thread.
                byte* opcode = (byte*)opcodeAddress;
                Volatile.Write(ref *opcode, (byte)FuseOpcode.Setlkw);
                Volatile.Write(ref *opcode, (byte)FuseOpcode.Getattr);
            }
        }) { IsBackground = true, Name = "guest-flipper" };
        flipper.Start();
        try
        {
            var watch = Stopwatch.StartNew();
            while (watch.Elapsed < TimeSpan.FromSeconds(4) && rounds < 3000)
            {
                rounds++;
                ulong replyGpa = _guest.SlotGpa(1, FirstReplySlot + rounds % (MaxPending + 2), writable: true);
                int raceHead = q.TryAdd([(raceGpa, (uint)race.Length)], [(replyGpa, 4096u)]);
                Assert.True(raceHead >= 0, "no descriptors left for the racing request");
                pending.Add((ushort)raceHead);
                // Right behind it, a request the worker can only reach once the racing one is off its hands.
                var statfs = new FuseInHeader { Len = FuseInHeader.Size, Opcode = (uint)FuseOpcode.Statfs, Unique = 2, NodeId = FuseConstants.RootId };
                uint used = RoundTrip(q, ProbeSlot, statfs, [], pending);
                Assert.True(used != uint.MaxValue,
                    $"round {rounds}: the ring stopped answering: a request routed to the ring's worker ran as SETLKW there and waits for the lock");
                if (pending.Count >= MaxPending)
                {
                    // The racing requests that ran as SETLKW (on the pool) wait for owner 1: let them
                    // take the lock, then give it back to owner 1 for the next rounds.
                    Assert.NotEqual(uint.MaxValue, Lock(q, entry.NodeId, fh, owner: 1, Libc.F_UNLCK, pending));
                    var deadline = DateTime.UtcNow.AddSeconds(10);
                    while (pending.Count > 0)
                    {
                        Assert.True(DateTime.UtcNow < deadline, $"{pending.Count} SETLKW(s) did not get the freed lock");
                        Reap(q, pending, ushort.MaxValue, 100, out _);
                    }
                    Assert.NotEqual(uint.MaxValue, Lock(q, entry.NodeId, fh, owner: 2, Libc.F_UNLCK, pending));
                    Assert.NotEqual(uint.MaxValue, Lock(q, entry.NodeId, fh, owner: 1, Libc.F_WRLCK, pending));
                    lockResets++;
                }
            }
        }
        finally
        {
            Volatile.Write(ref stop, true);
            flipper.Join();
            // Ends any lock wait still running (EINTR), wherever it runs.
            _server.Reset();
        }
        Assert.True(lockResets > 0, $"in {rounds} rounds no racing request ran as SETLKW: the flips did not reach the device");
    }

    private uint Lock(DriverQueue q, ulong node, ulong fh, ulong owner, short type, HashSet<ushort> pending)
    {
        var header = new FuseInHeader { Len = FuseInHeader.Size + FuseLkIn.Size, Opcode = (uint)FuseOpcode.Setlk, Unique = 3, NodeId = node };
        var lk = new FuseLkIn { Fh = fh, Owner = owner, Lk = new FuseFileLock { Start = 0, End = long.MaxValue, Type = (uint)type } };
        byte[] args = new byte[FuseLkIn.Size];
        MemoryMarshal.Write(args, in lk);
        return RoundTrip(q, ControlSlot, header, args, pending);
    }

    /// <summary>Sends one request from <paramref name="slot"/> and waits up to 3 s for its reply, reaping
    /// racing requests that complete meanwhile. Returns the used length, or uint.MaxValue on time-out.</summary>
    private uint RoundTrip(DriverQueue q, int slot, FuseInHeader header, byte[] args, HashSet<ushort> pending)
    {
        ulong inGpa = _guest.SlotGpa(1, slot, writable: false);
        Span<byte> request = _guest.Bytes(inGpa, FuseInHeader.Size + args.Length);
        MemoryMarshal.Write(request, in header);
        args.CopyTo(request[FuseInHeader.Size..]);
        int head = q.TryAdd([(inGpa, (uint)request.Length)], [(_guest.SlotGpa(1, slot, writable: true), 4096u)]);
        Assert.True(head >= 0, "no descriptors left");
        if (q.PublishAndCheckKick())
        {
            _guest.Kick(1).Signal();
        }
        var deadline = DateTime.UtcNow.AddSeconds(3);
        while (DateTime.UtcNow < deadline)
        {
            if (Reap(q, pending, (ushort)head, 50, out uint length))
            {
                var reply = MemoryMarshal.Read<FuseOutHeader>(_guest.Bytes(_guest.SlotGpa(1, slot, writable: true), FuseOutHeader.Size));
                Assert.Equal(0, reply.Error);
                return length;
            }
        }
        return uint.MaxValue;
    }

    /// <summary>Reaps what is used; true once <paramref name="wanted"/> came back (its length in <paramref name="length"/>).</summary>
    private bool Reap(DriverQueue q, HashSet<ushort> pending, ushort wanted, int waitMs, out uint length)
    {
        length = 0;
        bool found = false;
        while (q.TryReapUsed(out ushort head, out uint len))
        {
            if (head == wanted)
            {
                found = true;
                length = len;
            }
            else
            {
                Assert.True(pending.Remove(head), $"used head {head} was not in flight");
            }
        }
        if (!found)
        {
            _guest.WaitCall(1, waitMs);
        }
        return found;
    }

    public void Dispose()
    {
        _harness.Dispose();
        _guest.Dispose();
        _pool.Dispose();
        _server.Dispose();
        Directory.Delete(_share, recursive: true);
    }
}
