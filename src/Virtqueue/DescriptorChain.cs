using Vhostfsd.Posix;

namespace Vhostfsd.Virtqueue;

/// <summary>Outcome of <see cref="DeviceQueue.TryPop"/>.</summary>
public enum PopResult
{
    /// <summary>A chain was popped into the <see cref="DescriptorChain"/>.</summary>
    Popped,
    /// <summary>The driver has published nothing new.</summary>
    Empty,
    /// <summary>The next chain was refused; <see cref="DescriptorChain.Error"/> says why.</summary>
    Malformed,
}

/// <summary>Why a chain was refused. Except for <see cref="AvailIndexJump"/> (nothing consumed) and
/// <see cref="HeadOutOfRange"/> (no head to give back), the avail entry was consumed and
/// <see cref="DescriptorChain.Head"/> is a valid head that the caller may return with
/// <c>PushUsed(head, 0)</c>, or the caller breaks the queue.</summary>
public enum ChainError
{
    None = 0,
    /// <summary>avail.idx is more than the queue size ahead of the next entry to pop. The queue is
    /// beyond repair; nothing was consumed.</summary>
    AvailIndexJump,
    /// <summary>The avail ring names a head index &gt;= queue size. The entry was consumed.</summary>
    HeadOutOfRange,
    /// <summary>A next index is &gt;= the queue size (or &gt;= the indirect table's entry count).</summary>
    DescriptorIndexOutOfRange,
    /// <summary>More descriptors than the queue size (or than the indirect table holds): a loop.</summary>
    ChainTooLong,
    /// <summary>An indirect descriptor although VIRTIO_F_INDIRECT_DESC was not negotiated.</summary>
    IndirectNotNegotiated,
    /// <summary>An indirect descriptor inside an indirect table.</summary>
    NestedIndirect,
    /// <summary>An indirect descriptor with NEXT also set (the spec forbids it).</summary>
    IndirectWithNext,
    /// <summary>An indirect table length of 0 or not a multiple of 16.</summary>
    IndirectLengthInvalid,
    /// <summary>An indirect table with more entries than <see cref="DeviceQueue.MaxIndirectEntries"/>.</summary>
    IndirectTableTooLong,
    /// <summary>A device-readable descriptor after a device-writable one.</summary>
    ReadableAfterWritable,
    /// <summary>A buffer or indirect table outside guest memory, overflowing, crossing a gap, or
    /// (for an indirect table) not inside one region.</summary>
    AddressOutOfRange,
    /// <summary>The buffers add up to more than 4 GiB - 1 (the used length is 32-bit).</summary>
    TotalLengthTooLarge,
    /// <summary>More host segments than the <see cref="DescriptorChain"/> was built to hold.</summary>
    TooManySegments,
}

/// <summary>A popped descriptor chain as host memory segments: the device-readable ones, then the
/// device-writable ones. Preallocated and reused for every pop; no allocation per pop.</summary>
/// <remarks>The chain holds a <see cref="GuestMemoryView"/> from the pop until <see cref="Release"/>
/// or the next pop into it, so the segments stay mapped while the caller works on them even if
/// the region is removed meanwhile. One thread at a time uses a chain.</remarks>
public sealed class DescriptorChain
{
    private readonly IoVec[] _segments;
    private int _readableCount;
    private int _count;
    private GuestMemoryView _view;

    /// <param name="maxSegments">Most host segments one chain may produce: at least the longest chain
    /// in descriptors; a buffer that spans adjacent regions takes one segment per region.</param>
    public DescriptorChain(int maxSegments)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxSegments, 1);
        _segments = new IoVec[maxSegments];
    }

    public int Capacity => _segments.Length;

    /// <summary>The head descriptor index (the id to give to <see cref="DeviceQueue.PushUsed"/>).</summary>
    public ushort Head { get; private set; }

    /// <summary>Driver-to-device buffers, in chain order.</summary>
    public ReadOnlySpan<IoVec> Readable => _segments.AsSpan(0, _readableCount);

    /// <summary>Device-to-driver buffers, in chain order.</summary>
    public ReadOnlySpan<IoVec> Writable => _segments.AsSpan(_readableCount, _count - _readableCount);

    public ulong ReadableBytes { get; private set; }
    public ulong WritableBytes { get; private set; }

    /// <summary>Descriptors walked, the indirect one included.</summary>
    public int DescriptorCount { get; private set; }

    /// <summary>True when the chain went through an indirect table.</summary>
    public bool IsIndirect { get; private set; }

    /// <summary>Why the last pop was refused (<see cref="ChainError.None"/> after a successful pop).</summary>
    public ChainError Error { get; private set; }

    /// <summary>True while the chain holds segments (between a successful pop and <see cref="Release"/>).</summary>
    public bool IsHeld => _view.IsHeld;

    /// <summary>Changes with every pop into the chain and every <see cref="Release"/>: an
    /// <see cref="OwnedChain"/> remembers it, so a completion can tell whether the chain is still the
    /// one it was handed out as.</summary>
    public ulong Generation { get; private set; }

    /// <summary>Drops the segments and the memory view they point into. Idempotent.</summary>
    public void Release()
    {
        Generation++;
        var view = _view;
        _view = default;
        _readableCount = 0;
        _count = 0;
        view.Dispose();
    }

    internal void Begin(ushort head, GuestMemoryView view)
    {
        Release();
        Head = head;
        _view = view;
        ReadableBytes = 0;
        WritableBytes = 0;
        DescriptorCount = 0;
        IsIndirect = false;
        Error = ChainError.None;
    }

    internal void Fail(ushort head, ChainError error)
    {
        Release();
        Head = head;
        ReadableBytes = 0;
        WritableBytes = 0;
        Error = error;
    }

    internal ref readonly GuestMemoryView View => ref _view;

    internal Span<IoVec> FreeSegments => _segments.AsSpan(_count);

    internal void CountDescriptor() => DescriptorCount++;

    internal void MarkIndirect() => IsIndirect = true;

    /// <summary>Records <paramref name="segments"/> segments just written to <see cref="FreeSegments"/>.</summary>
    internal void Append(int segments, uint bytes, bool writable)
    {
        _count += segments;
        if (writable)
        {
            WritableBytes += bytes;
        }
        else
        {
            _readableCount = _count;
            ReadableBytes += bytes;
        }
    }
}
