using System.Diagnostics;
using System.Runtime.InteropServices;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Vhostfsd.VhostUser;
using Xunit;

namespace Vhostfsd.GuestKernelShim.Tests;

/// <summary>The virtio-fs transport (fs/fuse/virtio_fs.c semantics) against a vhost-user-fs device built from
/// the VhostUser back-end and FuseServer: config, queues, spreading, hiprio, full queues, daemon death.</summary>
public class VirtioFsBackendTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);

    private static VirtioFsBackendOptions Options(bool register = false, ushort queueSize = 256, bool indirect = true)
        => new() { Register = register, QueueSize = queueSize, MemorySize = 64UL << 20, UseIndirectDescriptors = indirect };

    [Fact]
    public void TagAndQueueCountComeFromTheConfigSpace()
    {
        string tag = "cfg-" + Guid.NewGuid().ToString("N")[..8];
        using var device = new TestFsDevice(requestQueues: 4, tag: tag);
        var options = Options(register: true);
        options.Tag = "ignored";
        options.NumRequestQueues = 1;
        using var backend = VirtioFsBackend.Connect(device.SocketPath, options);
        Assert.True(backend.ConfigOffered);
        Assert.Equal(tag, backend.Tag);
        Assert.Equal(4, backend.NumRequestQueues);
        Assert.Same(backend, VirtioFsDevice.Find(tag));
        Assert.NotEqual(0ul, backend.AckedFeatures & VirtioFeatures.Version1);

        // mount -t virtiofs TAG finds the device by its tag.
        using var fs = FuseFs.Mount(tag);
        Assert.Same(backend, fs.Conn.Transport);
        Assert.Equal(Errno.OK, fs.GetAttr(fs.Root, out _, force: true));
        fs.Unmount();
        backend.Dispose();
        Assert.Null(VirtioFsDevice.Find(tag));
    }

    [Fact]
    public void WithoutConfigTheCallerGivesTagAndQueueCount()
    {
        using var device = new TestFsDevice(requestQueues: 2, tag: null);
        var options = Options();
        options.Tag = "given";
        options.NumRequestQueues = 2;
        using var backend = VirtioFsBackend.Connect(device.SocketPath, options);
        Assert.False(backend.ConfigOffered);
        Assert.Equal("given", backend.Tag);
        Assert.Equal(2, backend.NumRequestQueues);
    }

    [Fact]
    public void RequestsSpreadOverRequestQueuesAndForgetsUseHiprio()
    {
        using var device = new TestFsDevice(requestQueues: 4);
        File.WriteAllText(Path.Combine(device.Dir, "f"), "x");
        using var fs = FuseFs.Mount(VirtioFsBackend.Connect(device.SocketPath, Options()));
        var backend = (VirtioFsBackend)fs.Conn.Transport;
        var threads = Enumerable.Range(0, 8).Select(n => new Thread(() =>
        {
            for (int i = 0; i < 30; i++)
            {
                Assert.Equal(Errno.OK, fs.GetAttr(fs.Root, out _, force: true));
            }
        })).ToArray();
        foreach (var t in threads)
        {
            t.Start();
        }
        foreach (var t in threads)
        {
            Assert.True(t.Join(Timeout));
        }
        Assert.Equal(Errno.OK, fs.Lookup(fs.Root, "f", out var node));
        fs.Forget(node!);
        Assert.True(fs.Conn.Quiesce(Timeout));

        var seen = device.Seen.ToArray();
        // Every request queue carried GETATTRs; the hiprio queue carried only the FORGET.
        for (int q = 1; q <= 4; q++)
        {
            Assert.Contains(seen, s => s.Queue == q && s.Opcode == FuseOpcode.Getattr);
        }
        Assert.All(seen.Where(s => s.Queue == 0), s => Assert.Contains(s.Opcode, new[] { FuseOpcode.Forget, FuseOpcode.BatchForget, FuseOpcode.Interrupt }));
        Assert.Contains(seen, s => s.Queue == 0 && s.Opcode == FuseOpcode.Forget);
        Assert.DoesNotContain(seen, s => s.Queue != 0 && s.Opcode is FuseOpcode.Forget or FuseOpcode.BatchForget);
        Assert.True(backend.CompletedOn(0) >= 1);
        Assert.Equal(0, device.Server.NodeCount - 1); // only the root left after the forget
    }

    [Fact]
    public void AFullQueueMakesSendersWaitInsteadOfFailing()
    {
        using var device = new TestFsDevice(requestQueues: 1, maxQueueSize: 1024);
        // 8 descriptors, no indirect tables: two requests of three buffers fill the ring.
        using var fs = FuseFs.Mount(VirtioFsBackend.Connect(device.SocketPath, Options(queueSize: 8, indirect: false)));
        var backend = (VirtioFsBackend)fs.Conn.Transport;
        device.Hold = (q, op) => q == 1 && op == FuseOpcode.Getattr;
        var results = new Errno[12];
        var threads = Enumerable.Range(0, results.Length).Select(i => new Thread(() => results[i] = fs.GetAttr(fs.Root, out _, force: true))).ToArray();
        foreach (var t in threads)
        {
            t.Start();
        }
        Assert.True(SpinWait.SpinUntil(() => device.HeldCount >= 2, Timeout));
        Thread.Sleep(100);
        Assert.True(device.HeldCount <= 4, $"{device.HeldCount} held");
        Assert.Contains(threads, t => t.IsAlive);
        // Release the held chains until every sender got through.
        var deadline = DateTime.UtcNow + Timeout;
        while (threads.Any(t => t.IsAlive) && DateTime.UtcNow < deadline)
        {
            device.AnswerHeld();
            Thread.Sleep(5);
        }
        device.Hold = null;
        device.AnswerHeld();
        foreach (var t in threads)
        {
            Assert.True(t.Join(Timeout));
        }
        Assert.All(results, r => Assert.Equal(Errno.OK, r));
        Assert.Equal(0, backend.InFlightOn(1));
    }

    [Fact]
    public void CancelledRequestInterruptsOnHiprioAndTakesTheLateAnswer()
    {
        using var device = new TestFsDevice(requestQueues: 1);
        using var fs = FuseFs.Mount(VirtioFsBackend.Connect(device.SocketPath, Options()));
        device.Hold = (q, op) => op == FuseOpcode.Statfs;
        using var cts = new CancellationTokenSource();
        FuseReply result = default;
        var sender = new Thread(() =>
        {
            var buffer = new byte[FuseStatfsOut.Size];
            result = fs.Conn.Send(FuseOpcode.Statfs, 1, FuseCaller.Root, buffer, FuseReplyShape.Fixed, cts.Token);
        });
        sender.Start();
        Assert.True(SpinWait.SpinUntil(() => device.HeldCount == 1, Timeout));
        ulong unique = device.Seen.Single(s => s.Opcode == FuseOpcode.Statfs).Unique;
        cts.Cancel();
        Assert.True(SpinWait.SpinUntil(() => device.Seen.Any(s => s.Opcode == FuseOpcode.Interrupt), Timeout));
        var interrupt = device.Seen.Single(s => s.Opcode == FuseOpcode.Interrupt);
        Assert.Equal(0, interrupt.Queue);
        Assert.Equal(unique | 1, interrupt.Unique);
        Assert.False(sender.Join(50));
        device.AnswerHeld(-(int)Errno.EINTR);
        Assert.True(sender.Join(Timeout));
        Assert.Equal(Errno.EINTR, result.Errno);
    }

    [Theory]
    [InlineData(2ul, FuseOutHeader.Size, 0)]              // another request's unique
    [InlineData(0ul, FuseOutHeader.Size + 200_000u, 0)]   // longer than the reply buffer
    [InlineData(0ul, 8u, 0)]                              // shorter than fuse_out_header
    [InlineData(0ul, FuseOutHeader.Size + 8u, -2)]        // an error with a payload
    public void AMalformedReplyOnTheRingIsEio(ulong uniqueDelta, uint length, int error)
    {
        using var device = new TestFsDevice(requestQueues: 1);
        using var fs = FuseFs.Mount(VirtioFsBackend.Connect(device.SocketPath, Options()));
        device.Hold = (q, op) => op == FuseOpcode.Statfs;
        FuseReply result = default;
        var sender = new Thread(() => result = fs.Conn.Send(FuseOpcode.Statfs, 1, FuseCaller.Root, new byte[FuseStatfsOut.Size], FuseReplyShape.Fixed));
        sender.Start();
        Assert.True(SpinWait.SpinUntil(() => device.HeldCount == 1, Timeout));
        device.AnswerHeldWith(unique => new FuseOutHeader { Unique = unique + uniqueDelta, Len = length, Error = error });
        Assert.True(sender.Join(Timeout));
        Assert.Equal(Errno.EIO, result.Errno);
        device.Hold = null;
        Assert.Equal(Errno.OK, fs.StatFs(fs.Root, out _));
    }

    [Fact]
    public void ADaemonThatHangsUpEndsEveryRequestWithEnotconn()
    {
        using var device = new TestFsDevice(requestQueues: 2);
        using var fs = FuseFs.Mount(VirtioFsBackend.Connect(device.SocketPath, Options()));
        device.Hold = (q, op) => op == FuseOpcode.Getattr;
        var results = new Errno[6];
        var threads = Enumerable.Range(0, results.Length).Select(i => new Thread(() => results[i] = fs.GetAttr(fs.Root, out _, force: true))).ToArray();
        foreach (var t in threads)
        {
            t.Start();
        }
        Assert.True(SpinWait.SpinUntil(() => device.HeldCount == results.Length, Timeout));
        device.Disconnect();
        foreach (var t in threads)
        {
            Assert.True(t.Join(Timeout), "a sender hangs after the daemon went away");
        }
        Assert.All(results, r => Assert.Equal(Errno.ENOTCONN, r));
        Assert.True(((VirtioFsBackend)fs.Conn.Transport).DaemonGone);
        Assert.Equal(Errno.ENOTCONN, fs.GetAttr(fs.Root, out _, force: true));
    }

    [Fact]
    public void LargeReadsAndWritesUseMaxWriteAndGuestMemoryIsReturned()
    {
        using var device = new TestFsDevice(requestQueues: 1);
        using var fs = FuseFs.Mount(VirtioFsBackend.Connect(device.SocketPath, Options()));
        var backend = (VirtioFsBackend)fs.Conn.Transport;
        Assert.Equal(1 << 20, fs.Conn.MaxWriteSize);
        var data = new byte[(3 << 20) + 12345];
        new Random(3).NextBytes(data);
        Assert.Equal(Errno.OK, fs.Create(fs.Root, "big", Libc.O_RDWR | Libc.O_CREAT, 0x1A4, out _, out var file));
        Assert.Equal(Errno.OK, fs.Write(file!, data, 0, out int written));
        Assert.Equal(data.Length, written);
        var back = new byte[data.Length];
        Assert.Equal(Errno.OK, fs.Read(file!, back, 0, out int read));
        Assert.Equal(data.Length, read);
        Assert.Equal(data, back);
        var writes = device.Seen.Where(s => s.Opcode == FuseOpcode.Write).Count();
        var reads = device.Seen.Where(s => s.Opcode == FuseOpcode.Read).Count();
        Assert.Equal(4, writes);
        Assert.Equal(4, reads);
        fs.Release(file!);
        Assert.True(fs.Conn.Quiesce(Timeout));
        Assert.True(ShimWait.HeapReturned(backend), "blocks of the request heap are still in use");
    }

    [Fact]
    public void ReplyBuffersAreSizedForEachRequest()
    {
        using var device = new TestFsDevice(requestQueues: 1);
        var content = new byte[300_000];
        new Random(7).NextBytes(content);
        File.WriteAllBytes(Path.Combine(device.Dir, "data"), content);
        var sub = Directory.CreateDirectory(Path.Combine(device.Dir, "d"));
        for (int i = 0; i < 40; i++)
        {
            File.WriteAllText(Path.Combine(sub.FullName, $"entry-{i:D3}"), "");
        }
        using var fs = FuseFs.Mount(VirtioFsBackend.Connect(device.SocketPath, Options()));
        Assert.Equal(104, FuseAttrOut.Size);

        // Fixed-size replies: fuse_out_header + the reply struct of that opcode, nothing more.
        device.Chains.Clear();
        Assert.Equal(Errno.OK, fs.GetAttr(fs.Root, out _, force: true));
        Assert.Equal(16u + 104u, (uint)OnlyChain(device, FuseOpcode.Getattr).WritableBytes);
        device.Chains.Clear();
        Assert.Equal(Errno.OK, fs.Lookup(fs.Root, "data", out var node));
        Assert.Equal((ulong)(FuseOutHeader.Size + FuseEntryOut.Size), OnlyChain(device, FuseOpcode.Lookup).WritableBytes);
        device.Chains.Clear();
        Assert.Equal(Errno.OK, fs.StatFs(fs.Root, out _));
        Assert.Equal((ulong)(FuseOutHeader.Size + FuseStatfsOut.Size), OnlyChain(device, FuseOpcode.Statfs).WritableBytes);
        device.Chains.Clear();
        Assert.Equal(Errno.OK, fs.Open(node!, Libc.O_RDONLY, out var file));
        Assert.Equal((ulong)(FuseOutHeader.Size + FuseOpenOut.Size), OnlyChain(device, FuseOpcode.Open).WritableBytes);

        // READ(n): fuse_out_header + n, on both sides of the inline limit (one buffer vs. header + data buffer).
        int[] readSizes = [1, 100, 4080, 4081, 65536, 262144];
        Assert.True(fs.Conn.MaxReadSize >= readSizes[^1], $"max read {fs.Conn.MaxReadSize}");
        foreach (int n in readSizes)
        {
            device.Chains.Clear();
            var buffer = new byte[n];
            Assert.Equal(Errno.OK, fs.Read(file!, buffer, 0, out int read));
            Assert.Equal(n, read);
            Assert.True(buffer.AsSpan().SequenceEqual(content.AsSpan(0, n)));
            var chain = OnlyChain(device, FuseOpcode.Read);
            Assert.Equal((uint)n, MemoryMarshal.Read<FuseReadIn>(chain.Args).Length);
            Assert.Equal((ulong)(FuseOutHeader.Size + n), chain.WritableBytes);
        }

        // READDIR(n) and READDIRPLUS(n): fuse_out_header + n.
        Assert.Equal(Errno.OK, fs.Lookup(fs.Root, "d", out var dirNode));
        Assert.Equal(Errno.OK, fs.OpenDir(dirNode!, out var dir));
        Assert.True(fs.Conn.MaxPages >= 16, $"max pages {fs.Conn.MaxPages}");
        foreach (var (n, plus) in new[] { (4096, false), (8192, false), (65536, false), (4096, true), (16384, true) })
        {
            device.Chains.Clear();
            var entries = new List<FuseDirEntry>();
            Assert.Equal(Errno.OK, fs.ReadDirectory(dir!, 0, entries, out _, out _, plus, n));
            Assert.NotEmpty(entries);
            var chain = OnlyChain(device, plus ? FuseOpcode.Readdirplus : FuseOpcode.Readdir);
            Assert.Equal((uint)n, MemoryMarshal.Read<FuseReadIn>(chain.Args).Length);
            Assert.Equal((ulong)(FuseOutHeader.Size + n), chain.WritableBytes);
        }
    }

    private static TestFsDevice.SeenChain OnlyChain(TestFsDevice device, FuseOpcode opcode)
    {
        var chains = device.Chains.Where(c => c.Opcode == opcode).ToArray();
        Assert.True(chains.Length == 1, $"{chains.Length} {opcode} chains seen");
        return chains[0];
    }

    [Fact]
    public void UnmountDrainsHeldRequestsThenStopsEveryQueue()
    {
        using var device = new TestFsDevice(requestQueues: 2);
        var drainTimeout = TimeSpan.FromSeconds(10);
        using var fs = FuseFs.Mount(VirtioFsBackend.Connect(device.SocketPath, Options()), connOptions: new FuseConnOptions { DrainTimeout = drainTimeout });
        var backend = (VirtioFsBackend)fs.Conn.Transport;
        Assert.Equal(Errno.OK, fs.StatFs(fs.Root, out var expected));
        Assert.True(expected.Blocks > 0);

        // The daemon answers STATFS when it arrives but the chain only comes back when the test says so.
        device.HoldAnswered = true;
        device.Hold = (q, op) => op == FuseOpcode.Statfs;
        var result = Errno.EIO;
        FuseKStatfs statfs = default;
        var caller = new Thread(() => result = fs.StatFs(fs.Root, out statfs));
        caller.Start();
        Assert.True(SpinWait.SpinUntil(() => device.HeldCount == 1, Timeout));
        int heldQueue = device.Seen.Last(s => s.Opcode == FuseOpcode.Statfs).Queue;
        Assert.NotEqual(0, heldQueue);

        var unmounter = new Thread(fs.Unmount);
        unmounter.Start();
        // DESTROY answered, connection aborted: the transport is now draining the held chain.
        Assert.True(SpinWait.SpinUntil(() => fs.Conn.IsDisconnected, Timeout));
        Assert.Contains(device.Seen, s => s.Opcode == FuseOpcode.Destroy);
        Thread.Sleep(150);
        Assert.True(unmounter.IsAlive, "unmount did not wait for the chain the daemon holds");
        Assert.True(caller.IsAlive, "the held request ended before the daemon answered it");
        Assert.Equal(1, backend.InFlightOn(heldQueue));
        Assert.Equal(0, device.ControlRequestCount(VhostUserRequest.GetVringBase));

        var sinceAnswer = Stopwatch.StartNew();
        device.AnswerHeld();
        Assert.True(caller.Join(Timeout));
        Assert.True(unmounter.Join(Timeout));
        // The drain ends with the last chain, not at its timeout.
        Assert.True(sinceAnswer.Elapsed < drainTimeout / 2, $"unmount took {sinceAnswer.Elapsed} after the answer");

        // The caller got the daemon's reply, not ENOTCONN.
        Assert.Equal(Errno.OK, result);
        Assert.Equal(expected.Blocks, statfs.Blocks);
        Assert.Equal(expected.Bsize, statfs.Bsize);

        // Every queue was stopped with GET_VRING_BASE while the session is still up (not by a disconnect).
        Assert.True(device.IsSessionActive);
        Assert.Equal(device.QueueCount, device.ControlRequestCount(VhostUserRequest.GetVringBase));
        for (int q = 0; q < device.QueueCount; q++)
        {
            Assert.False(device.IsRingStarted(q), $"queue {q} is still running");
        }
        Assert.Equal(0, backend.HeapBytesInUse);

        // The connection is over.
        Assert.False(fs.IsMounted);
        Assert.Equal(Errno.ENOTCONN, fs.GetAttr(fs.Root, out _, force: true));
        Assert.Equal(Errno.ENOTCONN, fs.StatFs(fs.Root, out _));
    }

    [Fact]
    public void DroppedNodesGoBackInABatchForgetOnHiprioOnly()
    {
        using var device = new TestFsDevice(requestQueues: 4);
        string[] names = ["a", "b", "c", "d"];
        foreach (var name in names)
        {
            File.WriteAllText(Path.Combine(device.Dir, name), name);
        }
        using var fs = FuseFs.Mount(VirtioFsBackend.Connect(device.SocketPath, Options()));
        var backend = (VirtioFsBackend)fs.Conn.Transport;
        // One thread per name: the lookups use several request queues.
        var nodes = new FuseNode?[names.Length];
        var results = new Errno[names.Length];
        var threads = Enumerable.Range(0, names.Length).Select(i => new Thread(() => results[i] = fs.Lookup(fs.Root, names[i], out nodes[i]))).ToArray();
        foreach (var t in threads)
        {
            t.Start();
        }
        foreach (var t in threads)
        {
            Assert.True(t.Join(Timeout));
        }
        Assert.All(results, r => Assert.Equal(Errno.OK, r));
        Assert.True(device.Seen.Where(s => s.Opcode == FuseOpcode.Lookup).Select(s => s.Queue).Distinct().Count() >= 2);
        Assert.Equal(1 + names.Length, device.Server.NodeCount);
        long completedOnHiprio = backend.CompletedOn(0);

        Assert.Equal(names.Length, fs.DropCaches());
        Assert.True(fs.Conn.Quiesce(Timeout));

        var forgets = device.Chains.Where(c => c.Opcode is FuseOpcode.Forget or FuseOpcode.BatchForget).ToArray();
        Assert.NotEmpty(forgets);
        Assert.All(forgets, c => Assert.Equal(0, c.Queue));
        Assert.DoesNotContain(device.Seen, s => s.Queue != 0 && s.Opcode is FuseOpcode.Forget or FuseOpcode.BatchForget);
        // One BATCH_FORGET returning each node's single lookup; like every forget it has no reply buffer.
        var batch = Assert.Single(forgets);
        Assert.Equal(FuseOpcode.BatchForget, batch.Opcode);
        Assert.Equal(0ul, batch.WritableBytes);
        var head = MemoryMarshal.Read<FuseBatchForgetIn>(batch.Args);
        Assert.Equal((uint)names.Length, head.Count);
        var returned = MemoryMarshal.Cast<byte, FuseForgetOne>(batch.Args.AsSpan(FuseBatchForgetIn.Size, names.Length * FuseForgetOne.Size)).ToArray();
        Assert.Equal(nodes.Select(n => n!.NodeId).Order(), returned.Select(f => f.NodeId).Order());
        Assert.All(returned, f => Assert.Equal(1ul, f.Nlookup));
        Assert.True(backend.CompletedOn(0) > completedOnHiprio);
        Assert.Equal(1, device.Server.NodeCount);
        Assert.Equal(1, fs.NodeCount);
    }
}

/// <summary>The transport against the reference daemon: device setup without config space, and a daemon killed
/// while requests are in flight.</summary>
[Trait("Category", "Conformance")]
public class ReferenceDaemonTransportTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);

    [Fact]
    public void DeviceComesUpWithoutConfigSpace()
    {
        using var daemon = DaemonProcess.StartReference();
        using var fs = daemon.Mount();
        var backend = (VirtioFsBackend)fs.Conn.Transport;
        Assert.False(backend.ConfigOffered);
        Assert.Equal("virtiofs", backend.Tag);
        Assert.Equal(1, backend.NumRequestQueues);
        Assert.Equal(36u, fs.Conn.Minor);
        Assert.NotEqual(0ul, backend.AckedFeatures & VirtioFeatures.Version1);
        Assert.Equal(Errno.OK, fs.GetAttr(fs.Root, out _, force: true));
    }

    [Fact]
    public void KillingTheDaemonMidRequestEndsEverythingWithEnotconn()
    {
        using var daemon = DaemonProcess.StartReference();
        using var fs = daemon.Mount();
        var backend = (VirtioFsBackend)fs.Conn.Transport;
        Assert.Equal(Errno.OK, fs.GetAttr(fs.Root, out _, force: true));
        daemon.Stop(); // SIGSTOP: requests pile up in the ring
        var results = new Errno[4];
        var threads = Enumerable.Range(0, results.Length).Select(i => new Thread(() => results[i] = fs.GetAttr(fs.Root, out _, force: true))).ToArray();
        foreach (var t in threads)
        {
            t.Start();
        }
        Assert.True(SpinWait.SpinUntil(() => backend.InFlightOn(1) == results.Length, Timeout));
        Assert.All(threads, t => Assert.True(t.IsAlive));
        daemon.Kill();
        foreach (var t in threads)
        {
            Assert.True(t.Join(Timeout), "a request hangs after the daemon was killed");
        }
        Assert.All(results, r => Assert.Equal(Errno.ENOTCONN, r));
        Assert.True(backend.DaemonGone);
        Assert.True(fs.Conn.IsDisconnected);
        Assert.Equal(Errno.ENOTCONN, fs.GetAttr(fs.Root, out _, force: true));
        fs.Unmount();
    }
}
