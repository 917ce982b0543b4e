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
/// and is EINVAL for the writer. <see cref="Poll"/> is fuse_dev_poll (always writable; readable while a
/// request is queued; POLLERR once aborted), and <see cref="Clone"/> is FUSE_DEV_IOC_CLONE: another reader
/// of the same queue with its own list of requests being processed, so a reply goes back through the
/// reader that read the request.
/// </remarks>
public sealed class InProcessChannelBackend : IFuseTransport
{
    private readonly object _lock = new();
    private readonly LinkedList<FuseRequest> _pending = new();
    private readonly LinkedList<FuseRequest> _interrupts = new();
    private readonly LinkedList<FuseRequest> _forgets = new();
    private readonly InProcessChannelClone _primary;
    private readonly List<InProcessChannelClone> _clones = new();
    private FuseConn? _connection;
    private bool _connected = true;
    private int _readersWaiting;

    /// <param name="maxPagesLimit">Most pages per request (Linux's fuse_max_pages_limit default is 256).</param>
    public InProcessChannelBackend(int maxPagesLimit = 256)
    {
        MaxPagesLimit = maxPagesLimit;
        _primary = new InProcessChannelClone(this);
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

    /// <summary>Requests read and not yet answered (by every reader).</summary>
    public int ProcessingCount
    {
        get
        {
            lock (_lock)
            {
                int count = _primary.Processing.Count;
                foreach (var clone in _clones)
                {
                    count += clone.Processing.Count;
                }
                return count;
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
        => ReadRequest(_primary, buffer, nonBlocking, cancellation);

    /// <summary>Writes one reply (write(2) on /dev/fuse). Returns the bytes consumed, or a negative errno.</summary>
    public int WriteReply(ReadOnlySpan<byte> message) => WriteReply(_primary, message);

    /// <summary>poll(2) on /dev/fuse: <see cref="ChannelPollEvents.Out"/> | WrNorm always, In | RdNorm while a request
    /// waits to be read, only <see cref="ChannelPollEvents.Err"/> once the connection was aborted. Waits up to
    /// <paramref name="timeout"/> (0: answer at once; <see cref="Timeout.InfiniteTimeSpan"/>: until readable or
    /// aborted) for one of In or Err.</summary>
    public ChannelPollEvents Poll(TimeSpan timeout = default) => Poll(_primary, timeout);

    /// <summary>FUSE_DEV_IOC_CLONE: a second reader on this connection. It reads from the same queue; the replies to
    /// what it read must be written through it (another reader answers ENOENT). Disposing it ends the requests it
    /// read and has not answered with ECONNABORTED, as closing a cloned /dev/fuse fd does.</summary>
    public InProcessChannelClone Clone()
    {
        lock (_lock)
        {
            if (!_connected)
            {
                throw new InvalidOperationException("the connection was aborted: nothing to clone");
            }
            var clone = new InProcessChannelClone(this);
            _clones.Add(clone);
            return clone;
        }
    }

    internal ChannelPollEvents Poll(InProcessChannelClone reader, TimeSpan timeout)
    {
        long deadline = timeout == Timeout.InfiniteTimeSpan ? long.MaxValue : Environment.TickCount64 + (long)timeout.TotalMilliseconds;
        lock (_lock)
        {
            while (true)
            {
                if (!_connected || reader.Closed)
                {
                    return ChannelPollEvents.Err;
                }
                if (_pending.Count + _interrupts.Count + _forgets.Count > 0)
                {
                    return ChannelPollEvents.In | ChannelPollEvents.RdNorm | ChannelPollEvents.Out | ChannelPollEvents.WrNorm;
                }
                long left = deadline - Environment.TickCount64;
                if (left <= 0)
                {
                    return ChannelPollEvents.Out | ChannelPollEvents.WrNorm;
                }
                _readersWaiting++;
                try
                {
                    Monitor.Wait(_lock, (int)Math.Min(left, int.MaxValue));
                }
                finally
                {
                    _readersWaiting--;
                }
            }
        }
    }

    internal void CloseClone(InProcessChannelClone clone)
    {
        List<FuseRequest> abandoned;
        lock (_lock)
        {
            if (clone.Closed)
            {
                return;
            }
            clone.Closed = true;
            _clones.Remove(clone);
            abandoned = new List<FuseRequest>(clone.Processing.Values);
            clone.Processing.Clear();
            Monitor.PulseAll(_lock);
        }
        foreach (var request in abandoned)
        {
            Connection.Fail(request, Errno.ECONNABORTED);
        }
    }

    internal int ReadRequest(InProcessChannelClone reader, Span<byte> buffer, bool nonBlocking, CancellationToken cancellation)
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
                    if (!_connected || reader.Closed)
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
                        reader.Processing[request.Unique] = request;
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

    internal int WriteReply(InProcessChannelClone reader, ReadOnlySpan<byte> message)
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
            if (!_connected || reader.Closed)
            {
                return -(int)Errno.ENOENT;
            }
            if ((header.Unique & FuseConn.InterruptBit) != 0)
            {
                // An answer to an INTERRUPT: the interrupted request must still be being processed.
                ulong target = header.Unique & ~FuseConn.InterruptBit;
                if (!reader.Processing.ContainsKey(target))
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
            if (!reader.Processing.Remove(header.Unique, out request))
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
            _primary.Processing.Clear();
            foreach (var clone in _clones)
            {
                clone.Processing.Clear();
            }
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

/// <summary>A reader of an <see cref="InProcessChannelBackend"/>'s connection: the channel's own, or one made by
/// <see cref="InProcessChannelBackend.Clone"/> (a cloned /dev/fuse fd). Each keeps the requests it read until it
/// answers them.</summary>
public sealed class InProcessChannelClone : IDisposable
{
    private readonly InProcessChannelBackend _channel;

    internal InProcessChannelClone(InProcessChannelBackend channel)
    {
        _channel = channel;
    }

    // Requests read through this reader and not yet answered (fuse_pqueue); guarded by the channel's lock.
    internal readonly Dictionary<ulong, FuseRequest> Processing = new();
    internal bool Closed;

    /// <summary>As <see cref="InProcessChannelBackend.ReadRequest(Span{byte}, bool, CancellationToken)"/>, through this reader
    /// (ENODEV once it is disposed).</summary>
    public int ReadRequest(Span<byte> buffer, bool nonBlocking = false, CancellationToken cancellation = default)
        => _channel.ReadRequest(this, buffer, nonBlocking, cancellation);

    /// <summary>As <see cref="InProcessChannelBackend.WriteReply(ReadOnlySpan{byte})"/>: only for requests this reader read.</summary>
    public int WriteReply(ReadOnlySpan<byte> message) => _channel.WriteReply(this, message);

    /// <summary>As <see cref="InProcessChannelBackend.Poll(TimeSpan)"/>; POLLERR once this reader is disposed.</summary>
    public ChannelPollEvents Poll(TimeSpan timeout = default) => _channel.Poll(this, timeout);

    public void Dispose() => _channel.CloseClone(this);
}

/// <summary>poll(2) event bits (Linux values).</summary>
[Flags]
public enum ChannelPollEvents : short
{
    None = 0,
    In = 0x001,
    Out = 0x004,
    Err = 0x008,
    RdNorm = 0x040,
    WrNorm = 0x100,
}
