using Vhostfsd.Posix;

namespace Vhostfsd.Tests;

public class ShutdownLatchTests
{
    [Fact]
    public void A_watcher_woken_by_its_socket_already_sees_the_request()
    {
        // The serving thread tells "stopped on a signal" from "the front-end went away" by asking
        // IsRequested right after its socket reads end-of-file; the request must be visible by then.
        // The window is short, so the check is repeated.
        int missed = 0;
        for (int i = 0; i < 300; i++)
        {
            var latch = new ShutdownLatch();
            var (served, peer) = UnixSocket.Pair();
            using (served)
            using (peer)
            using (latch.ShutDownOnRequest(served))
            {
                bool seen = true;
                var watcher = new Thread(() =>
                {
                    Assert.False(served.ReceiveExactly(new byte[1]));
                    seen = latch.IsRequested;
                });
                watcher.Start();
                latch.Request("SIGTERM");
                watcher.Join();
                if (!seen)
                {
                    missed++;
                }
            }
        }
        Assert.Equal(0, missed);
    }

    [Fact]
    public void The_first_reason_is_kept_and_every_watcher_is_told()
    {
        var latch = new ShutdownLatch();
        Assert.False(latch.IsRequested);
        Assert.Null(latch.Reason);
        var (served, peer) = UnixSocket.Pair();
        using var _ = served;
        using var __ = peer;
        using var registration = latch.ShutDownOnRequest(served);

        latch.Request("SIGHUP");
        latch.Request("SIGTERM");

        Assert.True(latch.IsRequested);
        Assert.Equal("SIGHUP", latch.Reason);
        Assert.True(latch.Token.IsCancellationRequested);
        Assert.True(Readable(latch.WakeFd));
        Assert.False(served.ReceiveExactly(new byte[1]));
    }

    [Fact]
    public void A_socket_registered_after_the_request_is_shut_down_at_once_and_one_unregistered_is_left_alone()
    {
        var latch = new ShutdownLatch();
        var (left, leftPeer) = UnixSocket.Pair();
        using var _ = left;
        using var __ = leftPeer;
        latch.ShutDownOnRequest(left).Dispose();
        latch.Request("SIGINT");
        leftPeer.Send(new byte[] { 7 });
        var one = new byte[1];
        Assert.True(left.ReceiveExactly(one));
        Assert.Equal(7, one[0]);

        var (late, latePeer) = UnixSocket.Pair();
        using var ___ = late;
        using var ____ = latePeer;
        using (latch.ShutDownOnRequest(late))
        {
            Assert.False(late.ReceiveExactly(new byte[1]));
        }
    }

    private static unsafe bool Readable(int fd)
    {
        var poll = new PollFd { Fd = fd, Events = Libc.POLLIN };
        return Libc.Poll(&poll, 1, 0) == 1 && (poll.REvents & Libc.POLLIN) != 0;
    }
}
