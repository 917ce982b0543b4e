using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Vhostfsd.FusePassthrough;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.FuseDevice;

/// <summary>One thread serving /dev/fuse: read one request into its own buffer, run it, write the
/// reply to the same fd (the kernel matches a reply only against the requests read from that fd).
/// The buffers are native memory taken once, so the loop allocates nothing.</summary>
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
    private byte* _request;
    private byte* _reply;
    private long _requests;
    private long _allocatedBeforeSteady;

    /// <summary>Requests a reader serves before its allocations are counted: the first ones of each
    /// kind run one-time initialisation (static fields, type loading).</summary>
    public const int WarmUpRequests = 1000;

    /// <param name="fd">The /dev/fuse fd to serve; <paramref name="ownedFd"/> is closed when the
    /// reader stops (null when the fd is shared and owned by the session).</param>
    public FuseDeviceReader(FuseDeviceSession session, FuseServer server, int fd, SafeFd? ownedFd, string name)
    {
        _session = session;
        _server = server;
        _fd = fd;
        _ownedFd = ownedFd;
        _thread = new Thread(Run) { IsBackground = true, Name = name };
    }

    public void Start()
    {
        // Page-aligned: the kernel copies whole pages in and out of these.
        _request = (byte*)NativeMemory.AlignedAlloc(BufferSize, 4096);
        _reply = (byte*)NativeMemory.AlignedAlloc(BufferSize, 4096);
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
            nint n = Libc.Read(_fd, _request, BufferSize);
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
            int length = _server.HandleRequest(in header, new ReadOnlySpan<IoVec>(in readable), new ReadOnlySpan<IoVec>(in writable));
            if (mayBlock)
            {
                _session.LeaveBlocking();
            }
            if (length > 0 && !WriteReply(length))
            {
                return null;
            }
            if (++_requests == WarmUpRequests)
            {
                _allocatedBeforeSteady = GC.GetAllocatedBytesForCurrentThread();
            }
        }
    }

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
