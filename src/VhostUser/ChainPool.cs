using Vhostfsd.Virtqueue;

namespace Vhostfsd.VhostUser;

/// <summary>The <see cref="DescriptorChain"/>s a ring pops into. Its worker rents one per chain it
/// hands out; a chain completed from another thread comes back here, one completed inline stays with
/// the worker. It grows only while handlers hold chains (bounded by the ring size: heads in flight are
/// unique), so the steady state allocates nothing. Any thread.</summary>
internal sealed class ChainPool
{
    private readonly Stack<DescriptorChain> _chains = new();
    private readonly int _maxSegments;

    /// <param name="maxSegments">Segments each new chain has room for.</param>
    public ChainPool(int maxSegments)
    {
        _maxSegments = maxSegments;
    }

    public DescriptorChain Rent()
    {
        lock (_chains)
        {
            if (_chains.Count > 0)
            {
                return _chains.Pop();
            }
        }
        return new DescriptorChain(_maxSegments);
    }

    /// <summary>Keeps <paramref name="chain"/> (released) for the next <see cref="Rent"/>, unless
    /// <paramref name="keepAtMost"/> are kept already.</summary>
    public void Return(DescriptorChain chain, int keepAtMost)
    {
        lock (_chains)
        {
            if (_chains.Count < keepAtMost)
            {
                _chains.Push(chain);
            }
        }
    }

    public void Clear()
    {
        lock (_chains)
        {
            _chains.Clear();
        }
    }
}
