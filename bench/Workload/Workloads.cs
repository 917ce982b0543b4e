using System.Runtime.InteropServices;
using Vhostfsd.FuseProtocol;
using Vhostfsd.GuestKernelShim;
using Vhostfsd.Posix;

namespace Vhostfsd.Bench;

/// <summary>One caller's share of a workload: <see cref="Step"/> does one operation (timed as one latency
/// sample) and returns the units it accounts for (1 per operation, bytes for bandwidth, entries for listings).</summary>
public abstract class CallerWork : IDisposable
{
    public abstract long Step();

    public virtual void Dispose()
    {
    }
}

/// <summary>A workload: how to run it through the shim and natively, and the unit it is reported in.</summary>
public abstract class Workload
{
    public abstract string Name { get; }

    /// <summary>"ops/s", "MiB/s" or "entries/s".</summary>
    public abstract string Unit { get; }

    /// <summary>Units per step are divided by this for the report (bytes → MiB).</summary>
    public virtual double UnitDivisor => 1;

    /// <summary>What one step is, for the report.</summary>
    public abstract string Description { get; }

    public abstract CallerWork CreateFuse(FuseSession session, int caller, int callers);

    public abstract CallerWork CreateNative(NativeSession session, int caller, int callers);

    /// <summary>Something the session decided that the report should say (e.g. the READ size granted).</summary>
    public virtual string? Note(FuseSession session) => null;

    /// <summary>What the daemon must let the guest cache for this workload.</summary>
    public virtual DaemonCaching Caching => DaemonCaching.None;

    /// <summary>The shim mount the workload runs on (a page cache); null: the bare connection.</summary>
    public virtual MountOptions? MountOptions(DatasetShape shape) => null;

    /// <summary>Runs once per daemon cell after the session is up and before the warm-up (e.g. filling a cache).</summary>
    public virtual void Prepare(FuseSession session)
    {
    }

    public static readonly string[] AllNames =
        ["metadata", "smallfile", "readdirplus", "randread", "randwrite", "seqread", "seqwrite", "gitstatus", "cachedread", "cachedwrite"];

    public static Workload Create(string name) => name switch
    {
        "metadata" => new MetadataWorkload(),
        "smallfile" => new SmallFileWorkload(),
        "readdirplus" => new ReaddirWorkload(),
        "randread" => new RandomIoWorkload(write: false),
        "randwrite" => new RandomIoWorkload(write: true),
        "seqread" => new SequentialIoWorkload(write: false),
        "seqwrite" => new SequentialIoWorkload(write: true),
        "gitstatus" => new GitStatusWorkload(),
        "cachedread" => new CachedReadWorkload(),
        "cachedwrite" => new CachedWriteWorkload(),
        _ => throw new ArgumentException($"unknown workload '{name}' (one of {string.Join(", ", AllNames)})"),
    };
}

/// <summary>xorshift64*: a per-caller random sequence without allocation or sharing.</summary>
internal struct FastRandom
{
    private ulong _state;

    public FastRandom(int seed) => _state = 0x9E3779B97F4A7C15UL * (ulong)(seed + 1);

    public ulong Next()
    {
        _state ^= _state >> 12;
        _state ^= _state << 25;
        _state ^= _state >> 27;
        return _state * 0x2545F4914F6CDD1DUL;
    }

    public int Next(int bound) => (int)(Next() % (ulong)bound);
}

/// <summary>A page-aligned native buffer for the native I/O workloads, as programs that do large I/O
/// allocate them (posix_memalign). Alignment matters on a FUSE mount: an unaligned 1 MiB buffer spans
/// 257 pages, one more than a FUSE request carries (max_pages 256), so each 1 MiB call would be two
/// requests.</summary>
internal sealed unsafe class AlignedBuffer : IDisposable
{
    private byte* _data;

    public AlignedBuffer(int length)
    {
        Length = length;
        _data = (byte*)NativeMemory.AlignedAlloc((nuint)length, 4096);
        Span.Clear();
    }

    public int Length { get; }

    // SAFETY: _data holds Length bytes until Dispose; callers do not use the span after it.
    public Span<byte> Span => new(_data, Length);

    public void Dispose()
    {
        NativeMemory.AlignedFree(_data);
        _data = null;
    }
}

internal static unsafe class Native
{
    public static void Stat(int dirFd, byte[] nameWithNul)
    {
        Statx st;
        fixed (byte* name = nameWithNul)
        {
            // SAFETY: the name is NUL-terminated and pinned; st is a local of the kernel's size.
            if (Libc.StatxAt(dirFd, name, Libc.AT_SYMLINK_NOFOLLOW, 0x7FF, &st) != 0)
            {
                throw new BenchFailure($"statx: {Libc.LastErrno}");
            }
        }
    }

    public static int OpenAt(int dirFd, byte[] nameWithNul, int flags, uint mode = 0)
    {
        fixed (byte* name = nameWithNul)
        {
            // SAFETY: the name is NUL-terminated and pinned.
            int fd = Libc.OpenAt(dirFd, name, flags | Libc.O_CLOEXEC, mode);
            if (fd < 0)
            {
                throw new BenchFailure($"openat: {Libc.LastErrno}");
            }
            return fd;
        }
    }

    public static int Pread(int fd, Span<byte> buffer, long offset)
    {
        fixed (byte* p = buffer)
        {
            // SAFETY: p covers buffer.Length bytes.
            nint n = Libc.Pread(fd, p, (nuint)buffer.Length, offset);
            if (n < 0)
            {
                throw new BenchFailure($"pread: {Libc.LastErrno}");
            }
            return (int)n;
        }
    }

    public static int Pwrite(int fd, ReadOnlySpan<byte> data, long offset)
    {
        fixed (byte* p = data)
        {
            // SAFETY: p covers data.Length bytes.
            nint n = Libc.Pwrite(fd, p, (nuint)data.Length, offset);
            if (n < 0)
            {
                throw new BenchFailure($"pwrite: {Libc.LastErrno}");
            }
            return (int)n;
        }
    }
}

/// <summary>LOOKUP + GETATTR of a random existing file of the tree (a guest stat() with cache=none).</summary>
public sealed class MetadataWorkload : Workload
{
    public override string Name => "metadata";
    public override string Unit => "ops/s";
    public override string Description => "LOOKUP + GETATTR of a random file of the tree (native: statx)";

    public override CallerWork CreateFuse(FuseSession session, int caller, int callers) => new Fuse(session, caller);

    public override CallerWork CreateNative(NativeSession session, int caller, int callers) => new NativeWork(session, caller);

    private sealed class Fuse(FuseSession s, int caller) : CallerWork
    {
        private FastRandom _random = new(caller);

        public override long Step()
        {
            int i = _random.Next(s.Dataset.Shape.TreeFiles);
            var entry = s.Ops.Lookup(s.DirNodes[i / s.Dataset.Shape.FilesPerDir], s.Dataset.TreeNames[i]);
            s.Ops.GetAttr(entry.NodeId);
            return 1;
        }
    }

    private sealed class NativeWork(NativeSession s, int caller) : CallerWork
    {
        private FastRandom _random = new(caller);

        public override long Step()
        {
            int i = _random.Next(s.Dataset.Shape.TreeFiles);
            Native.Stat(s.DirFds[i / s.Dataset.Shape.FilesPerDir], s.Dataset.TreeNames[i]);
            return 1;
        }
    }
}

/// <summary>CREATE + WRITE 4 KiB + RELEASE + UNLINK of a new file in one directory shared by all callers, and the
/// FORGET a guest sends when the unlinked inode goes (native: openat O_CREAT|O_EXCL, pwrite, close, unlinkat).</summary>
public sealed class SmallFileWorkload : Workload
{
    private const int CreateFlags = Libc.O_WRONLY | Libc.O_CREAT | Libc.O_EXCL;

    public override string Name => "smallfile";
    public override string Unit => "ops/s";
    public override string Description => "CREATE + WRITE 4 KiB + RELEASE + UNLINK (+ FORGET) in one shared directory";

    public override CallerWork CreateFuse(FuseSession session, int caller, int callers) => new Fuse(session, caller);

    public override CallerWork CreateNative(NativeSession session, int caller, int callers) => new NativeWork(session, caller);

    /// <summary>"sCC_NNNNNNNNN\0", the counter rewritten in place.</summary>
    private sealed class FileName
    {
        public readonly byte[] Bytes;
        private long _counter;

        public FileName(int caller)
        {
            Bytes = System.Text.Encoding.ASCII.GetBytes($"s{caller:D2}_{Guid.NewGuid().ToString("N")[..6]}_000000000\0");
        }

        public byte[] Next()
        {
            long n = _counter++;
            for (int i = Bytes.Length - 2; i >= Bytes.Length - 10; i--)
            {
                Bytes[i] = (byte)('0' + n % 10);
                n /= 10;
            }
            return Bytes;
        }
    }

    private sealed class Fuse(FuseSession s, int caller) : CallerWork
    {
        private readonly FileName _name = new(caller);
        private readonly byte[] _data = new byte[4096];

        public override long Step()
        {
            byte[] name = _name.Next();
            var (entry, fh) = s.Ops.Create(s.SmallNode, name, CreateFlags, 0x8000 | 0x1A4);
            s.Ops.Write(entry.NodeId, fh, 0, _data, CreateFlags);
            s.Ops.Release(entry.NodeId, fh, CreateFlags);
            s.Ops.Unlink(s.SmallNode, name);
            s.Ops.Forget(entry.NodeId, 1);
            return 1;
        }
    }

    private sealed class NativeWork(NativeSession s, int caller) : CallerWork
    {
        private readonly FileName _name = new(caller);
        private readonly byte[] _data = new byte[4096];

        public override unsafe long Step()
        {
            byte[] name = _name.Next();
            int fd = Native.OpenAt(s.SmallFd, name, CreateFlags, 0x1A4);
            Native.Pwrite(fd, _data, 0);
            Libc.Close(fd);
            fixed (byte* p = name)
            {
                // SAFETY: NUL-terminated and pinned.
                if (Libc.UnlinkAt(s.SmallFd, p, 0) != 0)
                {
                    throw new BenchFailure($"unlinkat: {Libc.LastErrno}");
                }
            }
            return 1;
        }
    }
}

/// <summary>A full listing of the 10,000-entry directory: OPENDIR, READDIRPLUS with 32 KiB buffers (glibc's
/// getdents size, which Linux 6.x passes on) until the end, RELEASEDIR; READDIR when the daemon answers ENOSYS.
/// Native: getdents64 (32 KiB) + statx of every entry.</summary>
public sealed class ReaddirWorkload : Workload
{
    private const int BufferSize = 32 * 1024;

    public override string Name => "readdirplus";
    public override string Unit => "entries/s";
    public override string Description => "OPENDIR + READDIRPLUS (32 KiB replies) of the whole flat directory + RELEASEDIR; latency is per listing";

    public override CallerWork CreateFuse(FuseSession session, int caller, int callers) => new Fuse(this, session);

    public override CallerWork CreateNative(NativeSession session, int caller, int callers) => new NativeWork(session);

    private volatile bool _plusMissing;

    public override string? Note(FuseSession session) => _plusMissing ? "READDIR (READDIRPLUS answered ENOSYS)" : null;

    private sealed class Fuse : CallerWork
    {
        private readonly ReaddirWorkload _w;
        private readonly FuseSession _s;
        private readonly byte[] _buffer = new byte[BufferSize];
        private bool _plus = true;

        public Fuse(ReaddirWorkload w, FuseSession s)
        {
            _w = w;
            _s = s;
        }

        public override long Step()
        {
            ulong fh = _s.Ops.Open(_s.FlatNode, Libc.O_RDONLY | Libc.O_DIRECTORY, directory: true);
            long entries = 0;
            ulong offset = 0;
            while (true)
            {
                int length = _s.Ops.ReadDir(_s.FlatNode, fh, offset, _buffer, _plus);
                if (length < 0)
                {
                    _plus = false;
                    _w._plusMissing = true;
                    continue;
                }
                if (length == 0)
                {
                    break;
                }
                entries += Parse(_buffer.AsSpan(0, length), _plus, ref offset);
            }
            _s.Ops.Release(_s.FlatNode, fh, Libc.O_RDONLY | Libc.O_DIRECTORY, directory: true);
            return entries;
        }

        private static long Parse(ReadOnlySpan<byte> reply, bool plus, ref ulong offset)
        {
            long count = 0;
            int position = 0;
            int header = plus ? FuseDirentplus.Size : FuseDirent.Size;
            while (position + header <= reply.Length)
            {
                var dirent = MemoryMarshal.Read<FuseDirent>(reply.Slice(position + (plus ? FuseEntryOut.Size : 0)));
                int size = plus ? FuseConstants.DirentplusSize((int)dirent.NameLen) : FuseConstants.DirentSize((int)dirent.NameLen);
                if (size <= 0 || position + size > reply.Length)
                {
                    throw new BenchFailure("malformed directory reply");
                }
                offset = dirent.Off;
                position += size;
                count++;
            }
            return count;
        }
    }

    private sealed unsafe class NativeWork : CallerWork
    {
        private readonly NativeSession _s;
        private readonly byte[] _buffer = new byte[BufferSize];

        public NativeWork(NativeSession s) => _s = s;

        public override long Step()
        {
            int fd = NativeSession.OpenPath(_s.FlatPath, Libc.O_RDONLY | Libc.O_DIRECTORY);
            long entries = 0;
            try
            {
                fixed (byte* buffer = _buffer)
                {
                    while (true)
                    {
                        // SAFETY: buffer is pinned and BufferSize long.
                        nint n = Libc.Getdents64(fd, buffer, BufferSize);
                        if (n < 0)
                        {
                            throw new BenchFailure($"getdents64: {Libc.LastErrno}");
                        }
                        if (n == 0)
                        {
                            break;
                        }
                        int position = 0;
                        while (position < n)
                        {
                            // struct linux_dirent64: ino (8), off (8), reclen (2), type (1), name.
                            ushort reclen = *(ushort*)(buffer + position + 16);
                            byte* name = buffer + position + 19;
                            Statx st;
                            // SAFETY: the kernel NUL-terminates d_name inside the record.
                            if (Libc.StatxAt(fd, name, Libc.AT_SYMLINK_NOFOLLOW, 0x7FF, &st) != 0)
                            {
                                throw new BenchFailure($"statx: {Libc.LastErrno}");
                            }
                            entries++;
                            position += reclen;
                        }
                    }
                }
            }
            finally
            {
                Libc.Close(fd);
            }
            return entries;
        }
    }
}

/// <summary>4 KiB READ or WRITE at random 4 KiB-aligned offsets of the big file, one open handle per caller
/// (native: pread/pwrite on one fd per caller).</summary>
public sealed class RandomIoWorkload(bool write) : Workload
{
    private const int BlockSize = 4096;

    private readonly bool _write = write;

    public override string Name => _write ? "randwrite" : "randread";
    public override string Unit => "ops/s";
    public override string Description => $"4 KiB {(_write ? "WRITE from" : "READ into")} a per-caller buffer in guest memory (direct I/O, no shim copy) at a random offset of the big file";

    private int OpenFlags => _write ? Libc.O_WRONLY : Libc.O_RDONLY;

    public override CallerWork CreateFuse(FuseSession session, int caller, int callers) => new Fuse(this, session, caller);

    public override CallerWork CreateNative(NativeSession session, int caller, int callers) => new NativeWork(this, session, caller);

    private sealed class Fuse : CallerWork
    {
        private readonly RandomIoWorkload _w;
        private readonly FuseSession _s;
        private readonly ulong _fh;
        // The caller's own pages in guest memory: the daemon reads / writes them directly (no copy in the shim).
        private readonly GuestBuffer _buffer;
        private readonly int _blocks;
        private FastRandom _random;

        public Fuse(RandomIoWorkload w, FuseSession s, int caller)
        {
            _w = w;
            _s = s;
            _random = new FastRandom(caller);
            _blocks = (int)(s.Dataset.Shape.BigFileBytes / BlockSize);
            _buffer = s.Ops.AllocateUserBuffer(BlockSize);
            _fh = s.Ops.Open(s.BigNode, w.OpenFlags);
        }

        public override long Step()
        {
            long offset = (long)_random.Next(_blocks) * BlockSize;
            int n = _w._write ? _s.Ops.Write(_s.BigNode, _fh, offset, _buffer, BlockSize, _w.OpenFlags) : _s.Ops.Read(_s.BigNode, _fh, offset, _buffer, BlockSize);
            if (n != BlockSize)
            {
                throw new BenchFailure($"short {_w.Name}: {n} bytes");
            }
            return 1;
        }

        public override void Dispose()
        {
            _s.Ops.Release(_s.BigNode, _fh, _w.OpenFlags);
            _buffer.Dispose();
        }
    }

    private sealed class NativeWork : CallerWork
    {
        private readonly RandomIoWorkload _w;
        private readonly int _fd;
        private readonly AlignedBuffer _buffer = new(BlockSize);
        private readonly int _blocks;
        private FastRandom _random;

        public NativeWork(RandomIoWorkload w, NativeSession s, int caller)
        {
            _w = w;
            _random = new FastRandom(caller);
            _blocks = (int)(s.Dataset.Shape.BigFileBytes / BlockSize);
            _fd = NativeSession.OpenPath(s.BigPath, w.OpenFlags);
        }

        public override long Step()
        {
            long offset = (long)_random.Next(_blocks) * BlockSize;
            int n = _w._write ? Native.Pwrite(_fd, _buffer.Span, offset) : Native.Pread(_fd, _buffer.Span, offset);
            if (n != BlockSize)
            {
                throw new BenchFailure($"short native {_w.Name}: {n} bytes");
            }
            return 1;
        }

        public override void Dispose()
        {
            Libc.Close(_fd);
            _buffer.Dispose();
        }
    }
}

/// <summary>1 MiB READ or WRITE (or the connection's largest, if smaller) streaming through each caller's own
/// slice of the big file (native: pread/pwrite of the same size).</summary>
public sealed class SequentialIoWorkload(bool write) : Workload
{
    public const int RequestSize = 1 << 20;

    private readonly bool _write = write;

    public override string Name => _write ? "seqwrite" : "seqread";
    public override string Unit => "MiB/s";
    public override double UnitDivisor => 1 << 20;
    public override string Description => $"1 MiB {(_write ? "WRITE from" : "READ into")} a per-caller buffer in guest memory (direct I/O, no shim copy) sequentially through the caller's slice of the big file";

    private int OpenFlags => _write ? Libc.O_WRONLY : Libc.O_RDONLY;

    public override string? Note(FuseSession session)
    {
        int size = Size(session);
        return size == RequestSize ? null : $"{size >> 10} KiB requests (the connection's limit)";
    }

    private int Size(FuseSession s) => Math.Min(RequestSize, _write ? s.MaxWrite : s.MaxRead);

    public override CallerWork CreateFuse(FuseSession session, int caller, int callers) => new Fuse(this, session, caller, callers);

    public override CallerWork CreateNative(NativeSession session, int caller, int callers) => new NativeWork(this, session, caller, callers);

    private sealed class Fuse : CallerWork
    {
        private readonly SequentialIoWorkload _w;
        private readonly FuseSession _s;
        private readonly ulong _fh;
        // The caller's own pages in guest memory: the daemon reads / writes them directly (no copy in the shim).
        private readonly GuestBuffer _buffer;
        private readonly long _start;
        private readonly long _length;
        private long _cursor;

        public Fuse(SequentialIoWorkload w, FuseSession s, int caller, int callers)
        {
            _w = w;
            _s = s;
            int size = w.Size(s);
            _buffer = s.Ops.AllocateUserBuffer(size);
            new Random(caller).NextBytes(_buffer.Span);
            long slice = s.Dataset.Shape.BigFileBytes / callers / size * size;
            _start = slice * caller;
            _length = Math.Max(size, slice);
            _fh = s.Ops.Open(s.BigNode, w.OpenFlags);
        }

        public override long Step()
        {
            long offset = _start + _cursor;
            int size = _buffer.Length;
            _cursor = (_cursor + size) % _length;
            int n = _w._write ? _s.Ops.Write(_s.BigNode, _fh, offset, _buffer, size, _w.OpenFlags) : _s.Ops.Read(_s.BigNode, _fh, offset, _buffer, size);
            if (n != size)
            {
                throw new BenchFailure($"short {_w.Name}: {n} bytes at {offset}");
            }
            return n;
        }

        public override void Dispose()
        {
            _s.Ops.Release(_s.BigNode, _fh, _w.OpenFlags);
            _buffer.Dispose();
        }
    }

    private sealed class NativeWork : CallerWork
    {
        private readonly SequentialIoWorkload _w;
        private readonly int _fd;
        private readonly AlignedBuffer _buffer = new(RequestSize);
        private readonly long _start;
        private readonly long _length;
        private long _cursor;

        public NativeWork(SequentialIoWorkload w, NativeSession s, int caller, int callers)
        {
            _w = w;
            new Random(caller).NextBytes(_buffer.Span);
            long slice = s.Dataset.Shape.BigFileBytes / callers / RequestSize * RequestSize;
            _start = slice * caller;
            _length = Math.Max(RequestSize, slice);
            _fd = NativeSession.OpenPath(s.BigPath, w.OpenFlags);
        }

        public override long Step()
        {
            long offset = _start + _cursor;
            _cursor = (_cursor + RequestSize) % _length;
            int n = _w._write ? Native.Pwrite(_fd, _buffer.Span, offset) : Native.Pread(_fd, _buffer.Span, offset);
            if (n != RequestSize)
            {
                throw new BenchFailure($"short native {_w.Name}: {n} bytes at {offset}");
            }
            return n;
        }

        public override void Dispose()
        {
            Libc.Close(_fd);
            _buffer.Dispose();
        }
    }
}

/// <summary>"git status": walk the tree in order, LOOKUP + GETATTR of every file, and for every 20th (5%) also
/// OPEN + READ 4 KiB + RELEASE (native: statx, and openat + pread + close). Callers share the walk.</summary>
public sealed class GitStatusWorkload : Workload
{
    public override string Name => "gitstatus";
    public override string Unit => "ops/s";
    public override string Description => "per file of the tree in order: LOOKUP + GETATTR; every 20th also OPEN + READ 4 KiB + RELEASE";

    public override CallerWork CreateFuse(FuseSession session, int caller, int callers) => new Fuse(session, caller, callers);

    public override CallerWork CreateNative(NativeSession session, int caller, int callers) => new NativeWork(session, caller, callers);

    private sealed class Fuse(FuseSession s, int caller, int callers) : CallerWork
    {
        private readonly byte[] _buffer = new byte[4096];
        private int _next = caller;

        public override long Step()
        {
            int i = _next;
            _next = (_next + callers) % s.Dataset.Shape.TreeFiles;
            ulong dir = s.DirNodes[i / s.Dataset.Shape.FilesPerDir];
            var entry = s.Ops.Lookup(dir, s.Dataset.TreeNames[i]);
            s.Ops.GetAttr(entry.NodeId);
            if (i % 20 == 0)
            {
                ulong fh = s.Ops.Open(entry.NodeId, Libc.O_RDONLY);
                s.Ops.Read(entry.NodeId, fh, 0, _buffer);
                s.Ops.Release(entry.NodeId, fh, Libc.O_RDONLY);
            }
            return 1;
        }
    }

    private sealed class NativeWork(NativeSession s, int caller, int callers) : CallerWork
    {
        private readonly byte[] _buffer = new byte[4096];
        private int _next = caller;

        public override long Step()
        {
            int i = _next;
            _next = (_next + callers) % s.Dataset.Shape.TreeFiles;
            int dirFd = s.DirFds[i / s.Dataset.Shape.FilesPerDir];
            Native.Stat(dirFd, s.Dataset.TreeNames[i]);
            if (i % 20 == 0)
            {
                int fd = Native.OpenAt(dirFd, s.Dataset.TreeNames[i], Libc.O_RDONLY);
                Native.Pread(fd, _buffer, 0);
                Libc.Close(fd);
            }
            return 1;
        }
    }
}
