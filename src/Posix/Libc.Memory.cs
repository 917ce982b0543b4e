using System.Runtime.InteropServices;

namespace Vhostfsd.Posix;

public static unsafe partial class Libc
{
    public const int PROT_NONE = 0;
    public const int PROT_READ = 1;
    public const int PROT_WRITE = 2;
    public const int MAP_SHARED = 0x01;
    public const int MAP_PRIVATE = 0x02;
    public const int MAP_ANONYMOUS = 0x20;
    public const int MAP_NORESERVE = 0x4000;
    public const int MAP_POPULATE = 0x8000;
    public static readonly nint MAP_FAILED = -1;
    public const uint MFD_CLOEXEC = 1;
    public const uint MFD_ALLOW_SEALING = 2;
    public const int MADV_DONTNEED = 4;

    [LibraryImport(Lib, EntryPoint = "memfd_create", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int MemfdCreate(string name, uint flags);

    [LibraryImport(Lib, EntryPoint = "ftruncate", SetLastError = true)]
    public static partial int FTruncate(int fd, long length);

    [LibraryImport(Lib, EntryPoint = "mmap", SetLastError = true)]
    public static partial nint Mmap(nint addr, nuint length, int prot, int flags, int fd, long offset);

    [LibraryImport(Lib, EntryPoint = "munmap", SetLastError = true)]
    public static partial int Munmap(nint addr, nuint length);

    [LibraryImport(Lib, EntryPoint = "madvise", SetLastError = true)]
    public static partial int Madvise(nint addr, nuint length, int advice);
}

/// <summary>An mmap'd range, unmapped on dispose.</summary>
public sealed class MemoryMapping : IDisposable
{
    private nint _address;

    private MemoryMapping(nint address, ulong length)
    {
        _address = address;
        Length = length;
    }

    public nint Address => _address;
    public ulong Length { get; }

    /// <summary>Maps <paramref name="length"/> bytes of <paramref name="fd"/> at <paramref name="offset"/>, shared, read-write.</summary>
    public static MemoryMapping MapShared(int fd, ulong length, long offset, bool writable = true)
    {
        int prot = Libc.PROT_READ | (writable ? Libc.PROT_WRITE : 0);
        nint addr = Libc.Mmap(0, (nuint)length, prot, Libc.MAP_SHARED | Libc.MAP_NORESERVE, fd, offset);
        if (addr == Libc.MAP_FAILED)
        {
            PosixException.ThrowLast($"mmap(fd {fd}, {length} bytes at {offset})");
        }
        return new MemoryMapping(addr, length);
    }

    public void Dispose()
    {
        nint addr = Interlocked.Exchange(ref _address, 0);
        if (addr != 0)
        {
            Libc.Munmap(addr, (nuint)Length);
        }
    }
}

/// <summary>An anonymous memory file (memfd) that can be mapped and passed to another process.</summary>
public static class MemFd
{
    /// <summary>Creates a memfd of <paramref name="size"/> bytes, close-on-exec.</summary>
    public static SafeFd Create(string name, ulong size)
    {
        var fd = SafeFd.FromResult(Libc.MemfdCreate(name, Libc.MFD_CLOEXEC | Libc.MFD_ALLOW_SEALING), "memfd_create");
        if (Libc.FTruncate(fd.Fd, (long)size) < 0)
        {
            var errno = Libc.LastErrno;
            fd.Dispose();
            throw new PosixException("ftruncate(memfd)", errno);
        }
        return fd;
    }
}
