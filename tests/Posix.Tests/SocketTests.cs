using Vhostfsd.Posix;
using Xunit;

namespace Vhostfsd.Posix.Tests;

public unsafe class SocketTests
{
    [Fact]
    public void FdsPassOverSocketPairAndStayUsable()
    {
        var (a, b) = UnixSocket.Pair();
        using (a)
        using (b)
        using (var ev = EventFd.Create(nonBlocking: true))
        using (var mem = MemFd.Create("t", 4096))
        {
            a.Send("hello"u8, [ev.Fd, mem.Fd]);
            Span<byte> buf = stackalloc byte[16];
            Span<int> fds = stackalloc int[UnixSocket.MaxFds];
            int n = b.Receive(buf, fds, out int count, out bool truncated);
            Assert.Equal(5, n);
            Assert.Equal("hello"u8.ToArray(), buf[..n].ToArray());
            Assert.Equal(2, count);
            Assert.False(truncated);

            // The received eventfd is the same object: a signal through it is seen on the original.
            using var received = new EventFd(new SafeFd(fds[0]));
            Assert.NotEqual(ev.Fd, received.Fd);
            Assert.Equal(0, received.Signal());
            Assert.Equal(1, ev.Consume());
            Assert.Equal(0, ev.Consume());

            // The received memfd maps the same pages.
            using var memCopy = new SafeFd(fds[1]);
            using var m1 = MemoryMapping.MapShared(mem.Fd, 4096, 0);
            using var m2 = MemoryMapping.MapShared(memCopy.Fd, 4096, 0);
            *(int*)m1.Address = 0x12345678;
            Assert.Equal(0x12345678, *(int*)m2.Address);

            // Received descriptors are close-on-exec.
            Assert.Equal(Libc.FD_CLOEXEC, Libc.Fcntl(memCopy.Fd, Libc.F_GETFD, 0) & Libc.FD_CLOEXEC);
        }
    }

    [Fact]
    public void ExtraFdsBeyondTheSpanAreClosedAndReported()
    {
        var (a, b) = UnixSocket.Pair();
        using (a)
        using (b)
        using (var e1 = EventFd.Create())
        using (var e2 = EventFd.Create())
        using (var e3 = EventFd.Create())
        {
            a.Send([1], [e1.Fd, e2.Fd, e3.Fd]);
            Span<byte> buf = stackalloc byte[4];
            Span<int> fds = stackalloc int[1];
            int n = b.Receive(buf, fds, out int count, out bool truncated);
            Assert.Equal(1, n);
            Assert.Equal(1, count);
            Assert.True(truncated);
            Libc.Close(fds[0]);
        }
    }

    [Fact]
    public void ListenAcceptConnectOverPath()
    {
        string dir = Directory.CreateTempSubdirectory("posix-").FullName;
        string path = Path.Combine(dir, "s.sock");
        try
        {
            using var listener = UnixSocket.Listen(path);
            var connectTask = Task.Run(() => UnixSocket.Connect(path));
            using var server = listener.Accept();
            using var client = connectTask.Result;
            client.Send("ping"u8);
            Span<byte> got = stackalloc byte[4];
            Assert.True(server.ReceiveExactly(got));
            Assert.Equal("ping"u8.ToArray(), got.ToArray());
            Assert.Equal(Libc.GetPid(), server.PeerCredentials().Pid);
            client.Dispose();
            Assert.False(server.ReceiveExactly(got));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    [Fact]
    public void TooLongSocketPathIsRejectedWithAClearMessage()
    {
        var ex = Assert.Throws<ArgumentException>(() => UnixSocket.Listen("/tmp/" + new string('x', 200)));
        Assert.Contains("socket path", ex.Message);
    }

    [Fact]
    public void ErrnoIsReportedByName()
    {
        int r = Libc.Close(-1);
        Assert.Equal(-1, r);
        Assert.Equal(Errno.EBADF, Libc.LastErrno);
        var ex = new PosixException("close", Errno.EBADF);
        Assert.Contains("EBADF", ex.Message);
        Assert.Contains("Bad file descriptor", ex.Message);
    }

    [Fact]
    public void EpollReportsAReadyEventFd()
    {
        using var ep = new Epoll();
        using var ev = EventFd.Create(nonBlocking: true);
        ep.Add(ev.Fd, Libc.EPOLLIN, 42);
        Span<EpollEvent> events = stackalloc EpollEvent[4];
        Assert.Equal(0, ep.Wait(events, 0));
        ev.Signal();
        Assert.Equal(1, ep.Wait(events, 1000));
        Assert.Equal(42UL, events[0].Data);
    }
}
