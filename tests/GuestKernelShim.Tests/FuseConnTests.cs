using System.Runtime.InteropServices;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Xunit;

namespace Vhostfsd.GuestKernelShim.Tests;

/// <summary>FuseConn semantics (Linux fs/fuse/dev.c, inode.c) over the in-process channel and a fake daemon.</summary>
public class FuseConnTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    private static FuseReply Getattr(FuseConn conn, ulong node, CancellationToken cancellation = default)
    {
        var arg = new FuseGetattrIn();
        Span<byte> reply = stackalloc byte[FuseAttrOut.Size];
        return conn.Send(FuseOpcode.Getattr, node, FuseCaller.Root, new FuseArgs(MemoryMarshal.AsBytes(new ReadOnlySpan<FuseGetattrIn>(in arg))),
            reply, FuseReplyShape.Fixed, cancellation);
    }

    private static FakeAnswer AttrAnswer(ulong ino = 1) => FakeAnswer.Of(new FuseAttrOut { AttrValid = 1, Attr = new FuseAttr { Ino = ino, Mode = 0x41ED, Nlink = 2 } });

    [Fact]
    public void UniquesStartAtTwoAndStepByTwo()
    {
        using var f = new FakeConnection(d => d.Handler = _ => AttrAnswer());
        for (int i = 0; i < 3; i++)
        {
            Assert.True(Getattr(f.Conn, 1).IsOk);
        }
        var uniques = f.Daemon.Seen.Select(r => r.Unique).ToArray();
        Assert.Equal(new ulong[] { 2, 4, 6, 8 }, uniques);
        Assert.Equal(FuseOpcode.Init, f.Daemon.Seen.First().Opcode);
    }

    [Fact]
    public void InitGoesFirstAndOtherRequestsWaitForItsReply()
    {
        var channel = new InProcessChannelBackend();
        using var conn = new FuseConn(channel);
        var buffer = new byte[64 * 1024];
        FuseReply early = default;
        var sender = new Thread(() => early = Getattr(conn, 1));
        sender.Start();
        Thread.Sleep(50);
        // The GETATTR sender is blocked before the channel: nothing to read yet.
        Assert.Equal(-(int)Errno.EAGAIN, channel.ReadRequest(buffer, nonBlocking: true));

        var init = new Thread(() => conn.Init());
        init.Start();
        int n = channel.ReadRequest(buffer);
        var header = MemoryMarshal.Read<FuseInHeader>(buffer);
        Assert.Equal(FuseOpcode.Init, (FuseOpcode)header.Opcode);
        Assert.Equal(FuseInHeader.Size + FuseInitIn.Size, n);
        var initIn = MemoryMarshal.Read<FuseInitIn>(buffer.AsSpan(FuseInHeader.Size));
        Assert.Equal(7u, initIn.Major);
        Assert.Equal(FuseConstants.KernelMinorVersion, initIn.Minor);
        Thread.Sleep(50);
        Assert.Equal(-(int)Errno.EAGAIN, channel.ReadRequest(buffer, nonBlocking: true));
        Assert.True(sender.IsAlive);

        var initOut = new FuseInitOut { Major = 7, Minor = 31, MaxWrite = 65536, Flags = 0 };
        Assert.Equal(FuseOutHeader.Size + FuseInitOut.Size, FakeDaemon.Answer(channel, header.Unique, FakeAnswer.Of(initOut)));
        Assert.True(init.Join(Timeout));

        n = channel.ReadRequest(buffer);
        header = MemoryMarshal.Read<FuseInHeader>(buffer);
        Assert.Equal(FuseOpcode.Getattr, (FuseOpcode)header.Opcode);
        FakeDaemon.Answer(channel, header.Unique, AttrAnswer(77));
        Assert.True(sender.Join(Timeout));
        Assert.True(early.IsOk);
        Assert.Equal(FuseAttrOut.Size, early.Length);
    }

    [Fact]
    public void NegotiatedFlagsAreRequestedAndGranted()
    {
        var granted = FuseInitFlags.AsyncRead | FuseInitFlags.BigWrites | FuseInitFlags.WritebackCache /* not asked */
            | FuseInitFlags.MaxPages | FuseInitFlags.InitExt | FuseInitFlags.Passthrough /* not asked, flags2 */ | FuseInitFlags.HasExpireOnly;
        using var f = new FakeConnection(d =>
        {
            var (lo, hi) = FuseConstants.SplitInitFlags(granted);
            d.InitOut.Flags = lo;
            d.InitOut.Flags2 = hi;
        });
        var init = f.Daemon.SeenOf(FuseOpcode.Init).Single().Arg<FuseInitIn>();
        var asked = FuseConstants.JoinInitFlags(init.Flags, init.Flags2);
        Assert.Equal(FuseConnOptions.DefaultFlags, asked);
        Assert.Equal(granted, f.Conn.GrantedFlags);
        Assert.Equal(asked & granted, f.Conn.NegotiatedFlags);
        Assert.False(f.Conn.Has(FuseInitFlags.WritebackCache));
        Assert.False(f.Conn.Has(FuseInitFlags.Passthrough));
        Assert.True(f.Conn.Has(FuseInitFlags.HasExpireOnly));
        Assert.False(f.Conn.Has(FuseInitFlags.DoReaddirplus));
    }

    [Fact]
    public void Flags2AreIgnoredWithoutInitExt()
    {
        using var f = new FakeConnection(d =>
        {
            d.InitOut.Flags = (uint)(FuseInitFlags.AsyncRead);
            d.InitOut.Flags2 = (uint)((ulong)FuseInitFlags.HasExpireOnly >> 32);
        });
        Assert.True(f.Conn.Has(FuseInitFlags.AsyncRead));
        Assert.False(f.Conn.Has(FuseInitFlags.HasExpireOnly));
    }

    [Theory]
    [InlineData(true, 1 << 20, 256, 256, 1 << 20, 1 << 20)]
    [InlineData(true, 1 << 20, 16, 256, 65536, 65536)]
    [InlineData(false, 1 << 20, 256, 256, 131072, 131072)] // no MAX_PAGES: 32 pages
    [InlineData(true, 1000, 256, 256, 4096, 1 << 20)] // max_write below a page is raised to 4096
    [InlineData(true, 1 << 20, 256, 64, 262144, 262144)] // the shim's max_pages limit wins
    public void RequestSizesFollowMaxWriteAndMaxPages(bool maxPagesFlag, int maxWrite, int maxPages, int limit, int expectedWrite, int expectedRead)
    {
        var flags = FuseConnOptions.DefaultFlags;
        if (!maxPagesFlag)
        {
            flags &= ~FuseInitFlags.MaxPages;
        }
        using var f = new FakeConnection(d =>
        {
            var (lo, hi) = FuseConstants.SplitInitFlags(flags);
            d.InitOut.Flags = lo;
            d.InitOut.Flags2 = hi;
            d.InitOut.MaxWrite = (uint)maxWrite;
            d.InitOut.MaxPages = (ushort)maxPages;
        }, new FuseConnOptions { MaxPagesLimit = limit });
        Assert.Equal(expectedWrite, f.Conn.MaxWriteSize);
        Assert.Equal(expectedRead, f.Conn.MaxReadSize);
    }

    [Fact]
    public void MaxReadMountOptionLimitsReads()
    {
        using var f = new FakeConnection(options: new FuseConnOptions { MaxRead = 8192 });
        Assert.Equal(8192, f.Conn.MaxReadSize);
        Assert.Equal(1 << 20, f.Conn.MaxWriteSize);
    }

    [Fact]
    public void InitRefusedMakesEveryRequestFailWithEconnrefused()
    {
        var channel = new InProcessChannelBackend();
        using var daemon = new FakeDaemon(channel, start: false);
        daemon.InitOut.Major = 8;
        daemon.Start();
        using var conn = new FuseConn(channel);
        var e = Assert.Throws<FuseInitException>(() => conn.Init());
        Assert.Contains("major 8", e.Message);
        Assert.True(conn.HasConnectionError);
        Assert.Equal(Errno.ECONNREFUSED, Getattr(conn, 1).Errno);
    }

    [Fact]
    public void ShortInitReplyIsRefused()
    {
        var channel = new InProcessChannelBackend();
        using var conn = new FuseConn(channel);
        var initThread = new Thread(() => Assert.Throws<FuseInitException>(() => conn.Init()));
        initThread.Start();
        // 16 bytes of init_out is below the 24 of the 7.22 format.
        var buffer = new byte[64 * 1024];
        channel.ReadRequest(buffer);
        var header = MemoryMarshal.Read<FuseInHeader>(buffer);
        Assert.Equal(FuseOutHeader.Size + 16, FakeDaemon.Answer(channel, header.Unique, FakeAnswer.Ok(new byte[16])));
        Assert.True(initThread.Join(Timeout));
        Assert.True(conn.HasConnectionError);
    }

    [Fact]
    public void BackgroundRequestsRespectMaxBackgroundAndCongestion()
    {
        var release = new ManualResetEventSlim(false);
        int concurrent = 0;
        int maxConcurrent = 0;
        var answered = new CountdownEvent(6);
        var channel = new InProcessChannelBackend();
        var daemon = new FakeDaemon(channel, start: false);
        daemon.InitOut.MaxBackground = 2;
        daemon.InitOut.CongestionThreshold = 1;
        using var conn = new FuseConn(channel);
        // Answer RELEASE on worker threads after a gate, so several can be outstanding at once.
        daemon.Handler = r =>
        {
            int now = Interlocked.Increment(ref concurrent);
            int seen;
            while ((seen = Volatile.Read(ref maxConcurrent)) < now && Interlocked.CompareExchange(ref maxConcurrent, now, seen) != seen)
            {
            }
            ulong unique = r.Unique;
            ThreadPool.QueueUserWorkItem(_ =>
            {
                release.Wait();
                Interlocked.Decrement(ref concurrent);
                FakeDaemon.Answer(channel, unique, FakeAnswer.Ok());
            });
            return FakeAnswer.Silent;
        };
        daemon.Start();
        conn.Init();
        Assert.Equal(2, conn.MaxBackground);
        Assert.Equal(1, conn.CongestionThreshold);
        var arg = new byte[FuseReleaseIn.Size];
        for (int i = 0; i < 6; i++)
        {
            Assert.Equal(0, conn.SendBackground(FuseOpcode.Release, 5, FuseCaller.Root, arg, force: true, completion: _ => answered.Signal()));
        }
        Assert.True(SpinWait.SpinUntil(() => channel.ProcessingCount == 2, Timeout));
        Thread.Sleep(50);
        Assert.Equal(2, channel.ProcessingCount);
        Assert.Equal(2, conn.ActiveBackgroundCount);
        Assert.Equal(6, conn.BackgroundCount);
        Assert.True(conn.IsCongested);
        Assert.True(conn.IsBlocked);

        // A non-forced background request waits while the connection is blocked.
        var waiter = new Thread(() => conn.SendBackground(FuseOpcode.Release, 6, FuseCaller.Root, arg, force: false));
        waiter.Start();
        Assert.False(waiter.Join(100));

        release.Set();
        Assert.True(answered.Wait(Timeout));
        Assert.True(waiter.Join(Timeout));
        Assert.True(conn.Quiesce(Timeout));
        Assert.Equal(2, maxConcurrent);
        Assert.False(conn.IsBlocked);
        Assert.False(conn.IsCongested);
        Assert.Equal(7, daemon.SeenOf(FuseOpcode.Release).Count());
        daemon.Dispose();
    }

    [Fact]
    public void CancelledRequestSendsInterruptAndTakesEintr()
    {
        using var f = new FakeConnection(d => d.Handler = r => r.Opcode == FuseOpcode.Interrupt ? FakeAnswer.Silent : FakeAnswer.Silent);
        using var cts = new CancellationTokenSource();
        FuseReply result = default;
        var sender = new Thread(() => result = Getattr(f.Conn, 1, cts.Token));
        sender.Start();
        Assert.True(SpinWait.SpinUntil(() => f.Daemon.SeenOf(FuseOpcode.Getattr).Any(), Timeout));
        var getattr = f.Daemon.SeenOf(FuseOpcode.Getattr).Single();
        cts.Cancel();
        Assert.True(SpinWait.SpinUntil(() => f.Daemon.SeenOf(FuseOpcode.Interrupt).Any(), Timeout));
        var interrupt = f.Daemon.SeenOf(FuseOpcode.Interrupt).Single();
        Assert.Equal(getattr.Unique | 1, interrupt.Unique);
        Assert.Equal(getattr.Unique, interrupt.Arg<FuseInterruptIn>().Unique);
        Assert.Equal(0ul, interrupt.Header.NodeId);
        // Still waiting: the interrupt does not end the request, the daemon's answer does.
        Assert.False(sender.Join(50));
        Assert.Equal(FuseOutHeader.Size, FakeDaemon.Answer(f.Channel, getattr.Unique, FakeAnswer.Fail(Errno.EINTR)));
        Assert.True(sender.Join(Timeout));
        Assert.Equal(Errno.EINTR, result.Errno);
        Assert.Equal(1, f.Conn.InterruptsSent);
    }

    [Fact]
    public void InterruptedRequestAcceptsALateReply()
    {
        using var f = new FakeConnection(d => d.Handler = _ => FakeAnswer.Silent);
        using var cts = new CancellationTokenSource();
        FuseReply result = default;
        var sender = new Thread(() => result = Getattr(f.Conn, 1, cts.Token));
        sender.Start();
        Assert.True(SpinWait.SpinUntil(() => f.Daemon.SeenOf(FuseOpcode.Getattr).Any(), Timeout));
        cts.Cancel();
        Assert.True(SpinWait.SpinUntil(() => f.Daemon.SeenOf(FuseOpcode.Interrupt).Any(), Timeout));
        var getattr = f.Daemon.SeenOf(FuseOpcode.Getattr).Single();
        FakeDaemon.Answer(f.Channel, getattr.Unique, AttrAnswer(42));
        Assert.True(sender.Join(Timeout));
        Assert.True(result.IsOk);
        Assert.Equal(FuseAttrOut.Size, result.Length);
    }

    [Fact]
    public void RequestCancelledBeforeTheDaemonReadsItIsWithdrawnWithEintr()
    {
        var channel = new InProcessChannelBackend();
        using var daemon = new FakeDaemon(channel);
        using var conn = new FuseConn(channel);
        conn.Init();
        daemon.Dispose(); // nobody reads any more
        using var cts = new CancellationTokenSource();
        FuseReply result = default;
        var sender = new Thread(() => result = Getattr(conn, 1, cts.Token));
        sender.Start();
        Assert.True(SpinWait.SpinUntil(() => channel.QueuedCount == 1, Timeout));
        cts.Cancel();
        Assert.True(sender.Join(Timeout));
        Assert.Equal(Errno.EINTR, result.Errno);
        Assert.Equal(0, channel.QueuedCount);
        Assert.Equal(0, conn.InterruptsSent);
        Assert.Equal(0, conn.PendingCount);
    }

    [Fact]
    public void InterruptAnsweredWithEnosysIsNeverSentAgain()
    {
        FakeConnection? fc = null;
        using var f = fc = new FakeConnection(d => d.Handler = r =>
            r.Opcode == FuseOpcode.Interrupt ? FakeAnswer.Fail(Errno.ENOSYS) : FakeAnswer.Silent);
        for (int round = 0; round < 2; round++)
        {
            using var cts = new CancellationTokenSource();
            FuseReply result = default;
            var sender = new Thread(() => result = Getattr(f.Conn, 1, cts.Token));
            sender.Start();
            Assert.True(SpinWait.SpinUntil(() => f.Daemon.SeenOf(FuseOpcode.Getattr).Count() == round + 1, Timeout));
            cts.Cancel();
            if (round == 0)
            {
                Assert.True(SpinWait.SpinUntil(() => f.Conn.NoInterrupt, Timeout));
            }
            else
            {
                Thread.Sleep(50);
            }
            var getattr = f.Daemon.SeenOf(FuseOpcode.Getattr).Last();
            FakeDaemon.Answer(f.Channel, getattr.Unique, FakeAnswer.Fail(Errno.EINTR));
            Assert.True(sender.Join(Timeout));
        }
        Assert.Single(f.Daemon.SeenOf(FuseOpcode.Interrupt));
    }

    [Fact]
    public void InterruptAnsweredWithEagainIsSentAgain()
    {
        int interrupts = 0;
        using var f = new FakeConnection(d => d.Handler = r =>
            r.Opcode == FuseOpcode.Interrupt ? (Interlocked.Increment(ref interrupts) == 1 ? FakeAnswer.Fail(Errno.EAGAIN) : FakeAnswer.Silent) : FakeAnswer.Silent);
        using var cts = new CancellationTokenSource();
        FuseReply result = default;
        var sender = new Thread(() => result = Getattr(f.Conn, 1, cts.Token));
        sender.Start();
        Assert.True(SpinWait.SpinUntil(() => f.Daemon.SeenOf(FuseOpcode.Getattr).Any(), Timeout));
        cts.Cancel();
        Assert.True(SpinWait.SpinUntil(() => f.Daemon.SeenOf(FuseOpcode.Interrupt).Count() == 2, Timeout));
        FakeDaemon.Answer(f.Channel, f.Daemon.SeenOf(FuseOpcode.Getattr).Single().Unique, FakeAnswer.Fail(Errno.EINTR));
        Assert.True(sender.Join(Timeout));
        Assert.Equal(Errno.EINTR, result.Errno);
    }

    [Fact]
    public void AbortEndsInFlightAndLaterRequestsWithEnotconn()
    {
        using var f = new FakeConnection(d => d.Handler = _ => FakeAnswer.Silent);
        var results = new FuseReply[4];
        var senders = Enumerable.Range(0, 4).Select(i => new Thread(() => results[i] = Getattr(f.Conn, 1))).ToArray();
        foreach (var t in senders)
        {
            t.Start();
        }
        Assert.True(SpinWait.SpinUntil(() => f.Daemon.SeenOf(FuseOpcode.Getattr).Count() == 4, Timeout));
        f.Conn.Abort();
        foreach (var t in senders)
        {
            Assert.True(t.Join(Timeout));
        }
        Assert.All(results, r => Assert.Equal(Errno.ENOTCONN, r.Errno));
        Assert.Equal(Errno.ENOTCONN, Getattr(f.Conn, 1).Errno);
        Assert.Equal(Errno.ENOTCONN, (Errno)(-f.Conn.SendBackground(FuseOpcode.Release, 1, FuseCaller.Root, new byte[24], force: true)));
        Assert.True(f.Conn.IsDisconnected);
        Assert.Equal(0, f.Conn.PendingCount);
        // A late answer from the daemon finds nothing: ENOENT for the writer.
        Assert.Equal(-(int)Errno.ENOENT, FakeDaemon.Answer(f.Channel, f.Daemon.SeenOf(FuseOpcode.Getattr).First().Unique, AttrAnswer()));
        // The daemon's read ends with ENODEV.
        Assert.Equal(-(int)Errno.ENODEV, f.Channel.ReadRequest(new byte[65536], nonBlocking: true));
    }

    [Fact]
    public void UnmountSendsDestroyThenDisconnects()
    {
        using var f = new FakeConnection(d => d.Handler = r => r.Opcode == FuseOpcode.Destroy ? FakeAnswer.Ok() : FakeAnswer.Fail(Errno.ENOSYS));
        f.Conn.Unmount();
        Assert.Single(f.Daemon.SeenOf(FuseOpcode.Destroy));
        Assert.Equal(FuseOpcode.Destroy, f.Daemon.Seen.Last().Opcode);
        Assert.True(f.Conn.IsDisconnected);
        Assert.Equal(Errno.ENOTCONN, Getattr(f.Conn, 1).Errno);
    }

    [Fact]
    public void ForgetsAreBatchedAndCarryTheirCounts()
    {
        using var f = new FakeConnection();
        f.Conn.QueueForget(10, 3);
        Assert.True(f.Conn.Quiesce(Timeout));
        var single = f.Daemon.SeenOf(FuseOpcode.Forget).Single();
        Assert.Equal(10ul, single.Header.NodeId);
        Assert.Equal(3ul, single.Arg<FuseForgetIn>().Nlookup);

        var many = Enumerable.Range(100, 600).Select(i => new FuseForgetOne { NodeId = (ulong)i, Nlookup = (ulong)(i % 7 + 1) }).ToArray();
        f.Conn.QueueForgets(many);
        Assert.True(f.Conn.Quiesce(Timeout));
        var batches = f.Daemon.SeenOf(FuseOpcode.BatchForget).ToArray();
        Assert.Equal(3, batches.Length); // 253 + 253 + 94
        var seen = new List<FuseForgetOne>();
        foreach (var b in batches)
        {
            var head = b.Arg<FuseBatchForgetIn>();
            Assert.Equal(FuseBatchForgetIn.Size + head.Count * FuseForgetOne.Size, (uint)b.Args.Length);
            seen.AddRange(MemoryMarshal.Cast<byte, FuseForgetOne>(b.Args.AsSpan(FuseBatchForgetIn.Size)).ToArray());
        }
        Assert.Equal(many.Select(x => (x.NodeId, x.Nlookup)), seen.Select(x => (x.NodeId, x.Nlookup)));
        Assert.Equal(0, f.Conn.PendingCount);
    }

    [Fact]
    public void MalformedRepliesEndTheRequestWithEioAndTheWriterWithEinval()
    {
        using var f = new FakeConnection(d => d.Handler = _ => FakeAnswer.Silent);
        FuseReply result = default;
        var sender = new Thread(() => result = Getattr(f.Conn, 1));
        sender.Start();
        Assert.True(SpinWait.SpinUntil(() => f.Daemon.SeenOf(FuseOpcode.Getattr).Any(), Timeout));
        ulong unique = f.Daemon.SeenOf(FuseOpcode.Getattr).Single().Unique;
        // Shorter than a header; len disagreeing with the write; error out of range: refused, request untouched.
        Assert.Equal(-(int)Errno.EINVAL, f.Channel.WriteReply(new byte[8]));
        var bad = new byte[FuseOutHeader.Size];
        MemoryMarshal.Write(bad, new FuseOutHeader { Len = 99, Unique = unique });
        Assert.Equal(-(int)Errno.EINVAL, f.Channel.WriteReply(bad));
        MemoryMarshal.Write(bad, new FuseOutHeader { Len = FuseOutHeader.Size, Unique = unique, Error = 5 });
        Assert.Equal(-(int)Errno.EINVAL, f.Channel.WriteReply(bad));
        MemoryMarshal.Write(bad, new FuseOutHeader { Len = FuseOutHeader.Size, Unique = unique, Error = -4096 });
        Assert.Equal(-(int)Errno.EINVAL, f.Channel.WriteReply(bad));
        // Unknown unique: ENOENT.
        Assert.Equal(-(int)Errno.ENOENT, FakeDaemon.Answer(f.Channel, unique + 1000, AttrAnswer()));
        Assert.False(sender.Join(20));
        // A fixed-size reply of the wrong size: EINVAL for the writer, EIO for the request.
        Assert.Equal(-(int)Errno.EINVAL, FakeDaemon.Answer(f.Channel, unique, FakeAnswer.Ok(new byte[FuseAttrOut.Size - 8])));
        Assert.True(sender.Join(Timeout));
        Assert.Equal(Errno.EIO, result.Errno);
        // The request is gone: a second answer is ENOENT.
        Assert.Equal(-(int)Errno.ENOENT, FakeDaemon.Answer(f.Channel, unique, AttrAnswer()));
    }

    [Fact]
    public void ReplyLongerThanTheBufferIsEio()
    {
        using var f = new FakeConnection(d => d.Handler = _ => FakeAnswer.Ok(new byte[200]));
        var arg = new FuseReadIn { Length = 100 };
        var reply = new byte[100];
        var result = f.Conn.Send(FuseOpcode.Read, 5, FuseCaller.Root, new FuseArgs(MemoryMarshal.AsBytes(new ReadOnlySpan<FuseReadIn>(in arg))), reply);
        Assert.Equal(Errno.EIO, result.Errno);
        Assert.Equal(-(int)Errno.EINVAL, f.Daemon.WriteResults.Last());
    }

    [Fact]
    public void VariableReplyMayBeShort()
    {
        using var f = new FakeConnection(d => d.Handler = _ => FakeAnswer.Ok("hello"u8.ToArray()));
        var reply = new byte[100];
        var result = f.Conn.Send(FuseOpcode.Readlink, 5, FuseCaller.Root, reply);
        Assert.True(result.IsOk);
        Assert.Equal("hello", System.Text.Encoding.ASCII.GetString(reply, 0, result.Length));
    }

    [Fact]
    public void ErrorReplyWithPayloadIsRefused()
    {
        using var f = new FakeConnection(d => d.Handler = _ => FakeAnswer.Silent);
        FuseReply result = default;
        var sender = new Thread(() => result = Getattr(f.Conn, 1));
        sender.Start();
        Assert.True(SpinWait.SpinUntil(() => f.Daemon.SeenOf(FuseOpcode.Getattr).Any(), Timeout));
        ulong unique = f.Daemon.SeenOf(FuseOpcode.Getattr).Single().Unique;
        var message = new byte[FuseOutHeader.Size + 8];
        MemoryMarshal.Write(message, new FuseOutHeader { Len = (uint)message.Length, Unique = unique, Error = -2 });
        Assert.Equal(-(int)Errno.EINVAL, f.Channel.WriteReply(message));
        Assert.True(sender.Join(Timeout));
        Assert.Equal(Errno.EIO, result.Errno);
    }

    [Fact]
    public void ChannelReadSemantics()
    {
        var channel = new InProcessChannelBackend();
        using var conn = new FuseConn(channel);
        Assert.Equal(-(int)Errno.EINVAL, channel.ReadRequest(new byte[4096]));
        Assert.Equal(-(int)Errno.EAGAIN, channel.ReadRequest(new byte[8192], nonBlocking: true));
        using var cts = new CancellationTokenSource(50);
        Assert.Equal(-(int)Errno.EINTR, channel.ReadRequest(new byte[8192], cancellation: cts.Token));
    }

    [Fact]
    public void RequestLargerThanTheReadBufferFailsWithEioAndTheNextIsRead()
    {
        var channel = new InProcessChannelBackend();
        using var daemon = new FakeDaemon(channel);
        using var conn = new FuseConn(channel);
        conn.Init();
        daemon.Dispose();
        FuseReply big = default;
        var sender = new Thread(() =>
        {
            var data = new byte[20000];
            var arg = new FuseWriteIn { Length = (uint)data.Length };
            Span<byte> reply = stackalloc byte[FuseWriteOut.Size];
            big = conn.Send(FuseOpcode.Write, 5, FuseCaller.Root, new FuseArgs(MemoryMarshal.AsBytes(new ReadOnlySpan<FuseWriteIn>(in arg)), data), reply, FuseReplyShape.Fixed);
        });
        sender.Start();
        Assert.True(SpinWait.SpinUntil(() => channel.QueuedCount == 1, Timeout));
        conn.QueueForget(9, 1);
        Assert.True(SpinWait.SpinUntil(() => channel.QueuedCount == 2, Timeout));
        var buffer = new byte[16384];
        // The forget goes first (forgets before ordinary requests); then the WRITE does not fit.
        int n = channel.ReadRequest(buffer);
        Assert.Equal(FuseOpcode.Forget, (FuseOpcode)MemoryMarshal.Read<FuseInHeader>(buffer).Opcode);
        Assert.Equal(FuseInHeader.Size + FuseForgetIn.Size, n);
        Assert.Equal(-(int)Errno.EAGAIN, channel.ReadRequest(buffer, nonBlocking: true));
        Assert.True(sender.Join(Timeout));
        Assert.Equal(Errno.EIO, big.Errno);
    }

    [Fact]
    public void ManyThreadsShareTheConnection()
    {
        using var f = new FakeConnection(d => d.Handler = r => AttrAnswer(r.Header.NodeId));
        int failures = 0;
        var threads = Enumerable.Range(0, 16).Select(t => new Thread(() =>
        {
            Span<byte> reply = stackalloc byte[FuseAttrOut.Size];
            var arg = new FuseGetattrIn();
            for (int i = 0; i < 200; i++)
            {
                ulong node = (ulong)(t * 1000 + i + 2);
                var r = f.Conn.Send(FuseOpcode.Getattr, node, FuseCaller.Root, new FuseArgs(MemoryMarshal.AsBytes(new ReadOnlySpan<FuseGetattrIn>(in arg))), reply, FuseReplyShape.Fixed);
                if (!r.IsOk || MemoryMarshal.Read<FuseAttrOut>(reply).Attr.Ino != node)
                {
                    Interlocked.Increment(ref failures);
                }
            }
        })).ToArray();
        foreach (var t in threads)
        {
            t.Start();
        }
        foreach (var t in threads)
        {
            Assert.True(t.Join(TimeSpan.FromSeconds(60)));
        }
        Assert.Equal(0, failures);
        var uniques = f.Daemon.Seen.Select(r => r.Unique).ToArray();
        Assert.Equal(uniques.Length, uniques.Distinct().Count());
        Assert.All(uniques, u => Assert.Equal(0ul, u & 1));
    }
}
