using System.Runtime.InteropServices;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.GuestKernelShim;

// Background requests (RELEASE and the like) under max_background, forgets and re-sent interrupts: fs/fuse/dev.c flush_bg_queue and the forget list.
public sealed partial class FuseConn
{
    // ---------------------------------------------------------------- background

    /// <summary>Queues a background request (Linux fuse_simple_background): the arguments are copied, the
    /// caller does not wait for the reply. Without <paramref name="force"/> the caller waits while
    /// max_background requests are outstanding (fc->blocked); forced requests (RELEASE) never wait.
    /// <paramref name="completion"/>, if given, runs on a transport thread when the request ends.
    /// Returns 0, or a negative errno when the connection is gone.</summary>
    public int SendBackground(FuseOpcode opcode, ulong nodeId, in FuseCaller caller, ReadOnlySpan<byte> args, bool force,
        Action<FuseRequest>? completion = null, int replyCapacity = 0)
    {
        if (opcode is FuseOpcode.Init or FuseOpcode.Forget or FuseOpcode.BatchForget or FuseOpcode.Interrupt)
        {
            throw new ArgumentException($"{opcode} is sent by the connection itself", nameof(opcode));
        }
        int gate = WaitUntilReady(CancellationToken.None);
        if (gate != 0)
        {
            return gate;
        }
        var request = Rent();
        request.Opcode = opcode;
        request.NodeId = nodeId;
        request.Background = true;
        request.Caller = caller;
        request.ReplyCapacity = replyCapacity;
        request.ReplyShape = FuseReplyShape.Variable;
        request.BackgroundCompletion = completion;
        request.EnsureArgCapacity(args.Length);
        args.CopyTo(request.ArgBuffer);
        request.ArgLength = args.Length;
        lock (_bgLock)
        {
            while (!force && _blocked && _state == (int)ConnState.Ready)
            {
                Monitor.Wait(_bgLock);
            }
            if (_state != (int)ConnState.Ready)
            {
                Release(request);
                return ErrorForClosed();
            }
            _numBackground++;
            if (_numBackground >= MaxBackground)
            {
                _blocked = true;
            }
            _bgQueue.Enqueue(request);
            Monitor.PulseAll(_bgLock);
        }
        return 0;
    }

    /// <summary>Queues a FORGET of <paramref name="nlookup"/> lookups of <paramref name="nodeId"/>
    /// (fuse_queue_forget). Forgets go out on the high-priority queue, batched into BATCH_FORGET when
    /// several are waiting; they get no reply.</summary>
    public void QueueForget(ulong nodeId, ulong nlookup)
    {
        if (nlookup == 0)
        {
            return;
        }
        lock (_bgLock)
        {
            if (_state != (int)ConnState.Ready)
            {
                return;
            }
            _forgets.Add(new FuseForgetOne { NodeId = nodeId, Nlookup = nlookup });
            Monitor.PulseAll(_bgLock);
        }
    }

    /// <summary>Queues several forgets at once (an eviction of many nodes); they go out as BATCH_FORGETs.</summary>
    public void QueueForgets(ReadOnlySpan<FuseForgetOne> forgets)
    {
        lock (_bgLock)
        {
            if (_state != (int)ConnState.Ready)
            {
                return;
            }
            foreach (var forget in forgets)
            {
                if (forget.Nlookup != 0)
                {
                    _forgets.Add(forget);
                }
            }
            Monitor.PulseAll(_bgLock);
        }
    }

    private void StartBackgroundThread()
    {
        var thread = new Thread(BackgroundLoop) { IsBackground = true, Name = "fuse-bg" };
        _bgThread = thread;
        thread.Start();
    }

    /// <summary>Sends queued background requests while fewer than max_background are active
    /// (flush_bg_queue), queued forgets, and interrupts the daemon asked to see again (EAGAIN).
    /// Runs on its own thread because a send may block on a full queue, which only a completion
    /// thread can drain.</summary>
    private void BackgroundLoop()
    {
        var forgetBuffer = new byte[FuseBatchForgetIn.Size + MaxForgetsPerBatch * FuseForgetOne.Size];
        var batch = new FuseForgetOne[MaxForgetsPerBatch];
        while (true)
        {
            FuseRequest? next = null;
            int forgetCount = 0;
            ulong reinterrupt = 0;
            lock (_bgLock)
            {
                while (!_bgStop && _forgets.Count == 0 && _reinterrupts.Count == 0
                    && (_bgQueue.Count == 0 || _activeBackground >= MaxBackground))
                {
                    Monitor.Wait(_bgLock);
                }
                if (_bgStop)
                {
                    return;
                }
                if (_reinterrupts.Count > 0)
                {
                    reinterrupt = _reinterrupts[^1];
                    _reinterrupts.RemoveAt(_reinterrupts.Count - 1);
                    _bgSending++;
                }
                else if (_forgets.Count > 0)
                {
                    forgetCount = Math.Min(_forgets.Count, Minor >= 16 ? MaxForgetsPerBatch : 1);
                    _forgets.CopyTo(0, batch, 0, forgetCount);
                    _forgets.RemoveRange(0, forgetCount);
                    _bgSending++;
                }
                else
                {
                    next = _bgQueue.Dequeue();
                    _activeBackground++;
                }
            }
            if (reinterrupt != 0 || forgetCount > 0)
            {
                try
                {
                    if (reinterrupt != 0)
                    {
                        SendInterrupt(reinterrupt);
                    }
                    else
                    {
                        SendForgets(batch.AsSpan(0, forgetCount), forgetBuffer);
                    }
                }
                finally
                {
                    // Dispatch has counted it in _noReplyInFlight by now (or it was dropped).
                    Interlocked.Decrement(ref _bgSending);
                }
            }
            else if (next != null)
            {
                SendQueuedBackground(next);
            }
        }
    }

    private void SendQueuedBackground(FuseRequest request)
    {
        request.Unique = NextUnique();
        int rc = Dispatch(request, request.Caller, new FuseArgs(request.ArgBuffer.AsSpan(0, request.ArgLength)));
        if (rc != 0)
        {
            request.Error = rc;
            request.ReplyLength = 0;
            FinishBackground(request);
        }
    }

    private void SendForgets(ReadOnlySpan<FuseForgetOne> forgets, byte[] buffer)
    {
        var request = Rent();
        request.NoReply = true;
        request.IsHighPriority = true;
        request.Unique = NextUnique();
        int rc;
        if (forgets.Length == 1)
        {
            request.Opcode = FuseOpcode.Forget;
            request.NodeId = forgets[0].NodeId;
            var arg = new FuseForgetIn { Nlookup = forgets[0].Nlookup };
            rc = Dispatch(request, FuseCaller.Kernel, new FuseArgs(MemoryMarshal.AsBytes(new ReadOnlySpan<FuseForgetIn>(in arg))));
            if (rc == 0)
            {
                Interlocked.Increment(ref _forgetsSent);
            }
        }
        else
        {
            request.Opcode = FuseOpcode.BatchForget;
            var head = new FuseBatchForgetIn { Count = (uint)forgets.Length };
            MemoryMarshal.Write(buffer, in head);
            MemoryMarshal.AsBytes(forgets).CopyTo(buffer.AsSpan(FuseBatchForgetIn.Size));
            int length = FuseBatchForgetIn.Size + forgets.Length * FuseForgetOne.Size;
            rc = Dispatch(request, FuseCaller.Kernel, new FuseArgs(buffer.AsSpan(0, length)));
            if (rc == 0)
            {
                Interlocked.Increment(ref _batchForgetsSent);
            }
        }
        if (rc != 0)
        {
            Release(request);
        }
    }

    private void FinishBackground(FuseRequest request)
    {
        lock (_bgLock)
        {
            _numBackground--;
            _activeBackground--;
            if (_numBackground < MaxBackground)
            {
                _blocked = false;
            }
            Monitor.PulseAll(_bgLock);
        }
        try
        {
            request.BackgroundCompletion?.Invoke(request);
        }
        finally
        {
            Release(request);
        }
    }

    /// <summary>Waits until no forget, background request or reply-less request is queued or in flight
    /// (tests use it before checking the daemon's state). False on timeout.</summary>
    public bool Quiesce(TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            bool idle;
            lock (_bgLock)
            {
                idle = _forgets.Count == 0 && _bgQueue.Count == 0 && _numBackground == 0 && _reinterrupts.Count == 0
                    && Volatile.Read(ref _bgSending) == 0;
            }
            if (idle && Interlocked.Read(ref _noReplyInFlight) == 0)
            {
                return true;
            }
            if (IsDisconnected || DateTime.UtcNow > deadline)
            {
                return idle && Interlocked.Read(ref _noReplyInFlight) == 0;
            }
            Thread.Sleep(1);
        }
    }
}
