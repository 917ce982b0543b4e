using System.Runtime.InteropServices;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.GuestKernelShim;

/// <summary>A FUSE transport with the semantics of /dev/fuse, in process: the daemon side reads one
/// request at a time with <see cref="ReadRequest"/> and answers with <see cref="WriteReply"/>. It lets a
/// FUSE server (FusePassthrough's dispatcher, or a test's fake daemon) be driven without sockets.</summary>
/// <remarks>
/// As fs/fuse/dev.c: interrupts are read before forgets and forgets before ordinary requests; a read
/// buffer smaller than FUSE_MIN_READ_BUFFER is EINVAL; a request larger than the buffer ends with EIO
/// (E2BIG for SETXATTR) and the next one is read; a non-blocking read with nothing queued is EAGAIN; a
/// read after the connection was aborted is ENODEV. A reply shorter than fuse_out_header, whose len
/// disagrees with the bytes written, or whose error is out of range is EINVAL; a reply for a unique that
/// is not being processed is ENOENT; a reply that does not fit its request ends that request with EIO
/// and is EINVAL for the writer.
/// </remarks>
public sealed class InProcessChannelBackend : IFuseTransport
{
    private readonly object _lock = new();
    private readonly LinkedList<FuseRequest> _pending = new();
    private readonly LinkedList<FuseRequest> _interrupts = new();
    private readonly LinkedList<FuseRequest> _forgets = new();
    private readonly Dictionary<ulong, FuseRequest> _processing = new();
    private FuseConn? _connection;
    private bool _connected = true;
    private int _readersWaiting;

    /// <param name="maxPagesLimit">Most pages per request (Linux's fuse_max_pages_limit default is 256).</param>
    public InProcessChannelBackend(int maxPagesLimit = 256)
    {
        MaxPagesLimit = maxPagesLimit;
    }

    public string Name => "in-process";

    public int MaxPagesLimit { get; }

    /// <summary>False once the connection was aborted.</summary>
    public bool IsConnected
    {
        get
        {
            lock (_lock)
            {
                return _connected;
            }
        }
    }

    /// <summary>Requests queued and not yet read (all three lists).</summary>
    public int QueuedCount
    {
        get
        {
            lock (_lock)
            {
                return _pending.Count + _interrupts.Count + _forgets.Count;
            }
        }
    }

    /// <summary>Requests read and not yet answered.</summary>
    public int ProcessingCount
    {
        get
        {
            lock (_lock)
            {
                return _processing.Count;
            }
        }
    }

    public void Attach(FuseConn connection)
    {
        if (_connection != null)
        {
            throw new InvalidOperationException("the channel already belongs to a connection");
        }
        _connection = connection;
    }

    private FuseConn Connection => _connection ?? throw new InvalidOperationException("the channel is not attached to a connection");

    public int Submit(FuseRequest request, ReadOnlySpan<byte> header, scoped in FuseArgs args)
    {
        // WRITE data from a user buffer follows the arguments, as it does in the message read from /dev/fuse.
        int userData = request.UserPayloadLength;
        int length = header.Length + args.TotalLength + userData;
        if (request.ChannelRequest.Length < length)
        {
            request.ChannelRequest = new byte[Math.Max(length, 256)];
        }
        header.CopyTo(request.ChannelRequest);
        int written = header.Length + args.CopyTo(request.ChannelRequest.AsSpan(header.Length));
        if (userData > 0)
        {
            request.UserBuffer!.PayloadSpan(request.UserOffset, userData).CopyTo(request.ChannelRequest.AsSpan(written));
        }
        request.RequestLength = length;
        // A READ into a user buffer: the reply is written straight into it (no reply array).
        if (request.ReplyCapacity > 0 && !request.RepliesIntoUserBuffer && request.ChannelReply.Length < request.ReplyCapacity)
        {
            request.ChannelReply = new byte[request.ReplyCapacity];
        }
        lock (_lock)
        {
            if (!_connected)
            {
                return -(int)Errno.ENOTCONN;
            }
            request.ChannelRead = false;
            var list = request.IsInterrupt ? _interrupts : request.NoReply ? _forgets : _pending;
            list.AddLast(request);
            if (_readersWaiting > 0)
            {
                Monitor.PulseAll(_lock);
            }
        }
        return 0;
    }

    public bool TryWithdraw(FuseRequest request)
    {
        lock (_lock)
        {
            if (request.ChannelRead || !_pending.Remove(request))
            {
                return false;
            }
            return true;
        }
    }

    public void CopyReply(FuseRequest request, Span<byte> destination)
        => request.ChannelReply.AsSpan(0, destination.Length).CopyTo(destination);

    public void ReleaseBuffers(FuseRequest request)
    {
        // The arrays stay with the pooled request for its next use.
    }

    /// <summary>Reads the next request into <paramref name="buffer"/> (read(2) on /dev/fuse). Returns its
    /// length, or a negative errno: EINVAL (buffer below FUSE_MIN_READ_BUFFER), EAGAIN (non-blocking and
    /// nothing queued), ENODEV (aborted), EINTR (<paramref name="cancellation"/> fired).</summary>
    public int ReadRequest(Span<byte> buffer, bool nonBlocking = false, CancellationToken cancellation = default)
    {
        if (buffer.Length < FuseConstants.MinReadBuffer)
        {
            return -(int)Errno.EINVAL;
        }
        using var registration = cancellation.CanBeCanceled
            ? cancellation.Register(static state => { var self = (InProcessChannelBackend)state!; lock (self._lock) { Monitor.PulseAll(self._lock); } }, this)
            : default;
        while (true)
        {
            FuseRequest? request;
            lock (_lock)
            {
                while (true)
                {
                    if (!_connected)
                    {
                        return -(int)Errno.ENODEV;
                    }
                    request = TakeNext();
                    if (request != null)
                    {
                        break;
                    }
                    if (nonBlocking)
                    {
                        return -(int)Errno.EAGAIN;
                    }
                    if (cancellation.IsCancellationRequested)
                    {
                        return -(int)Errno.EINTR;
                    }
                    _readersWaiting++;
                    try
                    {
                        Monitor.Wait(_lock);
                    }
                    finally
                    {
                        _readersWaiting--;
                    }
                }
                if (request.RequestLength <= buffer.Length)
                {
                    request.ChannelRequest.AsSpan(0, request.RequestLength).CopyTo(buffer);
                    request.ChannelRead = true;
                    if (!request.NoReply)
                    {
                        _processing[request.Unique] = request;
                    }
                    int length = request.RequestLength;
                    if (request.NoReply)
                    {
                        // FORGET / BATCH_FORGET: nothing comes back; the channel is done with it.
                        Monitor.Exit(_lock);
                        try
                        {
                            Connection.TransportDone(request);
                        }
                        finally
                        {
                            Monitor.Enter(_lock);
                        }
                    }
                    return length;
                }
            }
            // Too large for the reader's buffer: that request fails, the read goes on with the next one.
            if (request.NoReply)
            {
                Connection.TransportDone(request);
            }
            else
            {
                Connection.Fail(request, request.Opcode == FuseOpcode.Setxattr ? Errno.E2BIG : Errno.EIO);
            }
        }
    }

    private FuseRequest? TakeNext()
    {
        var list = _interrupts.Count > 0 ? _interrupts : _forgets.Count > 0 ? _forgets : _pending.Count > 0 ? _pending : null;
        if (list == null)
        {
            return null;
        }
        var request = list.First!.Value;
        list.RemoveFirst();
        return request;
    }

    /// <summary>Writes one reply (write(2) on /dev/fuse). Returns the bytes consumed, or a negative errno.</summary>
    public int WriteReply(ReadOnlySpan<byte> message)
    {
        if (message.Length < FuseOutHeader.Size)
        {
            return -(int)Errno.EINVAL;
        }
        var header = MemoryMarshal.Read<FuseOutHeader>(message);
        if (header.Len != message.Length)
        {
            return -(int)Errno.EINVAL;
        }
        if (header.Unique == 0)
        {
            // Notifications: none is acted on by the shim (Linux accepts them; unknown codes are EINVAL).
            return header.Error is > 0 and <= (int)FuseNotifyCode.Resend ? message.Length : -(int)Errno.EINVAL;
        }
        if (header.Error > 0 || header.Error <= -512)
        {
            return -(int)Errno.EINVAL;
        }
        int payload = message.Length - FuseOutHeader.Size;
        FuseRequest? request;
        lock (_lock)
        {
            if (!_connected)
            {
                return -(int)Errno.ENOENT;
            }
            if ((header.Unique & FuseConn.InterruptBit) != 0)
            {
                // An answer to an INTERRUPT: the interrupted request must still be being processed.
                ulong target = header.Unique & ~FuseConn.InterruptBit;
                if (!_processing.ContainsKey(target))
                {
                    return -(int)Errno.ENOENT;
                }
                if (payload != 0)
                {
                    return -(int)Errno.EINVAL;
                }
                Monitor.Exit(_lock);
                try
                {
                    Connection.InterruptAnswered(target, header.Error);
                }
                finally
                {
                    Monitor.Enter(_lock);
                }
                return message.Length;
            }
            if (!_processing.Remove(header.Unique, out request))
            {
                return -(int)Errno.ENOENT;
            }
            bool fits = payload <= request.ReplyCapacity
                && (header.Error == 0 || payload == 0)
                && (header.Error != 0 || request.ReplyShape == FuseReplyShape.Variable || payload == request.ReplyCapacity);
            if (!fits)
            {
                Monitor.Exit(_lock);
                try
                {
                    Connection.Fail(request, Errno.EIO);
                }
                finally
                {
                    Monitor.Enter(_lock);
                }
                return -(int)Errno.EINVAL;
            }
            if (payload > 0)
            {
                var destination = request.RepliesIntoUserBuffer ? request.UserBuffer!.PayloadSpan(request.UserOffset, request.UserLength) : request.ChannelReply;
                message[FuseOutHeader.Size..].CopyTo(destination);
            }
        }
        Connection.Complete(request, header.Error, payload);
        return message.Length;
    }

    public void Shutdown(TimeSpan drainTimeout)
    {
        List<FuseRequest> unanswered;
        lock (_lock)
        {
            if (!_connected)
            {
                return;
            }
            _connected = false;
            // Reply-less requests (forgets, interrupts) belong to the channel until read: give them back.
            unanswered = new List<FuseRequest>(_forgets);
            unanswered.AddRange(_interrupts);
            _pending.Clear();
            _interrupts.Clear();
            _forgets.Clear();
            _processing.Clear();
            Monitor.PulseAll(_lock);
        }
        foreach (var request in unanswered)
        {
            Connection.TransportDone(request);
        }
    }

    public void Dispose()
    {
        if (_connection == null)
        {
            return;
        }
        Shutdown(TimeSpan.Zero);
    }
}
