using Vhostfsd.GuestKernelShim;
using Vhostfsd.Posix;

namespace Vhostfsd.Bench;

/// <summary>4 KiB reads at random offsets of a working set that fits the guest's page cache (the first 64 MiB of the
/// big file, 16 MiB with --quick; a page cache of twice that), through the shim's mount with the daemon in
/// cache=always. The set is read once before the cell, so the cell measures re-reads: what the guest serves
/// itself, with the daemon asked only when an attribute or a page expires (native: pread of the same offsets,
/// served by the host's page cache).</summary>
public sealed class CachedReadWorkload : Workload
{
    private const int BlockSize = 4096;

    public override string Name => "cachedread";
    public override string Unit => "ops/s";
    public override string Description => "4 KiB READ at a random offset of a working set read once before (page-cache hits), daemon cache=always";
    public override DaemonCaching Caching => DaemonCaching.Always;

    private static long WorkingSet(DatasetShape shape) => Math.Min(shape.BigFileBytes, shape == DatasetShape.Quick ? 16L << 20 : 64L << 20);

    public override MountOptions? MountOptions(DatasetShape shape) => new() { CacheSize = 2 * WorkingSet(shape) };

    public override void Prepare(FuseSession session)
    {
        var fs = session.Fs!;
        var file = CachedFiles.Open(fs, Libc.O_RDONLY);
        var buffer = new byte[1 << 20];
        long set = WorkingSet(session.Dataset.Shape);
        for (long offset = 0; offset < set; offset += buffer.Length)
        {
            var rc = fs.Read(file, buffer.AsSpan(0, (int)Math.Min(buffer.Length, set - offset)), offset, out _);
            if (rc != Errno.OK)
            {
                throw new BenchFailure($"filling the page cache: {rc}");
            }
        }
        fs.Release(file);
    }

    public override string? Note(FuseSession session)
    {
        var cache = session.Fs!.PageCache!;
        return $"{cache.Misses} page misses, {cache.Hits} hits";
    }

    public override CallerWork CreateFuse(FuseSession session, int caller, int callers) => new Fuse(session, caller);

    public override CallerWork CreateNative(NativeSession session, int caller, int callers) => new NativeWork(session, caller);

    private sealed class Fuse : CallerWork
    {
        private readonly FuseFs _fs;
        private readonly FuseFile _file;
        private readonly byte[] _buffer = new byte[BlockSize];
        private readonly int _blocks;
        private FastRandom _random;

        public Fuse(FuseSession s, int caller)
        {
            _fs = s.Fs!;
            _random = new FastRandom(caller);
            _blocks = (int)(WorkingSet(s.Dataset.Shape) / BlockSize);
            _file = CachedFiles.Open(_fs, Libc.O_RDONLY);
        }

        public override long Step()
        {
            long offset = (long)_random.Next(_blocks) * BlockSize;
            if (_fs.Read(_file, _buffer, offset, out int n) != Errno.OK || n != BlockSize)
            {
                throw new BenchFailure($"short cached read at {offset}: {n} bytes");
            }
            return 1;
        }

        public override void Dispose() => _fs.Release(_file);
    }

    private sealed class NativeWork : CallerWork
    {
        private readonly int _fd;
        private readonly byte[] _buffer = new byte[BlockSize];
        private readonly int _blocks;
        private FastRandom _random;

        public NativeWork(NativeSession s, int caller)
        {
            _random = new FastRandom(caller);
            _blocks = (int)(WorkingSet(s.Dataset.Shape) / BlockSize);
            _fd = NativeSession.OpenPath(s.BigPath, Libc.O_RDONLY);
        }

        public override long Step()
        {
            long offset = (long)_random.Next(_blocks) * BlockSize;
            if (Native.Pread(_fd, _buffer, offset) != BlockSize)
            {
                throw new BenchFailure("short native cached read");
            }
            return 1;
        }

        public override void Dispose() => Libc.Close(_fd);
    }
}

/// <summary>4 KiB writes streaming through each caller's own slice of the big file (at most 64 MiB) with an fsync
/// after every MiB, through the shim's mount with FUSE_WRITEBACK_CACHE granted (daemon cache=always + writeback):
/// the writes land in the guest's page cache and reach the daemon as WRITEs of up to max_write at each fsync (or
/// under memory pressure). Native: pwrite 4 KiB and fsync every MiB.</summary>
public sealed class CachedWriteWorkload : Workload
{
    private const int BlockSize = 4096;
    private const int SyncEvery = (1 << 20) / BlockSize;

    public override string Name => "cachedwrite";
    public override string Unit => "MiB/s";
    public override double UnitDivisor => 1 << 20;
    public override string Description => "4 KiB WRITE through the write-back cache, sequential in the caller's slice of the big file, fsync every MiB";
    public override DaemonCaching Caching => DaemonCaching.Writeback;

    public override MountOptions? MountOptions(DatasetShape shape) =>
        new() { CacheSize = shape == DatasetShape.Quick ? 64L << 20 : 256L << 20, Writeback = true };

    private static long Slice(DatasetShape shape, int callers) => Math.Max(1L << 20, Math.Min(64L << 20, shape.BigFileBytes / callers) & ~((1L << 20) - 1));

    public override string? Note(FuseSession session)
    {
        if (!session.Fs!.WritebackCache)
        {
            return "write-back caching not granted: written through";
        }
        var cache = session.Fs.PageCache!;
        long pages = cache.PagesWrittenBack(WritebackReason.Fsync) + cache.PagesWrittenBack(WritebackReason.Pressure);
        return cache.WritebackRequests == 0 ? null : $"{pages * BlockSize / cache.WritebackRequests >> 10} KiB per write-back WRITE";
    }

    public override CallerWork CreateFuse(FuseSession session, int caller, int callers) => new Fuse(session, caller, callers);

    public override CallerWork CreateNative(NativeSession session, int caller, int callers) => new NativeWork(session, caller, callers);

    private sealed class Fuse : CallerWork
    {
        private readonly FuseFs _fs;
        private readonly FuseFile _file;
        private readonly byte[] _buffer = new byte[BlockSize];
        private readonly long _start;
        private readonly long _length;
        private long _cursor;
        private int _sinceSync;

        public Fuse(FuseSession s, int caller, int callers)
        {
            _fs = s.Fs!;
            new Random(caller).NextBytes(_buffer);
            _length = Slice(s.Dataset.Shape, callers);
            _start = _length * caller;
            _file = CachedFiles.Open(_fs, Libc.O_WRONLY);
        }

        public override long Step()
        {
            long offset = _start + _cursor;
            _cursor = (_cursor + BlockSize) % _length;
            if (_fs.Write(_file, _buffer, offset, out int n) != Errno.OK || n != BlockSize)
            {
                throw new BenchFailure($"short cached write at {offset}: {n} bytes");
            }
            if (++_sinceSync == SyncEvery)
            {
                _sinceSync = 0;
                var rc = _fs.Fsync(_file);
                if (rc != Errno.OK)
                {
                    throw new BenchFailure($"fsync: {rc}");
                }
            }
            return BlockSize;
        }

        public override void Dispose() => _fs.Release(_file);
    }

    private sealed class NativeWork : CallerWork
    {
        private readonly int _fd;
        private readonly byte[] _buffer = new byte[BlockSize];
        private readonly long _start;
        private readonly long _length;
        private long _cursor;
        private int _sinceSync;

        public NativeWork(NativeSession s, int caller, int callers)
        {
            new Random(caller).NextBytes(_buffer);
            _length = Slice(s.Dataset.Shape, callers);
            _start = _length * caller;
            _fd = NativeSession.OpenPath(s.BigPath, Libc.O_WRONLY);
        }

        public override long Step()
        {
            long offset = _start + _cursor;
            _cursor = (_cursor + BlockSize) % _length;
            if (Native.Pwrite(_fd, _buffer, offset) != BlockSize)
            {
                throw new BenchFailure("short native cached write");
            }
            if (++_sinceSync == SyncEvery)
            {
                _sinceSync = 0;
                if (Libc.Fsync(_fd) != 0)
                {
                    throw new BenchFailure($"fsync: {Libc.LastErrno}");
                }
            }
            return BlockSize;
        }

        public override void Dispose() => Libc.Close(_fd);
    }
}

internal static class CachedFiles
{
    /// <summary>Opens the dataset's big file through the mount.</summary>
    public static FuseFile Open(FuseFs fs, int flags)
    {
        var rc = fs.Walk("big", out var node);
        if (rc != Errno.OK)
        {
            throw new BenchFailure($"lookup of big: {rc}");
        }
        rc = fs.Open(node, flags, out var file);
        if (rc != Errno.OK)
        {
            throw new BenchFailure($"open of big: {rc}");
        }
        return file!;
    }
}
