using System.Text;
using Vhostfsd.Device;
using Vhostfsd.FusePassthrough;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Vhostfsd.VhostUser;
using Xunit;

namespace Vhostfsd.Tests.Device;

/// <summary>The virtio-fs device behind a real vhost-user back-end: FUSE requests travel through the
/// rings in memfd guest memory, over a socketpair, as a guest's would.</summary>
public sealed class VirtioFsDeviceTests : IDisposable
{
    private readonly string _share = Directory.CreateTempSubdirectory("vfsdev-").FullName;
    private readonly FuseServer _server;
    private readonly BlockingRequestPool _pool;
    private readonly VirtioFsDevice _device;
    private readonly VhostUserBackendHarness _harness;
    private readonly VhostUserTestGuest _guest;
    private readonly QueueFuseTransport _transport;

    public VirtioFsDeviceTests()
    {
        _server = new FuseServer(new PassthroughOptions { SharedDir = _share, Cache = CachePolicy.Never });
        _pool = new BlockingRequestPool(_server, 2);
        _device = new VirtioFsDevice(_server, "devtest", requestQueues: 2, _pool);
        _harness = new VhostUserBackendHarness(_device);
        _guest = new VhostUserTestGuest(queueCount: 3, queueSize: 16, slotSize: 256 * 1024);
        _harness.Frontend.Initialize(3, wantConfig: true);
        _harness.Frontend.Start(_guest.RingFeatures, _guest.MemoryRegions, _guest.Setups);
        _transport = new QueueFuseTransport(_guest);
    }

    private FuseTestClient Client(int queue) => new((r, w) => _transport.RoundTrip(queue, r, w)) { ReplyCapacity = 256 * 1024 };

    [Fact]
    public void ConfigSpaceCarriesTheTagAndRequestQueueCount()
    {
        Span<byte> config = stackalloc byte[VirtioFsConfig.Size];
        _harness.Frontend.GetConfig(0, config);
        Assert.Equal("devtest", Encoding.UTF8.GetString(config[..7]));
        Assert.Equal(0, config[7]);
        Assert.Equal(2u, BitConverter.ToUInt32(config[36..]));
        Assert.Equal(3, _device.QueueCount);
    }

    [Fact]
    public void OnlyTheRequestQueuesPollTheirRings()
    {
        // Hiprio (queue 0) carries FORGETs nobody waits for: its worker sleeps as soon as it runs dry.
        Assert.False(((IVhostUserDevice)_device).MayPoll(0));
        Assert.True(((IVhostUserDevice)_device).MayPoll(1));
        Assert.True(((IVhostUserDevice)_device).MayPoll(2));
    }

    [Fact]
    public void RequestsOnEveryRequestQueueReachTheSharedDirectory()
    {
        var q1 = Client(1);
        var init = q1.Init();
        Assert.Equal(7u, init.Major);
        Assert.True(init.Minor >= 31);
        Assert.Equal((uint)FuseServer.MaxWrite, init.MaxWrite);

        // Create and write on queue 1, read back on queue 2: one file system behind every queue.
        var (entry, fh) = q1.CreateOk(FuseConstants.RootId, "hello.txt");
        byte[] data = Encoding.UTF8.GetBytes("written through a virtqueue");
        var write = q1.Write(entry.NodeId, fh, 0, data).Ok();
        Assert.Equal((uint)data.Length, write.Read<FuseWriteOut>().Length);
        q1.Release(entry.NodeId, fh).Ok();
        Assert.Equal("written through a virtqueue", File.ReadAllText(Path.Combine(_share, "hello.txt")));

        var q2 = Client(2);
        var looked = q2.LookupOk(FuseConstants.RootId, "hello.txt");
        Assert.Equal(entry.NodeId, looked.NodeId);
        var open = q2.Open(looked.NodeId, Libc.O_RDONLY).Ok().Read<FuseOpenOut>();
        var read = q2.Read(looked.NodeId, open.Fh, 0, 4096).Ok();
        Assert.Equal(data, read.Payload);
        q2.Release(looked.NodeId, open.Fh).Ok();

        var missing = q2.Lookup(FuseConstants.RootId, "absent");
        Assert.Equal(Errno.ENOENT, missing.Errno);
    }

    [Fact]
    public void ForgetOnHiprioGetsNoReplyAndDropsTheNode()
    {
        var q1 = Client(1);
        q1.Init();
        File.WriteAllText(Path.Combine(_share, "f"), "x");
        var entry = q1.LookupOk(FuseConstants.RootId, "f");
        int nodesBefore = _server.NodeCount;

        var hiprio = Client(0);
        hiprio.Forget(entry.NodeId, 1);
        Assert.Equal(0u, _transport.LastUsedLength);
        Assert.Equal(nodesBefore - 1, _server.NodeCount);
    }

    [Fact]
    public void FsyncGoesThroughThePoolAndCompletes()
    {
        var q1 = Client(1);
        q1.Init();
        var (entry, fh) = q1.CreateOk(FuseConstants.RootId, "synced");
        q1.Write(entry.NodeId, fh, 0, new byte[8192]).Ok();
        q1.Fsync(entry.NodeId, fh).Ok();
        q1.Release(entry.NodeId, fh).Ok();
        Assert.Equal(8192, new FileInfo(Path.Combine(_share, "synced")).Length);
    }

    [Fact]
    public void BigReadsWaitingTogetherRunOnPoolThreadsAlongsideTheWorker()
    {
        var q1 = Client(1);
        q1.Init();
        byte[] content = new byte[1000 * 1024];
        new Random(5).NextBytes(content);
        File.WriteAllBytes(Path.Combine(_share, "big"), content);
        var entry = q1.LookupOk(FuseConstants.RootId, "big");
        ulong fh = q1.Open(entry.NodeId, Libc.O_RDONLY).Ok().Read<FuseOpenOut>().Fh;
        const int Big = 200 * 1024;
        const int Small = 4096;
        Assert.True(Big >= FuseRequestHandler.LargeReadBytes && Small < FuseRequestHandler.LargeReadBytes);
        // The pool's two threads are idle: nothing was queued to them yet.
        long before = _pool.HandedOffCopies;

        // One big READ alone: nothing else waits, so the worker copies it itself.
        byte[][] alone = _transport.Batch(1, [ReadRequest(entry.NodeId, fh, 0, Big, unique: 100)], Big + 64);
        AssertRead(alone[0], content, 0, Big);
        Assert.Equal(before, _pool.HandedOffCopies);

        // Small READs together stay on the worker too.
        byte[][] small = _transport.Batch(1, [ReadRequest(entry.NodeId, fh, 0, Small, 102), ReadRequest(entry.NodeId, fh, Small, Small, 104)], Small + 64);
        AssertRead(small[0], content, 0, Small);
        AssertRead(small[1], content, Small, Small);
        Assert.Equal(before, _pool.HandedOffCopies);

        // Five big READs published together: each one with another behind it goes to the pool, which
        // takes up to two per thread (one running, one waiting: two threads, four READs); the last
        // one runs on the worker. Every reply carries its own range.
        var five = new byte[5][];
        for (int i = 0; i < five.Length; i++)
        {
            five[i] = ReadRequest(entry.NodeId, fh, i * Big, Big, (ulong)(106 + 2 * i));
        }
        byte[][] replies = _transport.Batch(1, five, Big + 64);
        for (int i = 0; i < five.Length; i++)
        {
            AssertRead(replies[i], content, i * Big, Big);
        }
        Assert.Equal(before + 4, _pool.HandedOffCopies);
        q1.Release(entry.NodeId, fh).Ok();
    }

    private static byte[] ReadRequest(ulong nodeId, ulong fh, long offset, int size, ulong unique)
    {
        var header = new FuseInHeader { Len = FuseInHeader.Size + FuseReadIn.Size, Opcode = (uint)FuseOpcode.Read, Unique = unique, NodeId = nodeId };
        var read = new FuseReadIn { Fh = fh, Offset = (ulong)offset, Length = (uint)size };
        byte[] bytes = new byte[FuseInHeader.Size + FuseReadIn.Size];
        System.Runtime.InteropServices.MemoryMarshal.Write(bytes, in header);
        System.Runtime.InteropServices.MemoryMarshal.Write(bytes.AsSpan(FuseInHeader.Size), in read);
        return bytes;
    }

    private static void AssertRead(byte[] reply, byte[] content, int offset, int size)
    {
        var header = System.Runtime.InteropServices.MemoryMarshal.Read<FuseOutHeader>(reply);
        Assert.Equal(0, header.Error);
        Assert.Equal(FuseOutHeader.Size + size, reply.Length);
        Assert.True(content.AsSpan(offset, size).SequenceEqual(reply.AsSpan(FuseOutHeader.Size)), $"bytes of the READ at {offset}");
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
