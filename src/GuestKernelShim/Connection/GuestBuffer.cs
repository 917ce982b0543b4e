using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Vhostfsd.GuestKernelShim;

/// <summary>A transport whose daemon reads and writes guest memory (virtio-fs) lends ranges of it to user buffers.</summary>
internal interface IUserMemory
{
    /// <summary>Reserves at least <paramref name="length"/> bytes of contiguous guest memory; false when there is no room.
    /// <paramref name="host"/> is where the range is mapped in this process.</summary>
    bool TryAllocateUserMemory(int length, out ulong gpa, out ulong reserved, out nint host);

    /// <summary>Gives back a range from <see cref="TryAllocateUserMemory"/>.</summary>
    void FreeUserMemory(ulong gpa, ulong reserved);

    /// <summary>False once the transport unmapped guest memory (it was disposed).</summary>
    bool IsMapped { get; }
}

/// <summary>Memory owned by a caller that READ and WRITE requests use as their payload directly, with no copy: the
/// pages of a guest process doing direct I/O (cache=none, FOPEN_DIRECT_IO), which Linux pins with
/// fuse_get_user_pages() and puts straight into the request (the virtio-fs driver makes them the chain's data
/// descriptors). On virtio-fs it is a page-aligned range of guest memory that the daemon reads and writes in place;
/// on a transport without guest memory (the in-process channel) it is a pinned host buffer, so the same calls work
/// everywhere. Made by <see cref="FuseConn.AllocateUserBuffer"/>, usable only on that connection.</summary>
/// <remarks>
/// A request pins the buffer from the moment it is sent until the transport is done with it (the daemon handed the
/// chain back, or the connection ended), even when the caller stopped waiting (an interrupted or aborted request).
/// <see cref="Dispose"/> while requests are in flight is deferred: the buffer stops being usable at once, and its
/// guest memory is given back when the last of them lets go, so a late reply never lands in memory that belongs to
/// someone else. A request using a disposed buffer fails with EFAULT, as I/O on an unmapped address does.
/// Spans from <see cref="Span"/> are valid until the buffer is disposed; keep none across a Dispose.
/// </remarks>
public sealed unsafe class GuestBuffer : IDisposable
{
    private const int DisposedBit = 1 << 30;

    private readonly IUserMemory? _guest;
    private readonly byte[]? _host;
    private readonly byte* _pointer;
    private readonly ulong _gpa;
    private readonly ulong _reserved;
    // Requests using the buffer, plus DisposedBit once disposed.
    private int _state;

    /// <summary>A range of guest memory.</summary>
    internal GuestBuffer(FuseConn owner, IUserMemory guest, ulong gpa, ulong reserved, nint host, int length)
    {
        Owner = owner;
        _guest = guest;
        _gpa = gpa;
        _reserved = reserved;
        _pointer = (byte*)host;
        Length = length;
    }

    /// <summary>A pinned host buffer (transports without guest memory).</summary>
    internal GuestBuffer(FuseConn owner, int length)
    {
        Owner = owner;
        _host = GC.AllocateArray<byte>(length, pinned: true);
        // SAFETY: the array lives on the pinned object heap, so its address never changes while this object (which
        // keeps it alive) exists.
        _pointer = (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(_host));
        Length = length;
    }

    /// <summary>The connection the buffer belongs to.</summary>
    internal FuseConn Owner { get; }

    /// <summary>Bytes in the buffer.</summary>
    public int Length { get; }

    /// <summary>True when the buffer is guest memory (the daemon reads and writes it directly).</summary>
    public bool IsGuestMemory => _guest != null;

    /// <summary>Guest-physical address of the first byte (page aligned). Only for <see cref="IsGuestMemory"/>.</summary>
    public ulong GuestAddress => _guest != null ? _gpa : throw new InvalidOperationException("the buffer is host memory: the transport has no guest memory");

    /// <summary>Requests sent with this buffer and not yet let go by the transport.</summary>
    public int RequestsInFlight => Volatile.Read(ref _state) & ~DisposedBit;

    public bool IsDisposed => (Volatile.Read(ref _state) & DisposedBit) != 0;

    /// <summary>The buffer's bytes (what the process sees at its address).</summary>
    public Span<byte> Span
    {
        get
        {
            ObjectDisposedException.ThrowIf(IsDisposed, this);
            if (_guest != null && !_guest.IsMapped)
            {
                throw new ObjectDisposedException(nameof(GuestBuffer), "the transport's guest memory is gone");
            }
            // SAFETY: _pointer covers Length bytes: a reserved range of mapped guest memory (checked above) or the
            // pinned array; neither is given back before Dispose.
            return new Span<byte>(_pointer, Length);
        }
    }

    /// <summary>The part [<paramref name="start"/>, start + <paramref name="length"/>) of <see cref="Span"/>.</summary>
    public Span<byte> AsSpan(int start, int length) => Span.Slice(start, length);

    /// <summary>Throws <see cref="ArgumentOutOfRangeException"/> unless [<paramref name="offset"/>, +<paramref name="length"/>)
    /// lies inside the buffer.</summary>
    internal void CheckRange(int offset, int length)
    {
        if (offset < 0 || length < 0 || offset > Length || length > Length - offset)
        {
            throw new ArgumentOutOfRangeException(nameof(length), length, $"[{offset}, +{length}) is not inside the buffer of {Length} bytes");
        }
    }

    /// <summary>Guest-physical address of byte <paramref name="offset"/> (the transport checked the range).</summary>
    internal ulong GpaAt(int offset) => _gpa + (ulong)offset;

    /// <summary>Bytes for a transport that copies (the in-process channel). Only while the request holds a use of
    /// the buffer, which keeps the memory even after Dispose.</summary>
    internal Span<byte> PayloadSpan(int offset, int length)
    {
        CheckRange(offset, length);
        // SAFETY: the range lies inside the buffer (checked above), and a request's use keeps the memory.
        return new Span<byte>(_pointer + offset, length);
    }

    /// <summary>A request starts using the buffer; false once it was disposed.</summary>
    internal bool TryAcquire()
    {
        while (true)
        {
            int state = Volatile.Read(ref _state);
            if ((state & DisposedBit) != 0)
            {
                return false;
            }
            if (Interlocked.CompareExchange(ref _state, state + 1, state) == state)
            {
                return true;
            }
        }
    }

    /// <summary>A request is done with the buffer; the last one after a Dispose gives the memory back.</summary>
    internal void ReleaseUse()
    {
        int state = Interlocked.Decrement(ref _state);
        if (state < 0)
        {
            throw new InvalidOperationException("a user buffer was released more often than used");
        }
        if (state == DisposedBit)
        {
            Free();
        }
    }

    /// <summary>Stops the buffer being used; its memory goes back now, or when the last request in flight with it
    /// is done (deferred, never freed under a request).</summary>
    public void Dispose()
    {
        while (true)
        {
            int state = Volatile.Read(ref _state);
            if ((state & DisposedBit) != 0)
            {
                return;
            }
            if (Interlocked.CompareExchange(ref _state, state | DisposedBit, state) == state)
            {
                if (state == 0)
                {
                    Free();
                }
                return;
            }
        }
    }

    private void Free() => _guest?.FreeUserMemory(_gpa, _reserved);

    public override string ToString() => _guest != null ? $"guest buffer 0x{_gpa:x}+{Length}" : $"host buffer of {Length} bytes";
}
