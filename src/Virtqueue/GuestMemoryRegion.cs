using Vhostfsd.Posix;

namespace Vhostfsd.Virtqueue;

/// <summary>One mapped region of guest memory: <see cref="Size"/> bytes that the guest sees at
/// <see cref="GuestPhysAddr"/> and the VMM at <see cref="UserAddr"/>, mapped here at <see cref="HostAddress"/>.</summary>
/// <remarks>
/// Lifetime is reference-counted. The creator holds one reference, released by <see cref="Dispose"/>
/// (idempotent). <see cref="GuestMemory.AddRegion"/> takes over that reference, so a region handed
/// to a <see cref="GuestMemory"/> needs no Dispose by the caller. Every memory snapshot that lists
/// the region, and every queue that keeps its rings in it, holds one more. The mapping is removed
/// when the last reference goes, so a pointer obtained through a live <see cref="GuestMemoryView"/>
/// stays valid while that view is held, even if the region was removed from the memory meanwhile.
/// </remarks>
public sealed class GuestMemoryRegion : IDisposable
{
    private readonly MemoryMapping? _mapping;
    private int _refs = 1;
    private int _ownerReleased;

    private GuestMemoryRegion(MemoryMapping? mapping, nint host, ulong size, ulong guestPhysAddr, ulong userAddr)
    {
        _mapping = mapping;
        HostAddress = host;
        Size = size;
        GuestPhysAddr = guestPhysAddr;
        UserAddr = userAddr;
    }

    /// <summary>Guest-physical address of the first byte.</summary>
    public ulong GuestPhysAddr { get; }

    /// <summary>Length in bytes (never 0).</summary>
    public ulong Size { get; }

    /// <summary>Address of the first byte in the VMM's address space (vhost-user ring addresses use it).</summary>
    public ulong UserAddr { get; }

    /// <summary>Address of the first byte in this process (the mapping start plus the sub-page part of the mmap offset).</summary>
    public nint HostAddress { get; }

    /// <summary>One past the last guest-physical address.</summary>
    public ulong GuestPhysEnd => GuestPhysAddr + Size;

    /// <summary>True once the mapping is gone (all references released).</summary>
    public bool IsUnmapped => Volatile.Read(ref _refs) == 0;

    /// <summary>Maps <paramref name="size"/> bytes of <paramref name="fd"/> from <paramref name="mmapOffset"/>,
    /// shared and read-write. The fd is not kept: the caller may close it afterwards.
    /// Throws <see cref="ArgumentException"/> for a zero size or ranges that overflow, <see cref="PosixException"/> when mmap fails.</summary>
    public static GuestMemoryRegion Map(SafeFd fd, ulong mmapOffset, ulong size, ulong guestPhysAddr, ulong userAddr)
    {
        ArgumentNullException.ThrowIfNull(fd);
        CheckRanges(size, guestPhysAddr, userAddr);
        // mmap wants a page-aligned offset; vhost-user's mmap_offset need not be one. Map from
        // the page below it and point past the difference.
        ulong pageMask = (ulong)Environment.SystemPageSize - 1;
        ulong mapOffset = mmapOffset & ~pageMask;
        ulong delta = mmapOffset - mapOffset;
        if (mmapOffset > long.MaxValue || size > long.MaxValue - delta || size + delta > long.MaxValue - mapOffset)
        {
            throw new ArgumentException($"mmap offset 0x{mmapOffset:x} + size 0x{size:x} overflows");
        }
        var mapping = MemoryMapping.MapShared(fd.Fd, size + delta, (long)mapOffset);
        return new GuestMemoryRegion(mapping, mapping.Address + (nint)delta, size, guestPhysAddr, userAddr);
    }

    /// <summary>Wraps memory this process already owns (not unmapped on release). For tests and
    /// for callers that manage a mapping themselves; the memory must outlive every reference.</summary>
    public static GuestMemoryRegion FromHostMemory(nint host, ulong size, ulong guestPhysAddr, ulong userAddr)
    {
        if (host == 0)
        {
            throw new ArgumentException("host address is null", nameof(host));
        }
        CheckRanges(size, guestPhysAddr, userAddr);
        if ((ulong)host > ulong.MaxValue - size)
        {
            throw new ArgumentException("host range overflows", nameof(size));
        }
        return new GuestMemoryRegion(null, host, size, guestPhysAddr, userAddr);
    }

    private static void CheckRanges(ulong size, ulong guestPhysAddr, ulong userAddr)
    {
        if (size == 0)
        {
            throw new ArgumentException("a memory region cannot be empty", nameof(size));
        }
        if (guestPhysAddr > ulong.MaxValue - size)
        {
            throw new ArgumentException($"guest range 0x{guestPhysAddr:x} + 0x{size:x} overflows", nameof(guestPhysAddr));
        }
        if (userAddr > ulong.MaxValue - size)
        {
            throw new ArgumentException($"user range 0x{userAddr:x} + 0x{size:x} overflows", nameof(userAddr));
        }
    }

    /// <summary>True when the guest-physical or the user ranges of the two regions intersect.</summary>
    public bool Overlaps(GuestMemoryRegion other)
        => GuestPhysAddr < other.GuestPhysAddr + other.Size && other.GuestPhysAddr < GuestPhysAddr + Size
        || UserAddr < other.UserAddr + other.Size && other.UserAddr < UserAddr + Size;

    /// <summary>Releases the creator's reference (once; later calls do nothing). After
    /// <see cref="GuestMemory.AddRegion"/> the memory owns that reference and this is a no-op.</summary>
    public void Dispose()
    {
        ReleaseOwner();
    }

    internal void ReleaseOwner()
    {
        if (Interlocked.Exchange(ref _ownerReleased, 1) == 0)
        {
            Release();
        }
    }

    internal bool IsOwnerReleased => Volatile.Read(ref _ownerReleased) != 0;

    /// <summary>Adds a reference. Only called by holders of another live reference, so the count is above 0.</summary>
    internal void AddRef()
    {
        int refs = Interlocked.Increment(ref _refs);
        if (refs <= 1)
        {
            throw new InvalidOperationException("guest memory region referenced after it was unmapped");
        }
    }

    internal void Release()
    {
        int refs = Interlocked.Decrement(ref _refs);
        if (refs == 0)
        {
            _mapping?.Dispose();
        }
        else if (refs < 0)
        {
            throw new InvalidOperationException("guest memory region released more often than referenced");
        }
    }

    public override string ToString()
        => $"gpa 0x{GuestPhysAddr:x}+0x{Size:x} user 0x{UserAddr:x}";
}
