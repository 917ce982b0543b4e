using System.Runtime.CompilerServices;
using Vhostfsd.Posix;
using Vhostfsd.Virtqueue;

namespace Vhostfsd.Testing;

/// <summary>Fabricated guest memory for queue tests: one memfd, mapped as one or more regions at
/// chosen guest-physical addresses, with VMM user addresses at <see cref="UserOffset"/> above them
/// (as a vhost-user front-end would report). Reads and writes go through the memory's own translation.</summary>
public sealed unsafe class QueueTestMemory : IDisposable
{
    /// <summary>The fake VMM user address of guest-physical 0.</summary>
    public const ulong UserOffset = 0x7f00_0000_0000;

    private readonly (ulong Gpa, ulong Size, ulong FileOffset)[] _layout;

    private QueueTestMemory(SafeFd fd, GuestMemory memory, (ulong, ulong, ulong)[] layout)
    {
        Fd = fd;
        Memory = memory;
        _layout = layout;
    }

    /// <summary>The backing memfd (regions sit one after another in it, in the order given).</summary>
    public SafeFd Fd { get; }

    public GuestMemory Memory { get; }

    /// <summary>One region of <paramref name="size"/> bytes at guest-physical 0.</summary>
    public static QueueTestMemory Create(ulong size) => Create((0, size));

    /// <summary>Regions at the given guest-physical addresses (sizes multiples of the page size).</summary>
    public static QueueTestMemory Create(params (ulong Gpa, ulong Size)[] regions)
    {
        ulong total = 0;
        var layout = new (ulong, ulong, ulong)[regions.Length];
        for (int i = 0; i < regions.Length; i++)
        {
            layout[i] = (regions[i].Gpa, regions[i].Size, total);
            total += regions[i].Size;
        }
        var fd = MemFd.Create("queue-test-memory", total);
        var memory = new GuestMemory();
        try
        {
            foreach (var (gpa, size, offset) in layout)
            {
                memory.AddRegion(GuestMemoryRegion.Map(fd, offset, size, gpa, gpa + UserOffset));
            }
        }
        catch
        {
            memory.Dispose();
            fd.Dispose();
            throw;
        }
        return new QueueTestMemory(fd, memory, layout);
    }

    /// <summary>Maps the same bytes as the region at <paramref name="gpa"/> again (a fresh mapping, for
    /// re-adding a removed region).</summary>
    public GuestMemoryRegion MapRegionAgain(ulong gpa)
    {
        foreach (var (start, size, offset) in _layout)
        {
            if (start == gpa)
            {
                return GuestMemoryRegion.Map(Fd, offset, size, start, start + UserOffset);
            }
        }
        throw new ArgumentException($"no region was created at 0x{gpa:x}");
    }

    /// <summary>Host pointer for [gpa, gpa + length), which must lie inside one region. Valid while the
    /// region is part of the memory (tests that remove regions hold their own view).</summary>
    public nint Host(ulong gpa, ulong length)
    {
        using var view = Memory.Acquire();
        if (!view.TryTranslate(gpa, length, out nint host))
        {
            throw new ArgumentException($"0x{gpa:x}+{length} is not inside one guest memory region");
        }
        return host;
    }

    public void Write(ulong gpa, ReadOnlySpan<byte> data)
    {
        // SAFETY: Host checked the whole range.
        data.CopyTo(new Span<byte>((void*)Host(gpa, (ulong)data.Length), data.Length));
    }

    public void Read(ulong gpa, Span<byte> data)
    {
        // SAFETY: Host checked the whole range.
        new ReadOnlySpan<byte>((void*)Host(gpa, (ulong)data.Length), data.Length).CopyTo(data);
    }

    public byte[] Read(ulong gpa, int length)
    {
        var data = new byte[length];
        Read(gpa, data);
        return data;
    }

    public void WriteObj<T>(ulong gpa, T value) where T : unmanaged
        // SAFETY: Host checked sizeof(T) bytes.
        => Unsafe.WriteUnaligned((void*)Host(gpa, (ulong)sizeof(T)), value);

    public T ReadObj<T>(ulong gpa) where T : unmanaged
        // SAFETY: Host checked sizeof(T) bytes.
        => Unsafe.ReadUnaligned<T>((void*)Host(gpa, (ulong)sizeof(T)));

    public void Dispose()
    {
        Memory.Dispose();
        Fd.Dispose();
    }
}
