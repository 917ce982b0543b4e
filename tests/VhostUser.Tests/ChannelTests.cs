using Vhostfsd.Posix;
using Vhostfsd.VhostUser;
using Xunit;

namespace Vhostfsd.VhostUser.Tests;

/// <summary>Framing: header checks, payload bounds per request, fd rules.</summary>
public sealed class ChannelTests : IDisposable
{
    private readonly VhostUserChannel _front;
    private readonly VhostUserChannel _back;
    private readonly VhostUserMessage _message = new();

    public ChannelTests()
    {
        var (a, b) = UnixSocket.Pair();
        _front = new VhostUserChannel(a);
        _back = new VhostUserChannel(b);
    }

    public void Dispose()
    {
        _message.CloseFds();
        _front.Dispose();
        _back.Dispose();
    }

    private static byte[] U64(ulong value) => BitConverter.GetBytes(value);

    [Fact]
    public void ReceivesHeaderPayloadAndFds()
    {
        using var e1 = EventFd.Create();
        _front.Send((uint)VhostUserRequest.SetVringKick, VhostUserHeaderFlags.NeedReply, U64(3), [e1.Fd]);
        Assert.True(_back.ReceiveRequest(_message));
        Assert.Equal(VhostUserRequest.SetVringKick, _message.Request);
        Assert.True(_message.Header.NeedsReply);
        Assert.Equal(3UL, _message.Read<ulong>());
        Assert.Equal(1, _message.FdCount);
        using var kick = _message.TakeFd(0);
        Assert.NotEqual(e1.Fd, kick.Fd);
        // The received fd is the same eventfd: a signal through it is visible on the original.
        using var received = new EventFd(new SafeFd(Libc.Dup(kick.Fd)));
        Assert.Equal(0, received.Signal());
        Assert.Equal(1, e1.Consume());
    }

    [Fact]
    public void ConsecutiveMessagesKeepTheirOwnFds()
    {
        using var e1 = EventFd.Create();
        using var e2 = EventFd.Create();
        _front.Send((uint)VhostUserRequest.SetVringCall, 0, U64(0), [e1.Fd]);
        _front.Send((uint)VhostUserRequest.GetFeatures, 0, default);
        _front.Send((uint)VhostUserRequest.SetVringCall, 0, U64(1), [e2.Fd]);
        Assert.True(_back.ReceiveRequest(_message));
        Assert.Equal(1, _message.FdCount);
        Assert.True(_back.ReceiveRequest(_message));
        Assert.Equal(VhostUserRequest.GetFeatures, _message.Request);
        Assert.Equal(0, _message.FdCount);
        Assert.True(_back.ReceiveRequest(_message));
        Assert.Equal(1UL, _message.Read<ulong>());
        Assert.Equal(1, _message.FdCount);
    }

    [Fact]
    public void CleanCloseBetweenMessagesIsNotAnError()
    {
        _front.Socket.ShutdownBoth();
        Assert.False(_back.ReceiveRequest(_message));
    }

    [Theory]
    [InlineData(0x0u)]   // version 0
    [InlineData(0x2u)]   // version 2
    [InlineData(0x11u)]  // reserved bit 4
    [InlineData(0x5u)]   // reply flag on a request
    public void BadFlagsAreProtocolErrors(uint flags)
    {
        _front.SendRaw(new VhostUserHeader { Request = (uint)VhostUserRequest.GetFeatures, Flags = flags }, default);
        var e = Assert.Throws<VhostUserProtocolException>(() => _back.ReceiveRequest(_message));
        Assert.Contains("header", e.Message);
    }

    [Fact]
    public void OversizedPayloadIsRejectedBeforeReadingIt()
    {
        _front.SendRaw(new VhostUserHeader { Request = 99, Flags = 1, PayloadSize = 0x100000 }, default);
        var e = Assert.Throws<VhostUserProtocolException>(() => _back.ReceiveRequest(_message));
        Assert.Contains("oversized", e.Message);
    }

    [Theory]
    [InlineData(VhostUserRequest.SetFeatures, 4)]
    [InlineData(VhostUserRequest.SetFeatures, 16)]
    [InlineData(VhostUserRequest.GetFeatures, 8)]
    [InlineData(VhostUserRequest.SetVringAddr, 32)]
    [InlineData(VhostUserRequest.AddMemReg, 32)]
    [InlineData(VhostUserRequest.SetMemTable, 4)]
    [InlineData(VhostUserRequest.SetMemTable, 272)]
    [InlineData(VhostUserRequest.GetConfig, 8)]
    public void PayloadSizeOutsideTheRequestBoundsIsAProtocolError(VhostUserRequest request, int size)
    {
        _front.SendRaw(new VhostUserHeader { Request = (uint)request, Flags = 1, PayloadSize = (uint)size }, new byte[size]);
        var e = Assert.Throws<VhostUserProtocolException>(() => _back.ReceiveRequest(_message));
        Assert.Contains("payload size", e.Message);
    }

    [Fact]
    public void KickWithoutFdAndWithoutTheNoFdFlagIsAnFdMismatch()
    {
        _front.Send((uint)VhostUserRequest.SetVringKick, 0, U64(0));
        var e = Assert.Throws<VhostUserProtocolException>(() => _back.ReceiveRequest(_message));
        Assert.Contains("fd count mismatch", e.Message);
    }

    [Fact]
    public void KickWithTheNoFdFlagAndAnFdIsAnFdMismatchAndTheFdIsClosed()
    {
        using var e1 = EventFd.Create();
        _front.Send((uint)VhostUserRequest.SetVringKick, 0, U64(0x100), [e1.Fd]);
        Assert.Throws<VhostUserProtocolException>(() => _back.ReceiveRequest(_message));
        Assert.Equal(0, _message.FdCount);
    }

    [Fact]
    public void MemTableFdCountMustMatchTheRegions()
    {
        using var e1 = EventFd.Create();
        var payload = new byte[MemoryTable.PayloadSize(2)];
        Wire.Write(payload, new MemoryTableHeader { NumRegions = 2 });
        _front.Send((uint)VhostUserRequest.SetMemTable, 0, payload, [e1.Fd]);
        var e = Assert.Throws<VhostUserProtocolException>(() => _back.ReceiveRequest(_message));
        Assert.Contains("2 regions and 1 fds", e.Message);
    }

    [Fact]
    public void FdsOnARequestThatTakesNoneAreAProtocolError()
    {
        using var e1 = EventFd.Create();
        _front.Send((uint)VhostUserRequest.SetOwner, 0, default, [e1.Fd]);
        var e = Assert.Throws<VhostUserProtocolException>(() => _back.ReceiveRequest(_message));
        Assert.Contains("takes none", e.Message);
    }

    [Fact]
    public void UnknownRequestsAreFramedAndTheirFdsAreKeptForClosing()
    {
        using var e1 = EventFd.Create();
        _front.Send(200, VhostUserHeaderFlags.NeedReply, new byte[100], [e1.Fd]);
        Assert.True(_back.ReceiveRequest(_message));
        Assert.Equal(200u, _message.Header.Request);
        Assert.Equal(100, _message.Payload.Length);
        Assert.Equal(1, _message.FdCount);
        _message.CloseFds();
        Assert.Equal(0, _message.FdCount);
    }

    [Fact]
    public void ReplyMustMatchTheRequest()
    {
        _back.SendReplyU64((uint)VhostUserRequest.GetFeatures, 7);
        var e = Assert.Throws<VhostUserProtocolException>(() => _front.ReceiveReply(_message, (uint)VhostUserRequest.GetProtocolFeatures));
        Assert.Contains("expected a reply", e.Message);
    }

    [Fact]
    public void ReplyRoundTrip()
    {
        _back.SendReplyU64((uint)VhostUserRequest.GetFeatures, 0x1_4000_0000);
        _front.ReceiveReply(_message, (uint)VhostUserRequest.GetFeatures);
        Assert.True(_message.Header.IsReply);
        Assert.Equal(0x1_4000_0000UL, _message.Read<ulong>());
    }

    [Fact]
    public void PeerClosingMidHeaderIsAProtocolError()
    {
        _front.Socket.Send(new byte[] { 1, 0, 0, 0, 1 });
        _front.Socket.ShutdownBoth();
        Assert.Throws<VhostUserProtocolException>(() => _back.ReceiveRequest(_message));
    }
}
