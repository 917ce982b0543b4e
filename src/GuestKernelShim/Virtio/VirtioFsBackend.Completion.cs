using System.Runtime.InteropServices;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Vhostfsd.VhostUser;
using Vhostfsd.Virtqueue;

namespace Vhostfsd.GuestKernelShim;

// Completion threads (one per queue, reaping used chains on the call eventfd), the hang-up monitor, shutdown and teardown.
public sealed unsafe partial class VirtioFsBackend
{
    // ---------------------------------------------------------------- completion

    private void CompletionLoop(Queue queue)
    {
        var done = new (FuseRequest Request, uint Length)[queue.Ring.Size];
        var fds = stackalloc PollFd[2];
        try
        {
            while (true)
            {
                fds[0] = new PollFd { Fd = queue.Call.Fd, Events = Libc.POLLIN };
                fds[1] = new PollFd { Fd = _stop.Fd, Events = Libc.POLLIN };
                int n = Libc.Poll(fds, 2, 1000);
                if (n < 0 && Libc.LastErrno != Errno.EINTR)
                {
                    _options.Log?.Invoke($"virtio-fs queue {queue.Index}: poll failed: {Libc.LastErrno}");
                    return;
                }
                if ((fds[1].REvents & Libc.POLLIN) != 0)
                {
                    return;
                }
                queue.Call.Consume();
                int count = 0;
                lock (queue.Lock)
                {
                    do
                    {
                        queue.Ring.DisableCallbacks();
                        while (queue.Ring.TryReapUsed(out ushort head, out uint len))
                        {
                            var request = queue.Slots[head];
                            queue.Slots[head] = null;
                            if (request != null)
                            {
                                done[count++] = (request, len);
                            }
                        }
                    }
                    while (queue.Ring.EnableCallbacks());
                    if (count > 0 && queue.SendersWaiting > 0)
                    {
                        Monitor.PulseAll(queue.Lock);
                    }
                }
                for (int i = 0; i < count; i++)
                {
                    Finish(done[i].Request, done[i].Length);
                    done[i] = default;
                }
                Interlocked.Add(ref queue.Completed, count);
            }
        }
        catch (InvalidDataException e)
        {
            // The device broke the ring protocol: this queue cannot be trusted any more.
            _options.Log?.Invoke($"virtio-fs queue {queue.Index} is broken: {e.Message}; aborting the connection");
            ThreadPool.QueueUserWorkItem(_ => _connection?.Abort(Errno.ENOTCONN));
        }
    }

    private void Finish(FuseRequest request, uint usedLength)
    {
        var conn = Connection;
        if (request.NoReply)
        {
            if (request.IsInterrupt && usedLength >= FuseOutHeader.Size)
            {
                var answer = MemoryMarshal.Read<FuseOutHeader>(Memory(request.VirtioOut));
                if (answer.Unique == request.Unique && answer.Len == FuseOutHeader.Size)
                {
                    conn.InterruptAnswered(request.InterruptTarget, answer.Error);
                }
            }
            conn.TransportDone(request);
            return;
        }
        var header = MemoryMarshal.Read<FuseOutHeader>(Memory(request.VirtioOut));
        int capacity = request.RepliesIntoUserBuffer ? request.UserLength
            : request.VirtioOutData.IsEmpty ? request.VirtioOut.Length - FuseOutHeader.Size : request.VirtioOutData.Length;
        if (header.Unique != request.Unique || header.Len < FuseOutHeader.Size || header.Len - FuseOutHeader.Size > (uint)capacity)
        {
            _options.Log?.Invoke($"virtio-fs: malformed reply to {request.Opcode} (unique {request.Unique}): out header len {header.Len}, unique {header.Unique}, used {usedLength}");
            conn.Fail(request, Errno.EIO);
        }
        else
        {
            conn.Complete(request, header.Error, (int)(header.Len - FuseOutHeader.Size));
        }
        conn.TransportDone(request);
    }

    // ---------------------------------------------------------------- lifecycle

    private void MonitorLoop()
    {
        var fds = stackalloc PollFd[2];
        while (true)
        {
            fds[0] = new PollFd { Fd = _frontend.Channel.Socket.Fd, Events = PollRdHup };
            fds[1] = new PollFd { Fd = _stop.Fd, Events = Libc.POLLIN };
            int n = Libc.Poll(fds, 2, 1000);
            if (n < 0 && Libc.LastErrno != Errno.EINTR)
            {
                return;
            }
            if ((fds[1].REvents & Libc.POLLIN) != 0)
            {
                return;
            }
            if ((fds[0].REvents & (PollRdHup | Libc.POLLHUP | Libc.POLLERR | Libc.POLLNVAL)) != 0)
            {
                _daemonGone = true;
                _options.Log?.Invoke($"virtio-fs '{Tag}': the daemon hung up; aborting the connection");
                _connection?.Abort(Errno.ENOTCONN);
                return;
            }
        }
    }

    /// <summary>Stops the device (virtio_fs_stop_all_queues + drain): new submissions fail with ENOTCONN, waiting
    /// senders wake, chains the daemon holds get up to <paramref name="drainTimeout"/> to come back, then the
    /// queues are stopped (GET_VRING_BASE) and the completion threads end.</summary>
    public void Shutdown(TimeSpan drainTimeout)
    {
        lock (_lifecycle)
        {
            if (_queuesStopped)
            {
                return;
            }
            _stopping = true;
            _queuesStopped = true;
        }
        foreach (var queue in _queues)
        {
            lock (queue.Lock)
            {
                Monitor.PulseAll(queue.Lock);
            }
        }
        var deadline = DateTime.UtcNow + drainTimeout;
        while (!_daemonGone && DateTime.UtcNow < deadline && AnyInFlight())
        {
            Thread.Sleep(1);
        }
        if (!_daemonGone)
        {
            try
            {
                var indices = new uint[_queues.Length];
                for (int i = 0; i < indices.Length; i++)
                {
                    indices[i] = (uint)i;
                }
                // A daemon that does not answer GET_VRING_BASE in time is left behind, not waited for.
                _frontend.ReplyTimeout = drainTimeout > TimeSpan.FromSeconds(1) ? drainTimeout : TimeSpan.FromSeconds(1);
                _frontend.Stop(indices);
            }
            catch (Exception e) when (e is VhostUserProtocolException or VhostUserRequestFailedException or PosixException or IOException)
            {
                _options.Log?.Invoke($"virtio-fs '{Tag}': stopping the queues failed: {e.Message}");
            }
        }
        _stop.Signal();
        foreach (var queue in _queues)
        {
            if (queue.Completer != null && !ReferenceEquals(Thread.CurrentThread, queue.Completer))
            {
                queue.Completer.Join(TimeSpan.FromSeconds(5));
            }
        }
        _heap.Close();
    }

    private bool AnyInFlight()
    {
        foreach (var queue in _queues)
        {
            lock (queue.Lock)
            {
                if (queue.Ring.InFlight > 0)
                {
                    return true;
                }
            }
        }
        return false;
    }

    public void Dispose()
    {
        lock (_lifecycle)
        {
            if (_disposed)
            {
                return;
            }
            _disposed = true;
        }
        if (_connection != null && !_connection.IsDisconnected)
        {
            _connection.Abort(Errno.ENOTCONN, TimeSpan.Zero);
        }
        Shutdown(TimeSpan.Zero);
        _stop.Signal();
        if (!ReferenceEquals(Thread.CurrentThread, _monitor))
        {
            _monitor.Join(TimeSpan.FromSeconds(5));
        }
        VirtioFsDevice.Unregister(Tag, this);
        _frontend.Dispose();
        foreach (var queue in _queues)
        {
            lock (queue.Lock)
            {
                queue.Ring.Dispose();
            }
            queue.Kick.Dispose();
            queue.Call.Dispose();
        }
        _unmapped = true;
        _memory.Dispose();
        _memFd.Dispose();
        _stop.Dispose();
    }
}
