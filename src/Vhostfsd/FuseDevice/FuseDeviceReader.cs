using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Vhostfsd.FusePassthrough;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.FuseDevice;

/// <summary>A reader's splice pipes: for READ replies and for WRITE data (either may be null).</summary>
internal readonly record struct FuseSplicePipes(FuseReplySplicer? Reply, FuseRequestSplicer? Request);

/// <summary>One thread serving /dev/fuse: read one request into its own buffer, run it, write the
/// reply to the same fd (the kernel matches a reply only against the requests read from that fd).
/// The buffers are native memory taken once, so the loop allocates nothing. Large READ and WRITE
/// data goes by splice through the reader's pipes when it has them (<see cref="FuseReplySplicer"/>,
/// <see cref="FuseRequestSplicer"/>).</summary>
internal sealed unsafe class FuseDeviceReader
{
    /// <summary>Request and reply buffer size. The kernel refuses a read(2) shorter than a maximal
    /// WRITE with its headers (and 8 KiB at least); the largest reply is a READ of max_read bytes.</summary>
    public const int BufferSize = FuseServer.MaxRequestSize;

    private readonly FuseDeviceSession _session;
    private readonly FuseServer _server;
    private readonly int _fd;
    private readonly SafeFd? _ownedFd;
    private readonly Thread _thread;
    private readonly FuseReplySplicer? _splicer;
    private readonly FuseRequestSplicer? _requestSplicer;
    private readonly bool _failSpliceAssembly;
    private byte* _request;
    private byte* _reply;
    private long _requests;
    private long _allocatedBeforeSteady;
    private long _splicedReplies;
    private bool _splicingRequests;
    private int _sinceLargeWrite;
    private long _copiedBackReplies;

    /// <summary>Requests a reader serves before its allocations are counted: the first ones of each
    /// kind run one-time initialisation (static fields, type loading).</summary>
    public const int WarmUpRequests = 1000;

    /// <param name="fd">The /dev/fuse fd to serve; <paramref name="ownedFd"/> is closed when the
    /// reader stops (null when the fd is shared and owned by the session).</param>
    /// <param name="pipes">This reader's pipes for READ replies and WRITE data by reference, owned
    /// by the reader from now on; a null one: that direction is copied through the buffers.</param>
    /// <param name="failSpliceAssembly">Test hook: every spliced reply takes the path of a reply the
    /// pipes could not assemble (its data copied back into the buffer).</param>
    public FuseDeviceReader(FuseDeviceSession session, FuseServer server, int fd, SafeFd? ownedFd, string name,
        FuseSplicePipes pipes = default, bool failSpliceAssembly = false)
    {
        _session = session;
        _server = server;
        _fd = fd;
        _ownedFd = ownedFd;
        _splicer = pipes.Reply;
        _requestSplicer = pipes.Request;
        _failSpliceAssembly = failSpliceAssembly;
        _thread = new Thread(Run) { IsBackground = true, Name = name };
    }

    public void Start()
    {
        // Page-aligned: the kernel copies whole pages in and out of these.
        _request = (byte*)NativeMemory.AlignedAlloc(BufferSize, 4096);
        _reply = (byte*)NativeMemory.AlignedAlloc(BufferSize, 4096);
        _requestSplicer?.UseBuffer(_request, BufferSize);
        _thread.Start();
    }

    private void Run()
    {
        string? failure = null;
        try
        {
            failure = Serve();
        }
        catch (Exception e)
        {
            // HandleRequest never throws; anything here is a bug in this loop.
            failure = e.GetType().Name + ": " + e.Message;
        }
        finally
        {
            long steady = Math.Max(0, _requests - WarmUpRequests);
            long allocated = steady > 0 ? GC.GetAllocatedBytesForCurrentThread() - _allocatedBeforeSteady : 0;
            _session.CountServed(_requests, steady, allocated);
            _session.CountSpliced(_splicedReplies, _copiedBackReplies, _requestSplicer?.Moved ?? 0, _requestSplicer?.Fetched ?? 0);
            _splicer?.Dispose();
            _requestSplicer?.Dispose();
            NativeMemory.AlignedFree(_request);
            NativeMemory.AlignedFree(_reply);
            _request = null;
            _reply = null;
            _ownedFd?.Dispose();
            _session.ReaderStopped(this, failure);
        }
    }

    /// <summary>The loop. Returns null when the connection is gone (unmounted or aborted), or why it
    /// stopped otherwise.</summary>
    private string? Serve()
    {
        while (true)
        {
            nint n = _splicingRequests ? _requestSplicer!.Receive(_fd) : Libc.Read(_fd, _request, BufferSize);
            if (n == -2)
            {
                return "splice from /dev/fuse: the pipe did not give back the request";
            }
            if (n < 0)
            {
                switch (Libc.LastErrno)
                {
                    case Errno.EINTR or Errno.EAGAIN:
                        continue;
                    case Errno.ENODEV:
                        // The file system was unmounted, or the connection aborted.
                        return null;
                    case var errno:
                        return "read from /dev/fuse: " + PosixException.Describe(errno);
                }
            }
            var readable = new IoVec(_request, (nuint)n);
            var writable = new IoVec(_reply, BufferSize);
            // SAFETY: both IoVecs describe this reader's own buffers, which live until the loop ends.
            var header = FuseRequestHeader.Read(new ReadOnlySpan<IoVec>(in readable));
            if (header.Opcode == FuseOpcode.Init && !_session.KernelChecksPermissions)
            {
                WithdrawIdmapOffer(_request, (int)n);
            }
            // Only waits matter here: a large READ is a copy, which this thread may as well do.
            bool mayBlock = FuseServer.Triage(in header, int.MaxValue) == RequestTriage.MayBlock;
            if (mayBlock)
            {
                _session.EnterBlocking();
            }
            _splicer?.Reset();
            int length = _server.HandleRequest(in header, new ReadOnlySpan<IoVec>(in readable), new ReadOnlySpan<IoVec>(in writable), _splicer, _requestSplicer);
            if (mayBlock)
            {
                _session.LeaveBlocking();
            }
            if (_splicer is { Start: >= 0 })
            {
                if (!SendSpliced(length))
                {
                    return null;
                }
            }
            else if (length > 0 && !WriteReply(length))
            {
                return null;
            }
            if (_requestSplicer is not null)
            {
                if (_requestSplicer.Length > 0)
                {
                    // A WRITE answered before its data was needed (an error): its data goes.
                    _requestSplicer.Discard(_reply, BufferSize);
                }
                ChooseHowToReceive(in header);
            }
            if (++_requests == WarmUpRequests)
            {
                _allocatedBeforeSteady = GC.GetAllocatedBytesForCurrentThread();
            }
        }
    }

    /// <summary>Requests are spliced from /dev/fuse only while large WRITEs come: a spliced request
    /// costs a splice and one or two reads of the pipe instead of one read(2), about 3 µs more,
    /// which only a WRITE's data saves back. The first large WRITE of a run is copied; after
    /// <see cref="SpliceStreak"/> requests without one, the reader reads again.</summary>
    private void ChooseHowToReceive(in FuseRequestHeader header)
    {
        // The kernel's length is only a hint here: the request itself was checked by the server.
        bool largeWrite = header.IsComplete && header.Opcode == FuseOpcode.Write
            && header.In.Len >= (uint)(FuseRequestSplicer.WriteHeaders + FuseRequestSplicer.Threshold);
        if (largeWrite)
        {
            _sinceLargeWrite = 0;
            _splicingRequests = true;
        }
        else if (_splicingRequests && ++_sinceLargeWrite >= SpliceStreak)
        {
            _splicingRequests = false;
        }
    }

    /// <summary>Requests without a large WRITE after which a reader stops splicing requests.</summary>
    private const int SpliceStreak = 8;

    /// <summary>Takes FUSE_ALLOW_IDMAP out of the kernel's INIT offer. The kernel offers it to every
    /// server but refuses the whole connection (ECONNREFUSED on every access) when a server accepts it
    /// on a mount without default_permissions: an idmapped mount needs the kernel to check permissions.
    /// The server grants only what is offered, so it never accepts it here.</summary>
    private static void WithdrawIdmapOffer(byte* request, int length)
    {
        if (length < FuseInHeader.Size + FuseInitIn.Size)
        {
            // An INIT from before protocol 7.36 has no flags2, and no idmap flag.
            return;
        }
        // SAFETY: the request holds a whole fuse_init_in after the header (checked above).
        ref FuseInitIn init = ref Unsafe.AsRef<FuseInitIn>(request + FuseInHeader.Size);
        if ((init.Flags & (uint)FuseInitFlags.InitExt) != 0)
        {
            init.Flags2 &= ~FuseConstants.SplitInitFlags(FuseInitFlags.AllowIdmap).Flags2;
        }
    }

    /// <summary>Sends a reply whose data the file system appended by reference (in the splicer's pipe,
    /// after the header in the reply buffer); false when the connection is gone.</summary>
    private bool SendSpliced(int length)
    {
        FuseReplySplicer splicer = _splicer!;
        // SAFETY: the server wrote a whole fuse_out_header at the start of the reply buffer.
        ref FuseOutHeader reply = ref Unsafe.AsRef<FuseOutHeader>(_reply);
        int start = splicer.Start;
        bool addsUp = reply.Error == 0 && start >= FuseOutHeader.Size && start <= 4096
            && (long)start + splicer.Length == length && reply.Len == (uint)length;
        if (!addsUp)
        {
            // An error reply (the data goes), or one that does not add up — the server's bug,
            // answered EIO rather than sent malformed.
            splicer.Discard(_request, BufferSize);
            if (reply.Error == 0)
            {
                reply = new FuseOutHeader { Len = FuseOutHeader.Size, Error = -(int)Errno.EIO, Unique = reply.Unique };
                length = FuseOutHeader.Size;
            }
            return WriteReply(length);
        }
        int rc = splicer.Send(_fd, _reply, BufferSize, _failSpliceAssembly);
        switch (rc)
        {
            case 0:
                _splicedReplies++;
                return true;
            case 1:
                // The pipes could not take it: the whole reply is back in the buffer.
                _copiedBackReplies++;
                return WriteReply(length);
            case -(int)Errno.ENOENT:
                _session.CountAbandonedReply();
                return true;
            case -(int)Errno.ENODEV:
                return false;
            default:
                // Refused for another reason (or lost in the pipes): the caller must not wait forever.
                _session.ReplyRefused((Errno)(-rc));
                reply = new FuseOutHeader { Len = FuseOutHeader.Size, Error = -(int)Errno.EIO, Unique = reply.Unique };
                return WriteReply(FuseOutHeader.Size);
        }
    }

    /// <summary>Writes one reply; false when the connection is gone.</summary>
    private bool WriteReply(int length)
    {
        while (true)
        {
            if (Libc.Write(_fd, _reply, (nuint)length) >= 0)
            {
                return true;
            }
            switch (Libc.LastErrno)
            {
                case Errno.EINTR:
                    continue;
                case Errno.ENOENT:
                    // The request was interrupted (the caller got a signal) and already answered.
                    _session.CountAbandonedReply();
                    return true;
                case Errno.ENODEV:
                    return false;
                case var errno:
                    _session.ReplyRefused(errno);
                    return true;
            }
        }
    }
}
