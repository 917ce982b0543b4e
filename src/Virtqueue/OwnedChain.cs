using Vhostfsd.Posix;

namespace Vhostfsd.Virtqueue;

/// <summary>Takes back chains it handed out as <see cref="OwnedChain"/>s: publishes each as used
/// (a vhost-user ring does) or whatever its owner does with a finished chain.</summary>
public interface IChainCompletion
{
    /// <summary>Takes <paramref name="chain"/> back with <paramref name="bytesWritten"/> bytes
    /// written into its writable segments. Any thread. A hand-out it no longer expects (completed
    /// already, or its queue was stopped meanwhile) is dropped.</summary>
    void Complete(in OwnedChain chain, uint bytesWritten);
}

/// <summary>A popped chain together with where it must go back. Whoever holds it owns the chain:
/// they read its segments and write the reply, then call <see cref="Complete"/> once, from any
/// thread; afterwards the segments and <see cref="Chain"/> belong to the owner again and must not
/// be touched. Passing the value on (to a pool thread, say) passes the ownership with it.</summary>
/// <remarks>A value, not an object, so handing a chain around allocates nothing. Copies of it name
/// the same hand-out; <see cref="Generation"/> lets the owner tell a second completion of it from
/// a completion of whatever the <see cref="DescriptorChain"/> object was popped into since.</remarks>
public readonly struct OwnedChain
{
    private readonly IChainCompletion _owner;

    public OwnedChain(DescriptorChain chain, IChainCompletion owner)
    {
        ArgumentNullException.ThrowIfNull(chain);
        ArgumentNullException.ThrowIfNull(owner);
        Chain = chain;
        _owner = owner;
        Generation = chain.Generation;
    }

    /// <summary>The chain's segments and sizes; valid until <see cref="Complete"/>.</summary>
    public DescriptorChain Chain { get; }

    /// <summary>The chain's <see cref="DescriptorChain.Generation"/> when it was handed out.</summary>
    public ulong Generation { get; }

    /// <summary>True while the chain is still this hand-out: not completed (released) nor popped into since.</summary>
    public bool IsCurrent => Chain is not null && Chain.Generation == Generation;

    /// <summary>Driver-to-device buffers (the request), in chain order.</summary>
    public ReadOnlySpan<IoVec> Readable => Chain.Readable;

    /// <summary>Device-to-driver buffers (room for the reply), in chain order.</summary>
    public ReadOnlySpan<IoVec> Writable => Chain.Writable;

    /// <summary>Gives the chain back with <paramref name="bytesWritten"/> bytes written into
    /// <see cref="Writable"/>. Once; the chain is not this holder's afterwards.</summary>
    public void Complete(uint bytesWritten) => _owner.Complete(in this, bytesWritten);
}
