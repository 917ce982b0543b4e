using System.Runtime.InteropServices;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.GuestKernelShim;

// Sending on the caller's thread (fuse_simple_request), direct I/O with user buffers, cancellation by INTERRUPT, and the request pool.
public sealed partial class FuseConn
{
    // ---------------------------------------------------------------- sending

    /// <summary>Sends a request on the caller's thread and blocks until it ends (Linux fuse_simple_request).
    /// The reply payload is copied into <paramref name="reply"/>, whose length is the most the daemon may
    /// answer. A cancelled <paramref name="cancellation"/> withdraws a request the daemon has not seen
    /// (EINTR) or sends INTERRUPT for it and keeps waiting for the daemon's answer (the late reply, or EINTR).
    /// Never throws for what the daemon does: failures come back as <see cref="FuseReply.Error"/>.</summary>
    public FuseReply Send(FuseOpcode opcode, ulong nodeId, in FuseCaller caller, scoped in FuseArgs args, Span<byte> reply,
        FuseReplyShape shape = FuseReplyShape.Variable, CancellationToken cancellation = default)
    {
        if (opcode is FuseOpcode.Init or FuseOpcode.Forget or FuseOpcode.BatchForget or FuseOpcode.Interrupt)
        {
            throw new ArgumentException($"{opcode} is sent by the connection itself (Init, QueueForget, cancellation)", nameof(opcode));
        }
        return SendCore(opcode, nodeId, caller, args, reply, shape, cancellation, bypassInit: false);
    }

    /// <summary>Sends a request without arguments.</summary>
    public FuseReply Send(FuseOpcode opcode, ulong nodeId, in FuseCaller caller, Span<byte> reply,
        FuseReplyShape shape = FuseReplyShape.Variable, CancellationToken cancellation = default)
        => Send(opcode, nodeId, caller, default(FuseArgs), reply, shape, cancellation);

    // ---------------------------------------------------------------- direct I/O with user buffers

    /// <summary>Allocates a buffer of <paramref name="bytes"/> bytes that READ and WRITE can use as their payload with no
    /// copy (<see cref="Read(ulong, ulong, long, GuestBuffer, int, int, in FuseCaller, uint, CancellationToken)"/>,
    /// <see cref="Write"/>): guest memory on virtio-fs, a pinned host buffer on transports without guest memory.
    /// The buffer starts zeroed. Throws <see cref="InvalidOperationException"/> when guest memory has no free range
    /// that large.</summary>
    public GuestBuffer AllocateUserBuffer(int bytes)
    {
        ArgumentOutOfRangeException.ThrowIfNegativeOrZero(bytes);
        if (_transport is not IUserMemory guest)
        {
            return new GuestBuffer(this, bytes);
        }
        if (!guest.TryAllocateUserMemory(bytes, out ulong gpa, out ulong reserved, out nint host))
        {
            throw new InvalidOperationException($"{_transport.Name}: guest memory has no free range of {bytes} bytes for a user buffer");
        }
        var buffer = new GuestBuffer(this, guest, gpa, reserved, host, bytes);
        // Fresh pages of a process are zero; the range may hold an earlier buffer's data.
        buffer.Span.Clear();
        return buffer;
    }

    /// <summary>One READ of <paramref name="length"/> bytes at <paramref name="offset"/> of handle <paramref name="fh"/>
    /// straight into <paramref name="buffer"/> at <paramref name="bufferOffset"/> (fuse_send_read of direct I/O): the
    /// daemon writes the data there, nothing is copied. <paramref name="length"/> is at most <see cref="MaxReadSize"/>.
    /// The reply's <see cref="FuseReply.Length"/> is the bytes read (short at end of file). <paramref name="lockOwner"/>,
    /// when given, travels with FUSE_READ_LOCKOWNER (fuse_direct_io passes the caller's files). EFAULT when the buffer
    /// was disposed. Otherwise as <see cref="Send(FuseOpcode, ulong, in FuseCaller, scoped in FuseArgs, Span{byte}, FuseReplyShape, CancellationToken)"/>.</summary>
    public FuseReply Read(ulong nodeId, ulong fh, long offset, GuestBuffer buffer, int bufferOffset, int length, in FuseCaller caller,
        uint openFlags = 0, CancellationToken cancellation = default, ulong? lockOwner = null)
    {
        CheckUserRange(buffer, bufferOffset, length, MaxReadSize);
        var arg = new FuseReadIn { Fh = fh, Offset = (ulong)offset, Length = (uint)length, Flags = openFlags };
        if (lockOwner is ulong owner)
        {
            arg.ReadFlags = (uint)FuseReadFlags.LockOwner;
            arg.LockOwner = owner;
        }
        var args = new FuseArgs(MemoryMarshal.AsBytes(new ReadOnlySpan<FuseReadIn>(in arg)));
        return SendCore(FuseOpcode.Read, nodeId, caller, args, Span<byte>.Empty, FuseReplyShape.Variable, cancellation, bypassInit: false,
            buffer, bufferOffset, length, userIsReply: true);
    }

    /// <summary>One WRITE of <paramref name="length"/> bytes of <paramref name="buffer"/> from <paramref name="bufferOffset"/>
    /// at <paramref name="offset"/> of handle <paramref name="fh"/> (fuse_send_write of direct I/O): the daemon reads
    /// the data from the buffer, nothing is copied. <paramref name="length"/> is at most <see cref="MaxWriteSize"/>.
    /// <paramref name="bytesWritten"/> is fuse_write_out.size; a daemon claiming more than was sent is EIO.
    /// <paramref name="lockOwner"/>, when given, travels with FUSE_WRITE_LOCKOWNER. EFAULT when the buffer was disposed.</summary>
    public FuseReply Write(ulong nodeId, ulong fh, long offset, GuestBuffer buffer, int bufferOffset, int length, in FuseCaller caller,
        out int bytesWritten, uint openFlags = 0, uint writeFlags = 0, CancellationToken cancellation = default, ulong? lockOwner = null)
    {
        CheckUserRange(buffer, bufferOffset, length, MaxWriteSize);
        bytesWritten = 0;
        var arg = new FuseWriteIn { Fh = fh, Offset = (ulong)offset, Length = (uint)length, WriteFlags = writeFlags, Flags = openFlags };
        if (lockOwner is ulong owner)
        {
            arg.WriteFlags |= (uint)FuseWriteFlags.LockOwner;
            arg.LockOwner = owner;
        }
        FuseWriteOut output = default;
        var reply = SendCore(FuseOpcode.Write, nodeId, caller, new FuseArgs(MemoryMarshal.AsBytes(new ReadOnlySpan<FuseWriteIn>(in arg))),
            MemoryMarshal.AsBytes(new Span<FuseWriteOut>(ref output)), FuseReplyShape.Fixed, cancellation, bypassInit: false,
            buffer, bufferOffset, length, userIsReply: false);
        if (!reply.IsOk)
        {
            return reply;
        }
        if (output.Length > (uint)length)
        {
            return FuseReply.Fail(Errno.EIO);
        }
        bytesWritten = (int)output.Length;
        return reply;
    }

    private void CheckUserRange(GuestBuffer buffer, int bufferOffset, int length, int limit)
    {
        ArgumentNullException.ThrowIfNull(buffer);
        if (!ReferenceEquals(buffer.Owner, this))
        {
            throw new ArgumentException("the user buffer belongs to another connection", nameof(buffer));
        }
        buffer.CheckRange(bufferOffset, length);
        if (length > limit)
        {
            throw new ArgumentOutOfRangeException(nameof(length), length, $"one request carries at most {limit} bytes on this connection");
        }
    }

    private FuseReply SendCore(FuseOpcode opcode, ulong nodeId, in FuseCaller caller, scoped in FuseArgs args, Span<byte> reply,
        FuseReplyShape shape, CancellationToken cancellation, bool bypassInit,
        GuestBuffer? user = null, int userOffset = 0, int userLength = 0, bool userIsReply = false)
    {
        if (!bypassInit)
        {
            int gate = WaitUntilReady(cancellation);
            if (gate != 0)
            {
                return new FuseReply(gate, 0);
            }
        }
        else if (IsDisconnected)
        {
            return FuseReply.Fail(AbortErrno);
        }

        var request = Rent();
        request.Opcode = opcode;
        request.NodeId = nodeId;
        request.ReplyCapacity = reply.Length;
        request.ReplyShape = shape;
        request.BypassInit = bypassInit;
        request.Caller = caller;
        if (user != null && userLength > 0)
        {
            if (!user.TryAcquire())
            {
                // The memory is gone: I/O on an unmapped address.
                Release(request);
                return FuseReply.Fail(Errno.EFAULT);
            }
            request.UserBuffer = user;
            request.UserOffset = userOffset;
            request.UserLength = userLength;
            request.UserIsReply = userIsReply;
            if (userIsReply)
            {
                request.ReplyCapacity = userLength;
            }
        }
        request.Unique = NextUnique();
        int error = Dispatch(request, caller, args);
        if (error != 0)
        {
            // Never reached the daemon.
            Release(request);
            return new FuseReply(error, 0);
        }
        Wait(request, cancellation);
        int length = 0;
        int result = request.Error;
        if (result == 0)
        {
            length = request.ReplyLength;
            // A reply into a user buffer is already there.
            if (length > 0 && !request.RepliesIntoUserBuffer)
            {
                _transport.CopyReply(request, reply[..length]);
            }
        }
        Release(request);
        return new FuseReply(result, length);
    }

    /// <summary>Registers the request as pending and hands it to the transport. 0, or the errno when it
    /// could not be sent (the request is then not pending and the caller still owns it).</summary>
    private int Dispatch(FuseRequest request, in FuseCaller caller, scoped in FuseArgs args)
    {
        long length = FuseInHeader.Size + (long)args.TotalLength + request.UserPayloadLength;
        if (length > int.MaxValue)
        {
            return -(int)Errno.E2BIG;
        }
        request.RequestLength = (int)length;
        var header = new FuseInHeader
        {
            Len = (uint)length,
            Opcode = (uint)request.Opcode,
            Unique = request.Unique,
            NodeId = request.NodeId,
            Uid = request.IsInterrupt ? 0 : caller.Uid,
            Gid = request.IsInterrupt ? 0 : caller.Gid,
            Pid = request.IsInterrupt ? 0 : caller.Pid,
        };
        if (!request.NoReply && !_pending.TryAdd(request))
        {
            return _pending.IsClosed ? ErrorForClosed() : -(int)Errno.EBUSY;
        }
        if (request.NoReply)
        {
            Interlocked.Increment(ref _noReplyInFlight);
        }
        int rc = _transport.Submit(request, MemoryMarshal.AsBytes(new ReadOnlySpan<FuseInHeader>(in header)), args);
        if (rc != 0)
        {
            if (request.NoReply)
            {
                return rc;
            }
            if (_pending.TryRemove(request))
            {
                return rc;
            }
            // An abort took it meanwhile and ends it: the waiter will see that.
        }
        return 0;
    }

    private int ErrorForClosed() => HasConnectionError ? -(int)Errno.ECONNREFUSED : -_abortErrno;

    /// <summary>fuse_get_req's gate: wait for INIT, then refuse on a dead connection.</summary>
    private int WaitUntilReady(CancellationToken cancellation)
    {
        if (_state != (int)ConnState.Ready)
        {
            try
            {
                _initDone.Wait(cancellation);
            }
            catch (OperationCanceledException)
            {
                return -(int)Errno.EINTR;
            }
        }
        return _state switch
        {
            (int)ConnState.Ready => 0,
            (int)ConnState.InitFailed => -(int)Errno.ECONNREFUSED,
            (int)ConnState.Disconnected => -_abortErrno,
            _ => -(int)Errno.ENOTCONN,
        };
    }

    /// <summary>request_wait_answer: wait; on cancellation withdraw or interrupt, then wait it out.</summary>
    private void Wait(FuseRequest request, CancellationToken cancellation)
    {
        if (!cancellation.CanBeCanceled || NoInterrupt)
        {
            request.Done.Wait();
            return;
        }
        try
        {
            request.Done.Wait(cancellation);
            return;
        }
        catch (OperationCanceledException)
        {
        }
        if (!request.Done.IsSet)
        {
            if (_transport.TryWithdraw(request))
            {
                // The daemon never saw it (FR_PENDING): end it here with EINTR.
                if (_pending.TryRemove(request))
                {
                    request.Error = -(int)Errno.EINTR;
                    request.ReplyLength = 0;
                    request.Done.Set();
                }
            }
            else
            {
                SendInterrupt(request.Unique);
            }
        }
        request.Done.Wait();
    }

    private void SendInterrupt(ulong targetUnique)
    {
        if (NoInterrupt || IsDisconnected || !_pending.Contains(targetUnique))
        {
            return;
        }
        var interrupt = Rent();
        interrupt.Opcode = FuseOpcode.Interrupt;
        interrupt.Unique = targetUnique | InterruptBit;
        interrupt.InterruptTarget = targetUnique;
        interrupt.IsInterrupt = true;
        interrupt.NoReply = true;
        interrupt.IsHighPriority = true;
        interrupt.ReplyCapacity = 0;
        interrupt.ReplyShape = FuseReplyShape.Fixed;
        var arg = new FuseInterruptIn { Unique = targetUnique };
        int rc = Dispatch(interrupt, default, new FuseArgs(MemoryMarshal.AsBytes(new ReadOnlySpan<FuseInterruptIn>(in arg))));
        if (rc != 0)
        {
            Release(interrupt);
            return;
        }
        Interlocked.Increment(ref _interruptsSent);
    }

    // ---------------------------------------------------------------- pool

    private FuseRequest Rent()
    {
        var request = t_cached;
        if (request != null && ReferenceEquals(request.Connection, this))
        {
            t_cached = null;
        }
        else
        {
            request = null;
            lock (_pool)
            {
                _pool.TryPop(out request);
            }
            request ??= new FuseRequest { Connection = this };
        }
        request.Reset();
        return request;
    }

    private void Release(FuseRequest request)
    {
        if (!request.DropRef())
        {
            return;
        }
        if (request.NoReply)
        {
            Interlocked.Decrement(ref _noReplyInFlight);
        }
        _transport.ReleaseBuffers(request);
        if (request.UserBuffer != null)
        {
            // The transport is done with the user pages (Linux: the pages are unpinned when the request is freed).
            request.UserBuffer.ReleaseUse();
            request.UserBuffer = null;
        }
        if (t_cached == null)
        {
            t_cached = request;
            return;
        }
        lock (_pool)
        {
            if (_pool.Count < 1024)
            {
                _pool.Push(request);
            }
        }
    }
}
