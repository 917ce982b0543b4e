using Vhostfsd.FuseProtocol;

namespace Vhostfsd.GuestKernelShim;

/// <summary>One request in flight: Linux's struct fuse_req. Pooled by <see cref="FuseConn"/> and
/// reused, so the steady-state request path allocates nothing. Fields are set by the connection
/// and the transport that carries it; a caller only sees the outcome as a <see cref="FuseReply"/>.</summary>
/// <remarks>
/// Lifetime is reference-counted: the connection holds one reference for the waiter (or for the
/// background machinery), and a transport that keeps buffers for the request until the daemon
/// hands them back (a virtqueue chain) holds another. Buffers are freed and the object returns to
/// the pool when the last reference goes, so a daemon that answers late never writes into memory
/// that was reused for another request.
/// </remarks>
public sealed class FuseRequest
{
    private readonly ManualResetEventSlim _done = new(false, spinCount: 20);
    private int _refs;

    internal FuseRequest()
    {
    }

    /// <summary>fuse_in_header.unique (even; interrupts use unique | 1).</summary>
    public ulong Unique { get; internal set; }

    public FuseOpcode Opcode { get; internal set; }

    public ulong NodeId { get; internal set; }

    /// <summary>Bytes of reply payload the sender can take (the reply buffer after fuse_out_header).</summary>
    public int ReplyCapacity { get; internal set; }

    public FuseReplyShape ReplyShape { get; internal set; }

    /// <summary>Length of the whole request (fuse_in_header.len).</summary>
    public int RequestLength { get; internal set; }

    /// <summary>The daemon sends no reply (FORGET, BATCH_FORGET).</summary>
    public bool NoReply { get; internal set; }

    /// <summary>Goes on the high-priority queue (FORGET, BATCH_FORGET, INTERRUPT).</summary>
    public bool IsHighPriority { get; internal set; }

    /// <summary>Outcome: 0 or a negative errno, valid once completed.</summary>
    public int Error { get; internal set; }

    /// <summary>Reply payload bytes, valid once completed.</summary>
    public int ReplyLength { get; internal set; }

    internal bool Background;
    internal bool IsInterrupt;
    internal bool BypassInit;
    internal ulong InterruptTarget;
    internal FuseConn? Connection;
    internal Action<FuseRequest>? BackgroundCompletion;

    // Background requests are queued before they are sent: their arguments are kept here.
    internal byte[] ArgBuffer = Array.Empty<byte>();
    internal int ArgLength;
    internal FuseCaller Caller;

    // InProcessChannelBackend: the serialized request and the reply payload.
    internal byte[] ChannelRequest = Array.Empty<byte>();
    internal byte[] ChannelReply = Array.Empty<byte>();
    internal bool ChannelRead;

    // Direct I/O: a user buffer range that is the payload itself (WRITE data read from it, or READ data landing in
    // it when UserIsReply). The request holds a use of the buffer until its last reference goes.
    internal GuestBuffer? UserBuffer;
    internal int UserOffset;
    internal int UserLength;
    internal bool UserIsReply;

    /// <summary>WRITE data taken from a user buffer (follows the arguments); 0 otherwise.</summary>
    internal int UserPayloadLength => UserBuffer != null && !UserIsReply ? UserLength : 0;

    /// <summary>The reply payload lands in a user buffer (a direct-I/O READ), not in the transport's reply buffers.</summary>
    internal bool RepliesIntoUserBuffer => UserBuffer != null && UserIsReply;

    // VirtioFsBackend: queue, chain head and the guest buffers of the chain.
    internal int VirtioQueue = -1;
    internal int VirtioHead = -1;
    internal GuestBlock VirtioIn;
    internal GuestBlock VirtioInData;
    internal GuestBlock VirtioOut;
    internal GuestBlock VirtioOutData;

    internal ManualResetEventSlim Done => _done;

    internal bool IsCompleted => _done.IsSet;

    internal void Reset()
    {
        Unique = 0;
        Opcode = 0;
        NodeId = 0;
        ReplyCapacity = 0;
        ReplyShape = FuseReplyShape.Variable;
        RequestLength = 0;
        NoReply = false;
        IsHighPriority = false;
        Error = 0;
        ReplyLength = 0;
        Background = false;
        IsInterrupt = false;
        BypassInit = false;
        InterruptTarget = 0;
        BackgroundCompletion = null;
        ArgLength = 0;
        Caller = default;
        ChannelRead = false;
        UserBuffer = null;
        UserOffset = 0;
        UserLength = 0;
        UserIsReply = false;
        VirtioQueue = -1;
        VirtioHead = -1;
        VirtioIn = default;
        VirtioInData = default;
        VirtioOut = default;
        VirtioOutData = default;
        _done.Reset();
        Volatile.Write(ref _refs, 1);
    }

    internal void AddRef() => Interlocked.Increment(ref _refs);

    /// <summary>Drops a reference; true when it was the last.</summary>
    internal bool DropRef()
    {
        int refs = Interlocked.Decrement(ref _refs);
        if (refs < 0)
        {
            throw new InvalidOperationException($"request {Unique} ({Opcode}) released more often than referenced");
        }
        return refs == 0;
    }

    internal void EnsureArgCapacity(int length)
    {
        if (ArgBuffer.Length < length)
        {
            ArgBuffer = new byte[Math.Max(length, 64)];
        }
    }

    public override string ToString() => $"{Opcode} unique {Unique} node {NodeId}";
}

/// <summary>A block of guest memory owned by a request (offset into the guest memory file and length).</summary>
internal readonly struct GuestBlock
{
    public GuestBlock(ulong gpa, int length, int sizeClass)
    {
        Gpa = gpa;
        Length = length;
        SizeClass = sizeClass;
    }

    public ulong Gpa { get; }
    public int Length { get; }
    public int SizeClass { get; }
    public bool IsEmpty => Length == 0;
}
