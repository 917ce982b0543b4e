using Vhostfsd.FusePassthrough;
using Vhostfsd.VhostUser;
using Vhostfsd.Virtqueue;

namespace Vhostfsd.Device;

/// <summary>Joins one ring to the FUSE server. Requests run inline on the ring's worker thread —
/// the published measurements favour no hand-off at low queue depth — except those that may block
/// for long (lock waits, syncs, flushes, big copies), which go to the pool so that the ring keeps
/// moving.</summary>
public sealed class FuseRequestHandler : IVringHandler
{
    private readonly FuseServer _server;
    private readonly BlockingRequestPool? _pool;

    public FuseRequestHandler(FuseServer server, BlockingRequestPool? pool)
    {
        _server = server;
        _pool = pool;
    }

    public void HandleChain(Vring vring, DescriptorChain chain)
    {
        if (_pool is not null && FuseServer.MayBlock(chain.Readable) && _pool.TryEnqueue(vring, chain))
        {
            return;
        }
        Execute(_server, vring, chain);
    }

    /// <summary>Runs one request and completes its chain: the reply is published only after the
    /// operation finished.</summary>
    internal static void Execute(FuseServer server, Vring vring, DescriptorChain chain)
    {
        int written = server.HandleRequest(chain.Readable, chain.Writable);
        vring.Complete(chain, (uint)written);
    }
}
