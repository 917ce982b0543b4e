using Vhostfsd.FusePassthrough;
using Vhostfsd.FuseProtocol;
using Vhostfsd.GuestKernelShim;
using Vhostfsd.Posix;

namespace Vhostfsd.Testing;

/// <summary>The one place where the shim touches FusePassthrough's file system rather than its protocol:
/// a socket-less daemon for tests. FuseServer's dispatcher runs on worker threads that read requests from
/// an <see cref="InProcessChannelBackend"/> (/dev/fuse semantics), each through its own clone of the channel, and
/// write the replies back, as a multi-threaded libfuse daemon does with /dev/fuse.</summary>
public sealed unsafe class InProcessFuseServer : IDisposable
{
    private readonly Thread[] _workers;
    private readonly CancellationTokenSource _stop = new();
    private int _disposed;

    /// <param name="options">The passthrough file system's options (shared directory, cache policy, xattr, ...).</param>
    /// <param name="workers">Threads serving requests; more than one, so that a blocking request (SETLKW) does not stall the rest.</param>
    public InProcessFuseServer(PassthroughOptions options, int workers = 4, Action<string>? log = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(workers, 1);
        Server = new FuseServer(options, log);
        Channel = new InProcessChannelBackend(maxPagesLimit: FuseServer.MaxWrite / FuseConn.PageSize);
        _workers = new Thread[workers];
        _clones = new InProcessChannelClone?[workers];
        for (int i = 0; i < workers; i++)
        {
            // The first worker reads the channel itself; the others each read a clone of it (FUSE_DEV_IOC_CLONE),
            // as a libfuse daemon with clone_fd does.
            var clone = i == 0 ? null : Channel.Clone();
            _clones[i] = clone;
            _workers[i] = new Thread(() => Serve(clone)) { IsBackground = true, Name = $"fuse-server-{i}" };
            _workers[i].Start();
        }
    }

    private readonly InProcessChannelClone?[] _clones;

    /// <summary>Workers reading through a clone of the channel.</summary>
    public int Clones => _clones.Count(c => c != null);

    public FuseServer Server { get; }

    public InProcessChannelBackend Channel { get; }

    /// <summary>Requests served (replies written or reply-less requests consumed).</summary>
    public long Served => Interlocked.Read(ref _served);

    private long _served;

    /// <summary>Mounts the server's file system through the channel.</summary>
    public FuseFs Mount(MountOptions? options = null, FuseConnOptions? connOptions = null) => FuseFs.Mount(Channel, options, connOptions);

    private void Serve(InProcessChannelClone? clone)
    {
        var request = GC.AllocateUninitializedArray<byte>(FuseServer.MaxRequestSize, pinned: true);
        var reply = GC.AllocateUninitializedArray<byte>(FuseServer.MaxRequestSize, pinned: true);
        var token = _stop.Token;
        while (!token.IsCancellationRequested)
        {
            int n = clone != null ? clone.ReadRequest(request, cancellation: token) : Channel.ReadRequest(request, cancellation: token);
            if (n < 0)
            {
                if (n == -(int)Errno.ENODEV || n == -(int)Errno.EINTR)
                {
                    return;
                }
                continue;
            }
            int length;
            // SAFETY: both arrays are pinned for their lifetime; the vectors cover n and reply.Length bytes of them.
            fixed (byte* req = request)
            fixed (byte* rep = reply)
            {
                var readable = new IoVec(req, (nuint)n);
                var writable = new IoVec(rep, (nuint)reply.Length);
                var segments = new ReadOnlySpan<IoVec>(&readable, 1);
                var header = FuseRequestHeader.Read(segments);
                length = Server.HandleRequest(in header, segments, new ReadOnlySpan<IoVec>(&writable, 1));
            }
            if (length > 0)
            {
                if (clone != null)
                {
                    clone.WriteReply(reply.AsSpan(0, length));
                }
                else
                {
                    Channel.WriteReply(reply.AsSpan(0, length));
                }
            }
            Interlocked.Increment(ref _served);
        }
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        _stop.Cancel();
        foreach (var worker in _workers)
        {
            worker.Join(TimeSpan.FromSeconds(10));
        }
        foreach (var clone in _clones)
        {
            clone?.Dispose();
        }
        Server.Dispose();
    }
}
