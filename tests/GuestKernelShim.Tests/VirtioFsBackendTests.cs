using Vhostfsd.FusePassthrough.Protocol;
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
        Assert.Equal(0, backend.HeapBytesInUse);
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
