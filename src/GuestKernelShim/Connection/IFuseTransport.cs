namespace Vhostfsd.GuestKernelShim;

/// <summary>How a <see cref="FuseConn"/> reaches a daemon (Linux's fuse_iqueue_ops plus the reply
/// path): a virtio-fs device over vhost-user, or an in-process channel with /dev/fuse semantics.</summary>
public interface IFuseTransport : IDisposable
{
    /// <summary>A short name for logs ("virtio-fs", "in-process").</summary>
    string Name { get; }

    /// <summary>Most pages one request may carry over this transport (Linux's max_pages_limit).</summary>
    int MaxPagesLimit { get; }

    /// <summary>Called once by the connection before the first request.</summary>
    void Attach(FuseConn connection);

    /// <summary>Copies <paramref name="header"/> (a fuse_in_header) and <paramref name="args"/> into the
    /// transport's buffers, reserves room for the reply (<see cref="FuseRequest.ReplyCapacity"/>) and hands
    /// the request to the daemon. May block while the transport is full; never fails for lack of room.
    /// Returns 0, or a negative errno (ENOTCONN once stopped). On success the transport calls
    /// <see cref="FuseConn.Complete"/> when the reply arrives (not for <see cref="FuseRequest.NoReply"/> requests).
    /// A direct-I/O request also names a range of a <see cref="GuestBuffer"/>: WRITE data that follows the arguments,
    /// or the place READ data goes (then <see cref="FuseRequest.ReplyCapacity"/> is its length and the reply is
    /// not copied with <see cref="CopyReply"/>). A transport with guest memory passes that range to the daemon as it
    /// is; others copy from / into it.</summary>
    int Submit(FuseRequest request, ReadOnlySpan<byte> header, scoped in FuseArgs args);

    /// <summary>Copies the first <paramref name="destination"/>.Length bytes of the reply payload
    /// (after fuse_out_header) of a completed request.</summary>
    void CopyReply(FuseRequest request, Span<byte> destination);

    /// <summary>Frees what <see cref="Submit"/> reserved (called when the request's last reference goes).</summary>
    void ReleaseBuffers(FuseRequest request);

    /// <summary>Withdraws a request the daemon cannot have seen yet (Linux: still FR_PENDING). True when
    /// withdrawn: the daemon will never see it.</summary>
    bool TryWithdraw(FuseRequest request);

    /// <summary>Stops the transport: later submissions fail with ENOTCONN, blocked readers and senders
    /// wake. Waits at most <paramref name="drainTimeout"/> for requests the daemon holds to come back.</summary>
    void Shutdown(TimeSpan drainTimeout);
}
