using System.Runtime.InteropServices;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Xunit;

namespace Vhostfsd.GuestKernelShim.Tests;

/// <summary>The in-process channel's /dev/fuse semantics beyond read and write (fs/fuse/dev.c): poll and
/// FUSE_DEV_IOC_CLONE.</summary>
public class ChannelTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);
    private const ChannelPollEvents Writable = ChannelPollEvents.Out | ChannelPollEvents.WrNorm;
    private const ChannelPollEvents Readable = ChannelPollEvents.In | ChannelPollEvents.RdNorm;

    private static FuseReply SendGetattr(FuseConn conn)
    {
        var arg = new FuseGetattrIn();
        Span<byte> reply = stackalloc byte[FuseAttrOut.Size];
        return conn.Send(FuseOpcode.Getattr, 1, FuseCaller.Root, new FuseArgs(MemoryMarshal.AsBytes(new ReadOnlySpan<FuseGetattrIn>(in arg))), reply,
            FuseReplyShape.Fixed);
    }

    [Fact]
    public void PollIsReadableWhileARequestIsQueuedAndErrOnceAborted()
    {
        var channel = new InProcessChannelBackend();
        var conn = new FuseConn(channel);
        Assert.Equal(Writable, channel.Poll());
        var init = new Thread(() =>
        {
            try
            {
                conn.Init();
            }
            catch (FuseInitException)
            {
            }
        });
        init.Start();
        // A poll that waits wakes when INIT is queued.
        Assert.Equal(Writable | Readable, channel.Poll(Timeout));
        var buffer = new byte[FuseConstants.MinReadBuffer];
        Assert.True(channel.ReadRequest(buffer) > 0);
        Assert.Equal(Writable, channel.Poll());
        var sw = System.Diagnostics.Stopwatch.StartNew();
        Assert.Equal(Writable, channel.Poll(TimeSpan.FromMilliseconds(100)));
        Assert.True(sw.ElapsedMilliseconds >= 90, $"returned after {sw.ElapsedMilliseconds} ms");
        // Abort wakes a waiting poll with POLLERR alone.
        ChannelPollEvents waited = ChannelPollEvents.None;
        var poller = new Thread(() => waited = channel.Poll(System.Threading.Timeout.InfiniteTimeSpan));
        poller.Start();
        Thread.Sleep(50);
        conn.Abort();
        Assert.True(poller.Join(Timeout));
        Assert.Equal(ChannelPollEvents.Err, waited);
        Assert.Equal(ChannelPollEvents.Err, channel.Poll());
        Assert.True(init.Join(Timeout));
        conn.Dispose();
    }

    [Fact]
    public void ACloneReadsTheSameQueueAndAnswersOnlyWhatItRead()
    {
        var channel = new InProcessChannelBackend();
        using var daemon = new FakeDaemon(channel);
        using var conn = new FuseConn(channel);
        conn.Init();
        daemon.Dispose(); // from here the test reads by hand
        using var clone = channel.Clone();
        FuseReply result = default;
        var sender = new Thread(() => result = SendGetattr(conn));
        sender.Start();
        Assert.Equal(Writable | Readable, clone.Poll(Timeout));
        var buffer = new byte[FuseConstants.MinReadBuffer];
        Assert.True(clone.ReadRequest(buffer) > 0);
        var header = MemoryMarshal.Read<FuseInHeader>(buffer);
        Assert.Equal(FuseOpcode.Getattr, (FuseOpcode)header.Opcode);
        Assert.Equal(-(int)Errno.EAGAIN, channel.ReadRequest(buffer, nonBlocking: true));
        var answer = new byte[FuseOutHeader.Size + FuseAttrOut.Size];
        var oh = new FuseOutHeader { Len = (uint)answer.Length, Unique = header.Unique };
        MemoryMarshal.Write(answer, in oh);
        MemoryMarshal.Write(answer.AsSpan(FuseOutHeader.Size), new FuseAttrOut { Attr = FakeMount.Attr(1, FakeMount.Dir755) });
        // The reply belongs to the clone that read the request: the original reader does not know it.
        Assert.Equal(-(int)Errno.ENOENT, channel.WriteReply(answer));
        Assert.Equal(answer.Length, clone.WriteReply(answer));
        Assert.True(sender.Join(Timeout));
        Assert.True(result.IsOk);
    }

    [Fact]
    public void ClosingACloneEndsTheRequestsItWasProcessingWithEconnaborted()
    {
        var channel = new InProcessChannelBackend();
        using var daemon = new FakeDaemon(channel);
        using var conn = new FuseConn(channel);
        conn.Init();
        daemon.Dispose();
        var clone = channel.Clone();
        FuseReply result = default;
        var sender = new Thread(() => result = SendGetattr(conn));
        sender.Start();
        var buffer = new byte[FuseConstants.MinReadBuffer];
        Assert.True(clone.ReadRequest(buffer) > 0);
        clone.Dispose();
        Assert.True(sender.Join(Timeout));
        Assert.Equal(Errno.ECONNABORTED, result.Errno);
        Assert.Equal(ChannelPollEvents.Err, clone.Poll());
        Assert.Equal(-(int)Errno.ENODEV, clone.ReadRequest(buffer));
        // The connection lives on through the original reader.
        Assert.True(channel.IsConnected);
        var next = new Thread(() => result = SendGetattr(conn));
        next.Start();
        Assert.True(channel.ReadRequest(buffer) > 0);
        conn.Abort();
        Assert.True(next.Join(Timeout));
        Assert.Equal(Errno.ENOTCONN, result.Errno);
    }

    [Fact]
    public void AFileSystemServedThroughClonesOnSeveralThreads()
    {
        // InProcessFuseServer gives every worker after the first its own clone, as libfuse's clone_fd does.
        using var mount = new ShimInProcessMount();
        var fs = mount.Fs;
        Assert.True(mount.Server.Clones >= 1);
        var failures = 0;
        var threads = Enumerable.Range(0, 8).Select(i => new Thread(() =>
        {
            string name = $"f{i}";
            var data = new byte[10_000 + i];
            new Random(i).NextBytes(data);
            if (fs.Create(fs.Root, name, Libc.O_RDWR | Libc.O_CREAT, 0x1A4, out _, out var file) != Errno.OK
                || fs.Write(file!, data, 0, out _) != Errno.OK || fs.Release(file!) != Errno.OK
                || !File.ReadAllBytes(mount.HostPath(name)).AsSpan().SequenceEqual(data))
            {
                Interlocked.Increment(ref failures);
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
        Assert.Equal(0, failures);
    }
}
