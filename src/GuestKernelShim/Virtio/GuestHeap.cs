using System.Numerics;

namespace Vhostfsd.GuestKernelShim;

/// <summary>A simple thread-safe allocator of request and reply buffers inside guest memory (what the guest
/// kernel's kmalloc and page allocator are to virtio-fs). Blocks come in power-of-two size classes from
/// <see cref="MinBlock"/> to <see cref="MaxBlock"/>, carved from a bump pointer and recycled through one free
/// list per class; nothing is ever coalesced, which suits a steady mix of request sizes. When guest memory is
/// exhausted an allocation waits for a free instead of failing, as a sender waits for queue room.</summary>
internal sealed class GuestHeap
{
    public const int MinBlock = 64;
    public const ulong PageSize = 4096;
    private const int MinShift = 6;

    private readonly object _lock = new();
    private readonly ulong _start;
    private readonly ulong _end;
    private readonly ulong[][] _free;
    private readonly int[] _freeCount;
    private ulong _bump;
    private bool _closed;
    private int _waiters;
    private long _inUse;
    // Page ranges given back by user buffers (address order, adjacent ones merged); reused first-fit by later ones.
    private readonly List<(ulong Gpa, ulong Length)> _freeRanges = new();
    private long _pagesInUse;

    /// <param name="start">First guest-physical address of the heap (page aligned).</param>
    /// <param name="length">Bytes in the heap.</param>
    /// <param name="maxBlock">Largest block (a power of two).</param>
    public GuestHeap(ulong start, ulong length, int maxBlock)
    {
        if (!BitOperations.IsPow2(maxBlock) || maxBlock < MinBlock)
        {
            throw new ArgumentOutOfRangeException(nameof(maxBlock), maxBlock, "the largest block must be a power of two of at least 64 bytes");
        }
        if (length < (ulong)maxBlock)
        {
            throw new ArgumentOutOfRangeException(nameof(length), length, $"the heap must hold at least one block of {maxBlock} bytes");
        }
        _start = start;
        _end = start + length;
        _bump = start;
        MaxBlock = maxBlock;
        int classes = ClassOf(maxBlock) + 1;
        _free = new ulong[classes][];
        _freeCount = new int[classes];
        for (int i = 0; i < classes; i++)
        {
            _free[i] = new ulong[16];
        }
    }

    public int MaxBlock { get; }

    /// <summary>Bytes handed out and not yet freed.</summary>
    public long BytesInUse => Interlocked.Read(ref _inUse);

    private static int ClassOf(int length) => Math.Max(0, BitOperations.Log2((uint)Math.Max(length, MinBlock) - 1) + 1 - MinShift);

    private static int ClassSize(int sizeClass) => 1 << (sizeClass + MinShift);

    /// <summary>Allocates a block of at least <paramref name="length"/> bytes, waiting while memory is exhausted.
    /// False once the heap was closed (the device is going away).</summary>
    public bool TryAllocate(int length, out GuestBlock buffer)
    {
        if (length <= 0 || length > MaxBlock)
        {
            throw new ArgumentOutOfRangeException(nameof(length), length, $"blocks are 1..{MaxBlock} bytes");
        }
        int sizeClass = ClassOf(length);
        int size = ClassSize(sizeClass);
        lock (_lock)
        {
            while (true)
            {
                if (_closed)
                {
                    buffer = default;
                    return false;
                }
                if (_freeCount[sizeClass] > 0)
                {
                    ulong gpa = _free[sizeClass][--_freeCount[sizeClass]];
                    buffer = new GuestBlock(gpa, length, sizeClass);
                    _inUse += size;
                    return true;
                }
                // Blocks are aligned to their size (min one cache line) so that a large one never straddles more pages than needed.
                ulong aligned = (_bump + (ulong)Math.Min(size, 4096) - 1) & ~((ulong)Math.Min(size, 4096) - 1);
                if (aligned + (ulong)size <= _end)
                {
                    _bump = aligned + (ulong)size;
                    buffer = new GuestBlock(aligned, length, sizeClass);
                    _inUse += size;
                    return true;
                }
                _waiters++;
                try
                {
                    Monitor.Wait(_lock);
                }
                finally
                {
                    _waiters--;
                }
            }
        }
    }

    /// <summary>Returns a block (empty buffers are ignored).</summary>
    public void Free(GuestBlock buffer)
    {
        if (buffer.IsEmpty)
        {
            return;
        }
        if (buffer.Gpa < _start || buffer.Gpa >= _end)
        {
            throw new ArgumentException($"block 0x{buffer.Gpa:x} is not in this heap", nameof(buffer));
        }
        lock (_lock)
        {
            ref var list = ref _free[buffer.SizeClass];
            int count = _freeCount[buffer.SizeClass];
            if (count == list.Length)
            {
                Array.Resize(ref list, count * 2);
            }
            list[count] = buffer.Gpa;
            _freeCount[buffer.SizeClass] = count + 1;
            _inUse -= ClassSize(buffer.SizeClass);
            if (_waiters > 0)
            {
                Monitor.PulseAll(_lock);
            }
        }
    }

    /// <summary>Bytes of page ranges held by user buffers.</summary>
    public long PageBytesInUse => Interlocked.Read(ref _pagesInUse);

    /// <summary>Reserves a page-aligned, contiguous range of at least <paramref name="length"/> bytes (rounded up to
    /// whole pages) for a user buffer: what a guest process's own pages are. Unlike a block it never waits: a buffer
    /// is set up once, and waiting for requests to free blocks could take forever. False when no range is free or the
    /// heap was closed.</summary>
    public bool TryAllocatePages(long length, out ulong gpa, out ulong reserved)
    {
        gpa = 0;
        reserved = ((ulong)length + PageSize - 1) & ~(PageSize - 1);
        if (length <= 0)
        {
            return false;
        }
        lock (_lock)
        {
            if (_closed)
            {
                return false;
            }
            for (int i = 0; i < _freeRanges.Count; i++)
            {
                var range = _freeRanges[i];
                if (range.Length >= reserved)
                {
                    gpa = range.Gpa;
                    if (range.Length == reserved)
                    {
                        _freeRanges.RemoveAt(i);
                    }
                    else
                    {
                        _freeRanges[i] = (range.Gpa + reserved, range.Length - reserved);
                    }
                    _pagesInUse += (long)reserved;
                    return true;
                }
            }
            ulong aligned = (_bump + PageSize - 1) & ~(PageSize - 1);
            if (aligned > _end || _end - aligned < reserved)
            {
                return false;
            }
            gpa = aligned;
            _bump = aligned + reserved;
            _pagesInUse += (long)reserved;
            return true;
        }
    }

    /// <summary>Returns a range from <see cref="TryAllocatePages"/>. A range that ends at the bump pointer goes back
    /// to it (so blocks can use it again); others are kept, merged with their neighbours, for later user buffers.</summary>
    public void FreePages(ulong gpa, ulong reserved)
    {
        if (reserved == 0)
        {
            return;
        }
        if (gpa < _start || gpa >= _end || _end - gpa < reserved)
        {
            throw new ArgumentException($"range 0x{gpa:x}+{reserved} is not in this heap", nameof(gpa));
        }
        lock (_lock)
        {
            _pagesInUse -= (long)reserved;
            int at = 0;
            while (at < _freeRanges.Count && _freeRanges[at].Gpa < gpa)
            {
                at++;
            }
            ulong start = gpa;
            ulong length = reserved;
            if (at < _freeRanges.Count && _freeRanges[at].Gpa == start + length)
            {
                length += _freeRanges[at].Length;
                _freeRanges.RemoveAt(at);
            }
            if (at > 0 && _freeRanges[at - 1].Gpa + _freeRanges[at - 1].Length == start)
            {
                at--;
                start = _freeRanges[at].Gpa;
                length += _freeRanges[at].Length;
                _freeRanges.RemoveAt(at);
            }
            if (start + length == _bump)
            {
                _bump = start;
            }
            else
            {
                _freeRanges.Insert(at, (start, length));
            }
            if (_waiters > 0)
            {
                Monitor.PulseAll(_lock);
            }
        }
    }

    /// <summary>Wakes and fails every waiting and later allocation.</summary>
    public void Close()
    {
        lock (_lock)
        {
            _closed = true;
            Monitor.PulseAll(_lock);
        }
    }
}
