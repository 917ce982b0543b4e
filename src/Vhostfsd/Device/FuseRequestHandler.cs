using Vhostfsd.FuseProtocol;
using Vhostfsd.FusePassthrough;
using Vhostfsd.VhostUser;
using Vhostfsd.Virtqueue;

namespace Vhostfsd.Device;

/// <summary>Joins one ring to the FUSE server. Requests run inline on the ring's worker thread —
/// the published measurements favour no hand-off at low queue depth — except those that may block
/// for long (lock waits, syncs, flushes, copy_file_range, fallocate), which go to the pool so that
/// the ring keeps moving, and big READs while more requests wait, which go to a pool thread
/// that is idle or about to finish a copy, so that copies run beside the worker on another CPU.</summary>
public sealed class FuseRequestHandler : IVringHandler
{
    private readonly FuseServer _server;
    private readonly BlockingRequestPool? _pool;

    public FuseRequestHandler(FuseServer server, BlockingRequestPool? pool)
    {
        _server = server;
        _pool = pool;
    }

    /// <summary>A READ of at least this many bytes is handed to the pool when more
    /// requests wait on the ring. Its copy takes ~30 µs or more (at a few GB/s), several times the
    /// cost of the hand-off, and with one request queue (what QEMU, libvirt and Kata configure by
    /// default) it would otherwise hold every request behind it on the one worker thread. WRITEs stay
    /// inline: writes to one file are serialized by the host's inode lock (tmpfs, buffered ext4), so
    /// a second thread only adds contention: with WRITEs handed off too, 16 writers on one queue keep
    /// the same MiB/s for 80 % more daemon CPU per MiB (docs/performance.md).</summary>
    public const int LargeReadBytes = 128 * 1024;

    public void HandleChain(OwnedChain chain, RingBacklog backlog)
    {
        // The one read of the header from guest memory: the route and the run both follow this copy.
        var request = FuseRequestHeader.Read(chain.Readable);
        if (_pool is not null)
        {
            switch (FuseServer.Triage(in request, LargeReadBytes))
            {
                // Taken by the pool: its thread completes the chain.
                case RequestTriage.MayBlock when _pool.TryEnqueue(in chain, in request):
                case RequestTriage.LargeRead when backlog.HasMore && _pool.TryEnqueueCopy(in chain, in request):
                    return;
            }
        }
        Execute(_server, in chain, in request);
    }

    /// <summary>Runs one request, as <paramref name="request"/> (its header, copied when it was
    /// routed) says, and completes its chain: the reply is published only after the operation finished.</summary>
    internal static void Execute(FuseServer server, in OwnedChain chain, in FuseRequestHeader request)
    {
        int written = server.HandleRequest(in request, chain.Readable, chain.Writable);
        chain.Complete((uint)written);
    }
}
