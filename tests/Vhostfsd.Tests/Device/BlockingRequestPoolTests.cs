using System.Collections.Concurrent;
using Vhostfsd.Device;
using Vhostfsd.FusePassthrough;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Vhostfsd.Virtqueue;

namespace Vhostfsd.Tests.Device;

/// <summary>The blocking-request pool with no ring behind it: chains popped from a bare device queue
/// (the mock driver's), handed to the pool with a completion that only records what comes back. The
/// pool needs nothing but the <see cref="OwnedChain"/> it is given.</summary>
public sealed unsafe class BlockingRequestPoolTests : IDisposable
{
    private const ushort QueueSize = 16;
    private const int SlotBytes = 64 * 1024;

    private readonly string _share = Directory.CreateTempSubdirectory("vfspool-").FullName;
    private readonly FuseServer _server;
    private readonly BlockingRequestPool _pool;
    private readonly QueueTestMemory _memory = QueueTestMemory.Create(1 << 20);
    private readonly QueueMockDriver _driver;
    private readonly DeviceQueue _queue;
    private readonly DescriptorChain _chain = new(8);
    private readonly RecordingCompletion _completion = new();
    private readonly ulong _requestGpa;
    private readonly ulong _replyGpa;
    private int _requests;

    public BlockingRequestPoolTests()
    {
        _server = new FuseServer(new PassthroughOptions { SharedDir = _share, Cache = CachePolicy.Never });
        _pool = new BlockingRequestPool(_server, 1);
        _driver = new QueueMockDriver(_memory, QueueSize);
        _queue = _driver.CreateDeviceQueue(eventIdx: false, indirect: false);
        _requestGpa = _driver.AllocBuffer(SlotBytes);
        _replyGpa = _driver.AllocBuffer(SlotBytes);
    }

    /// <summary>Takes back chains and keeps what it was given, in order.</summary>
    private sealed class RecordingCompletion : IChainCompletion
    {
        public BlockingCollection<(DescriptorChain Chain, bool WasCurrent, uint Bytes, string? Thread)> Completed { get; } = new();

        public void Complete(in OwnedChain chain, uint bytesWritten) =>
            Completed.Add((chain.Chain, chain.IsCurrent, bytesWritten, Thread.CurrentThread.Name));
    }

    /// <summary>One request through the pool: copied into a readable guest buffer, popped as a
    /// two-descriptor chain, queued with the recording completion, and the reply copied back out
    /// once the completion came.</summary>
    private int ThroughThePool(ReadOnlySpan<IoVec> readable, ReadOnlySpan<IoVec> writable)
    {
        int length = 0;
        foreach (var v in readable)
        {
            // SAFETY: the test client's IoVecs describe its pinned buffers, valid for this call.
            _memory.Write(_requestGpa + (ulong)length, new ReadOnlySpan<byte>(v.Base, (int)v.Length));
            length += (int)v.Length;
        }
        ushort head = (ushort)(2 * _requests++ % QueueSize);
        _driver.WriteChain(head, [new VirtqDesc(_requestGpa, (uint)length, 0, 0), new VirtqDesc(_replyGpa, SlotBytes, VirtqDesc.FlagWrite, 0)]);
        _driver.PushAvail(head);
        Assert.Equal(PopResult.Popped, _queue.TryPop(_chain));
        var owned = new OwnedChain(_chain, _completion);
        var header = FuseRequestHeader.Read(owned.Readable);
        Assert.True(_pool.TryEnqueue(in owned, in header));

        Assert.True(_completion.Completed.TryTake(out var done, TimeSpan.FromSeconds(10)), "the pool did not complete the chain");
        Assert.Same(_chain, done.Chain);
        Assert.True(done.WasCurrent, "the chain was released or popped into before its completion");
        Assert.StartsWith("vhostfsd-pool-", done.Thread);
        byte[] reply = _memory.Read(_replyGpa, (int)done.Bytes);
        int at = 0;
        foreach (var v in writable)
        {
            int n = Math.Min((int)v.Length, reply.Length - at);
            reply.AsSpan(at, n).CopyTo(new Span<byte>(v.Base, n));
            at += n;
        }
        // The chain is the test's again, as it would be the ring's.
        _chain.Release();
        return (int)done.Bytes;
    }

    [Fact]
    public void RequestsRunOnThePoolAndComeBackOnceThroughTheCompletionTheyCarried()
    {
        var client = new FuseTestClient(ThroughThePool) { ReplyCapacity = SlotBytes };
        client.Init();
        var (entry, fh) = client.CreateOk(FuseConstants.RootId, "pooled");
        client.Write(entry.NodeId, fh, 0, new byte[4096]).Ok();
        client.Fsync(entry.NodeId, fh).Ok();
        client.Release(entry.NodeId, fh).Ok();

        Assert.Equal(4096, new FileInfo(Path.Combine(_share, "pooled")).Length);
        Assert.Equal(5, _requests);
        // Each chain was completed once: nothing more comes back.
        Assert.False(_completion.Completed.TryTake(out _, TimeSpan.FromMilliseconds(200)), "a chain was completed twice");
    }

    public void Dispose()
    {
        _pool.Dispose();
        _server.Dispose();
        _chain.Release();
        _memory.Dispose();
        Directory.Delete(_share, recursive: true);
    }
}
