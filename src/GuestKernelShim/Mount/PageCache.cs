using System.Buffers;
using System.Diagnostics;
using System.Runtime.InteropServices;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.GuestKernelShim;

/// <summary>Why dirty pages went to the daemon.</summary>
public enum WritebackReason
{
    /// <summary>fsync(2) / fdatasync(2).</summary>
    Fsync,
    /// <summary>close(2) (FLUSH): write_inode_now before the FLUSH request.</summary>
    Flush,
    /// <summary>msync(2).</summary>
    Msync,
    /// <summary>munmap(2) of a shared mapping.</summary>
    Munmap,
    /// <summary>The cache was full of dirty pages, or dirty pages passed half the cache (balance_dirty_pages).</summary>
    Pressure,
    /// <summary>The flusher: dirty pages older than dirty_expire.</summary>
    Timer,
    /// <summary>umount (sync_filesystem).</summary>
    Unmount,
    /// <summary>An invalidation of a file's pages laundered its dirty pages first (truncate, size or mtime change,
    /// an open without KEEP_CACHE), or a direct write or read needed them on the daemon's side first.</summary>
    Invalidate,
}

/// <summary>One page of file data in the cache: 4 KiB of the file at <see cref="Index"/> × 4096, owned by one
/// node's page table, on the mount's LRU list.</summary>
internal sealed class CachePage
{
    public readonly byte[] Data = new byte[FuseConn.PageSize];
    public NodePages? Owner;
    public long Index;
    public bool Dirty;
    /// <summary>Bumped each time the page is given to another (node, index): a mapping's cached translation of a
    /// file page to this object is valid only while the identity it saw is current.</summary>
    public long Identity;
    public CachePage? Newer;
    public CachePage? Older;
}

/// <summary>The page-cache state of one regular file (Linux's address_space and the writeback parts of fuse_inode):
/// its cached pages, the dirty ones in file order, the open files write-back may use (fuse_inode.write_files), the
/// write-back error sequence (mapping->wb_err) and a generation that moves whenever pages are invalidated, so that a
/// READ racing an invalidation does not put stale data back.</summary>
internal sealed class NodePages
{
    public NodePages(FuseNode node)
    {
        Node = node;
    }

    public readonly FuseNode Node;
    public readonly Dictionary<long, CachePage> Pages = new();
    public readonly SortedSet<long> Dirty = new();
    /// <summary>Writable open files, oldest first; write-back uses the first (guarded by the node's Sync).</summary>
    public readonly List<FuseFile> WriteFiles = new();
    /// <summary>Serializes write-back of this file with truncation and write-through, as the inode lock and
    /// FUSE_NOWRITE do in Linux: a page is never written back after a truncate dropped it, and two write-backs of
    /// one page never reach the daemon out of order.</summary>
    public readonly object WritebackLock = new();
    public int Generation;
    public int WbErr;
    public long DirtySince;
}

/// <summary>A mount's page cache (Linux's page cache as fs/fuse/file.c uses it): page-sized, bounded by the
/// cache_size mount option, least recently used pages evicted first. Filled by READ with read-ahead up to the
/// max_readahead INIT granted; with FUSE_WRITEBACK_CACHE it holds dirty pages that go to the daemon as WRITE
/// requests with FUSE_WRITE_CACHE, carrying the credentials and lock owner of a file opened for writing. Write-back
/// errors are recorded per file in an <see cref="ErrSeq"/> that every open file reports once.</summary>
/// <remarks>
/// One lock guards the page tables, the LRU list, page contents and the counters; it is never held across a request
/// to the daemon, nor while a node's own lock is taken. Page contents are copied in and out under it one page at a
/// time.
/// </remarks>
public sealed class PageCache : IDisposable
{
    public const int PageSize = FuseConn.PageSize;

    private readonly FuseFs _fs;
    private readonly object _lock = new();
    private readonly int _capacity;
    private readonly Stack<CachePage> _free = new();
    private readonly HashSet<NodePages> _dirtyNodes = new();
    private readonly long[] _writtenBack = new long[Enum.GetValues<WritebackReason>().Length];
    private readonly long _expireTicks;
    private int _allocated;
    private int _cached;
    private int _dirty;
    private CachePage? _newest;
    private CachePage? _oldest;
    private long _hits;
    private long _misses;
    private long _pagesRead;
    private long _readRequests;
    private long _evictions;
    private long _writeRequests;
    private Thread? _flusher;
    private bool _stopping;

    internal PageCache(FuseFs fs, int capacityPages, TimeSpan dirtyExpire)
    {
        _fs = fs;
        _capacity = capacityPages;
        _expireTicks = (long)(dirtyExpire.TotalSeconds * Stopwatch.Frequency);
        DirtyExpire = dirtyExpire;
    }

    /// <summary>Pages the cache may hold.</summary>
    public int Capacity => _capacity;

    public TimeSpan DirtyExpire { get; }

    /// <summary>Pages held now.</summary>
    public int CachedPages
    {
        get
        {
            lock (_lock)
            {
                return _cached;
            }
        }
    }

    /// <summary>Dirty pages held now.</summary>
    public int DirtyPages
    {
        get
        {
            lock (_lock)
            {
                return _dirty;
            }
        }
    }

    /// <summary>Page lookups served from the cache (reads, and faults of mappings).</summary>
    public long Hits => Interlocked.Read(ref _hits);

    /// <summary>Page lookups that had to READ.</summary>
    public long Misses => Interlocked.Read(ref _misses);

    /// <summary>Pages filled by READ (read-ahead included).</summary>
    public long PagesRead => Interlocked.Read(ref _pagesRead);

    /// <summary>READ requests sent to fill the cache.</summary>
    public long ReadRequests => Interlocked.Read(ref _readRequests);

    /// <summary>Clean pages dropped to make room.</summary>
    public long Evictions => Interlocked.Read(ref _evictions);

    /// <summary>WRITE requests sent by write-back.</summary>
    public long WritebackRequests => Interlocked.Read(ref _writeRequests);

    /// <summary>Pages written back for <paramref name="reason"/>.</summary>
    public long PagesWrittenBack(WritebackReason reason) => Interlocked.Read(ref _writtenBack[(int)reason]);

    /// <summary>Pages of <paramref name="node"/> in the cache.</summary>
    public int PagesOf(FuseNode node)
    {
        var np = node.Pages;
        if (np == null)
        {
            return 0;
        }
        lock (_lock)
        {
            return np.Pages.Count;
        }
    }

    /// <summary>Dirty pages of <paramref name="node"/>.</summary>
    public int DirtyPagesOf(FuseNode node)
    {
        var np = node.Pages;
        if (np == null)
        {
            return 0;
        }
        lock (_lock)
        {
            return np.Dirty.Count;
        }
    }

    /// <summary>True when page <paramref name="index"/> of <paramref name="node"/> is cached.</summary>
    public bool Contains(FuseNode node, long index)
    {
        var np = node.Pages;
        if (np == null)
        {
            return false;
        }
        lock (_lock)
        {
            return np.Pages.ContainsKey(index);
        }
    }

    /// <summary>The page-cache state of a regular file, made on first use.</summary>
    internal static NodePages For(FuseNode node)
    {
        var np = Volatile.Read(ref node.Pages);
        if (np != null)
        {
            return np;
        }
        lock (node.Sync)
        {
            return node.Pages ??= new NodePages(node);
        }
    }

    // ---------------------------------------------------------------- LRU and pages (under _lock)

    private void TouchLocked(CachePage page)
    {
        if (ReferenceEquals(_newest, page))
        {
            return;
        }
        UnlinkLocked(page);
        page.Older = _newest;
        page.Newer = null;
        if (_newest != null)
        {
            _newest.Newer = page;
        }
        _newest = page;
        _oldest ??= page;
    }

    private void UnlinkLocked(CachePage page)
    {
        if (page.Newer != null)
        {
            page.Newer.Older = page.Older;
        }
        else if (ReferenceEquals(_newest, page))
        {
            _newest = page.Older;
        }
        if (page.Older != null)
        {
            page.Older.Newer = page.Newer;
        }
        else if (ReferenceEquals(_oldest, page))
        {
            _oldest = page.Newer;
        }
        page.Newer = null;
        page.Older = null;
    }

    /// <summary>A free page: from the free list, newly allocated while below capacity, or the least recently used
    /// clean page taken from its file. Null when every page is dirty (the caller writes some back, then retries).</summary>
    private CachePage? AllocateLocked()
    {
        if (_free.TryPop(out var page))
        {
            return page;
        }
        if (_allocated < _capacity)
        {
            _allocated++;
            return new CachePage();
        }
        for (var victim = _oldest; victim != null; victim = victim.Newer)
        {
            if (!victim.Dirty)
            {
                RemoveLocked(victim);
                _evictions++;
                _free.Pop();
                return victim;
            }
        }
        return null;
    }

    /// <summary>Puts <paramref name="page"/> into <paramref name="np"/>'s table at <paramref name="index"/>.</summary>
    private void InsertLocked(NodePages np, long index, CachePage page)
    {
        page.Owner = np;
        page.Index = index;
        page.Dirty = false;
        page.Identity++;
        np.Pages[index] = page;
        _cached++;
        TouchLocked(page);
    }

    /// <summary>Takes a page out of its file and the LRU list onto the free list (its dirty data is dropped).</summary>
    private void RemoveLocked(CachePage page)
    {
        var np = page.Owner!;
        np.Pages.Remove(page.Index);
        if (page.Dirty)
        {
            page.Dirty = false;
            np.Dirty.Remove(page.Index);
            _dirty--;
            if (np.Dirty.Count == 0)
            {
                _dirtyNodes.Remove(np);
            }
        }
        UnlinkLocked(page);
        page.Owner = null;
        page.Identity++;
        _cached--;
        _free.Push(page);
    }

    private void MarkDirtyLocked(NodePages np, CachePage page)
    {
        if (page.Dirty)
        {
            return;
        }
        page.Dirty = true;
        np.Dirty.Add(page.Index);
        _dirty++;
        if (_dirtyNodes.Add(np))
        {
            np.DirtySince = Stopwatch.GetTimestamp();
        }
        if (_flusher == null && !_stopping)
        {
            _flusher = new Thread(FlusherLoop) { IsBackground = true, Name = "fuse-flusher" };
            _flusher.Start();
        }
    }

    // ---------------------------------------------------------------- reading

    /// <summary>Copies cached bytes of <paramref name="np"/> from file position <paramref name="position"/> into
    /// <paramref name="destination"/>, page by page, up to the first page not cached. Returns the bytes copied.</summary>
    internal int CopyOut(NodePages np, long position, Span<byte> destination)
    {
        int done = 0;
        while (done < destination.Length)
        {
            long pos = position + done;
            long index = pos / PageSize;
            int inPage = (int)(pos % PageSize);
            int n = Math.Min(PageSize - inPage, destination.Length - done);
            lock (_lock)
            {
                if (!np.Pages.TryGetValue(index, out var page))
                {
                    break;
                }
                page.Data.AsSpan(inPage, n).CopyTo(destination.Slice(done, n));
                TouchLocked(page);
                _hits++;
            }
            done += n;
        }
        return done;
    }

    /// <summary>Fills pages [<paramref name="first"/>, +<paramref name="count"/>) of the file with one READ on
    /// <paramref name="file"/>'s handle (stopping the window at the first page already cached) and copies what the
    /// caller asked for — file bytes from <paramref name="position"/> — into <paramref name="destination"/>.
    /// <paramref name="fetched"/> is what the READ returned (short at end of file). Pages are kept only when no
    /// invalidation ran meanwhile.</summary>
    internal Errno Fill(FuseFile file, NodePages np, long first, int count, in FuseCaller caller, long position, Span<byte> destination,
        out int copied, out int fetched)
    {
        copied = 0;
        fetched = 0;
        int generation;
        lock (_lock)
        {
            generation = np.Generation;
            for (int i = 1; i < count; i++)
            {
                if (np.Pages.ContainsKey(first + i))
                {
                    count = i;
                    break;
                }
            }
            _misses++;
        }
        int length = count * PageSize;
        byte[] buffer = ArrayPool<byte>.Shared.Rent(length);
        try
        {
            var arg = new FuseReadIn { Fh = file.Fh, Offset = (ulong)(first * PageSize), Length = (uint)length, Flags = (uint)file.Flags };
            var reply = _fs.Conn.Send(FuseOpcode.Read, np.Node.NodeId, caller, new FuseArgs(FuseFs.Bytes(in arg)), buffer.AsSpan(0, length),
                FuseReplyShape.Variable);
            if (!reply.IsOk)
            {
                return reply.Errno;
            }
            int got = reply.Length;
            fetched = got;
            Interlocked.Increment(ref _readRequests);
            int pages = (got + PageSize - 1) / PageSize;
            buffer.AsSpan(got, pages * PageSize - got).Clear();
            lock (_lock)
            {
                if (np.Generation == generation)
                {
                    for (int i = 0; i < pages; i++)
                    {
                        if (np.Pages.ContainsKey(first + i))
                        {
                            continue;
                        }
                        var page = AllocateLocked();
                        if (page == null)
                        {
                            break;
                        }
                        buffer.AsSpan(i * PageSize, PageSize).CopyTo(page.Data);
                        InsertLocked(np, first + i, page);
                        _pagesRead++;
                    }
                }
            }
            long skip = position - first * PageSize;
            if (skip >= 0 && skip < got)
            {
                copied = (int)Math.Min(destination.Length, got - skip);
                buffer.AsSpan((int)skip, copied).CopyTo(destination);
            }
            return Errno.OK;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    // ---------------------------------------------------------------- writing

    /// <summary>After a write-through WRITE of <paramref name="data"/> at <paramref name="position"/>: cached pages
    /// take the new bytes (a page dirtied by a mapping stays dirty, now with these bytes in it), pages the write
    /// covered entirely are added, and READs in flight are told not to keep what they fetched.</summary>
    internal void UpdateAfterWrite(NodePages np, long position, ReadOnlySpan<byte> data)
    {
        lock (_lock)
        {
            np.Generation++;
            int done = 0;
            while (done < data.Length)
            {
                long pos = position + done;
                long index = pos / PageSize;
                int inPage = (int)(pos % PageSize);
                int n = Math.Min(PageSize - inPage, data.Length - done);
                if (!np.Pages.TryGetValue(index, out var page) && n == PageSize)
                {
                    page = AllocateLocked();
                    if (page != null)
                    {
                        InsertLocked(np, index, page);
                    }
                }
                if (page != null)
                {
                    data.Slice(done, n).CopyTo(page.Data.AsSpan(inPage, n));
                    TouchLocked(page);
                }
                done += n;
            }
        }
    }

    /// <summary>A write into the cache (write-back mode, or a shared mapping): page <paramref name="index"/> takes
    /// <paramref name="data"/> at <paramref name="inPage"/> and becomes dirty. False when the page is not cached and
    /// the write does not cover it (the caller reads it first: fuse_write_begin), or when no page was free (the
    /// caller writes some back first).</summary>
    internal bool TryWriteInto(NodePages np, long index, int inPage, ReadOnlySpan<byte> data, bool pageBeyondEof, out bool needRoom)
    {
        needRoom = false;
        lock (_lock)
        {
            if (!np.Pages.TryGetValue(index, out var page))
            {
                if (data.Length != PageSize && !pageBeyondEof)
                {
                    return false;
                }
                page = AllocateLocked();
                if (page == null)
                {
                    needRoom = true;
                    return false;
                }
                page.Data.AsSpan().Clear();
                InsertLocked(np, index, page);
                np.Generation++;
            }
            data.CopyTo(page.Data.AsSpan(inPage));
            TouchLocked(page);
            MarkDirtyLocked(np, page);
            return true;
        }
    }

    /// <summary>Dirty pages above half the cache: balance_dirty_pages makes the writer wait for write-back.</summary>
    internal bool OverDirtyLimit
    {
        get
        {
            lock (_lock)
            {
                return _dirty > _capacity / 2;
            }
        }
    }

    /// <summary>Writes back the file that owns the least recently used dirty page (memory pressure). False when no
    /// page is dirty.</summary>
    internal bool RelievePressure()
    {
        NodePages? victim = null;
        lock (_lock)
        {
            for (var page = _oldest; page != null; page = page.Newer)
            {
                if (page.Dirty)
                {
                    victim = page.Owner;
                    break;
                }
            }
        }
        if (victim == null)
        {
            return false;
        }
        Writeback(victim, WritebackReason.Pressure);
        return true;
    }

    // ---------------------------------------------------------------- mappings

    /// <summary>A mapping's access to page <paramref name="index"/>: the page object and its identity when cached
    /// (then touched), else null.</summary>
    internal CachePage? Lookup(NodePages np, long index, out long identity)
    {
        lock (_lock)
        {
            if (np.Pages.TryGetValue(index, out var page))
            {
                TouchLocked(page);
                _hits++;
                identity = page.Identity;
                return page;
            }
        }
        identity = 0;
        return null;
    }

    /// <summary>Copies between a mapped page and the caller, if the page is still the one the mapping translated
    /// (same identity). A write marks the page dirty. False when the page went meanwhile (the mapping faults again).</summary>
    internal bool AccessMapped(NodePages np, CachePage page, long identity, int inPage, Span<byte> readInto, ReadOnlySpan<byte> writeFrom)
    {
        lock (_lock)
        {
            if (page.Identity != identity || !ReferenceEquals(page.Owner, np))
            {
                return false;
            }
            if (writeFrom.IsEmpty)
            {
                page.Data.AsSpan(inPage, readInto.Length).CopyTo(readInto);
            }
            else
            {
                writeFrom.CopyTo(page.Data.AsSpan(inPage));
                MarkDirtyLocked(np, page);
            }
            TouchLocked(page);
            return true;
        }
    }

    // ---------------------------------------------------------------- invalidation

    /// <summary>truncate_pagecache: pages wholly past <paramref name="size"/> go (dirty or not); the page holding
    /// the new end keeps its bytes up to it and zeros after.</summary>
    internal void TruncateTo(NodePages np, long size)
    {
        lock (_lock)
        {
            np.Generation++;
            long keep = (size + PageSize - 1) / PageSize;
            List<CachePage>? doomed = null;
            foreach (var (index, page) in np.Pages)
            {
                if (index >= keep)
                {
                    (doomed ??= new List<CachePage>()).Add(page);
                }
            }
            if (doomed != null)
            {
                foreach (var page in doomed)
                {
                    RemoveLocked(page);
                }
            }
            int tail = (int)(size % PageSize);
            if (tail != 0 && np.Pages.TryGetValue(size / PageSize, out var last))
            {
                last.Data.AsSpan(tail).Clear();
            }
        }
    }

    /// <summary>invalidate_inode_pages2(_range): dirty pages in [<paramref name="first"/>, <paramref name="last"/>]
    /// are written back first (fuse_launder_folio), then every page of the range goes.</summary>
    internal void Invalidate(NodePages np, long first = 0, long last = long.MaxValue)
    {
        bool anyDirty;
        lock (_lock)
        {
            anyDirty = np.Dirty.Count > 0 && np.Dirty.GetViewBetween(first, last).Count > 0;
        }
        if (anyDirty)
        {
            Writeback(np, WritebackReason.Invalidate, first, last);
        }
        DropRange(np, first, last);
    }

    /// <summary>Drops the pages of [<paramref name="first"/>, <paramref name="last"/>], dirty ones included.</summary>
    internal void DropRange(NodePages np, long first = 0, long last = long.MaxValue)
    {
        lock (_lock)
        {
            np.Generation++;
            List<CachePage>? doomed = null;
            foreach (var (index, page) in np.Pages)
            {
                if (index >= first && index <= last)
                {
                    (doomed ??= new List<CachePage>()).Add(page);
                }
            }
            if (doomed != null)
            {
                foreach (var page in doomed)
                {
                    RemoveLocked(page);
                }
            }
        }
    }

    /// <summary>echo 1 &gt; drop_caches: every clean page goes. Returns the pages dropped.</summary>
    public int DropClean()
    {
        lock (_lock)
        {
            int dropped = 0;
            var page = _oldest;
            while (page != null)
            {
                var next = page.Newer;
                if (!page.Dirty)
                {
                    page.Owner!.Generation++;
                    RemoveLocked(page);
                    dropped++;
                }
                page = next;
            }
            return dropped;
        }
    }

    // ---------------------------------------------------------------- write-back

    /// <summary>Writes the dirty pages of <paramref name="np"/> in [<paramref name="first"/>, <paramref name="last"/>]
    /// to the daemon (fuse_writepages): runs of contiguous pages up to the connection's largest WRITE, each sent with
    /// FUSE_WRITE_CACHE on the handle of the file's first writable open file, with that opener's credentials and lock
    /// owner (FUSE_WRITE_LOCKOWNER), clamped to the file size the guest knows. A page is clean once its bytes are
    /// copied for sending; a failed WRITE records its error in the file's <see cref="ErrSeq"/> (the data is lost, as
    /// in Linux) and is returned too. A node the daemon reused for another file (stale) is not written at all: its
    /// dirty pages are dropped and ESTALE recorded, so old data never lands in the new file.</summary>
    internal Errno Writeback(NodePages np, WritebackReason reason, long first = 0, long last = long.MaxValue)
    {
        lock (np.WritebackLock)
        {
            var node = np.Node;
            var conn = _fs.Conn;
            var result = Errno.OK;
            if (node.IsStale)
            {
                bool had;
                lock (_lock)
                {
                    had = np.Dirty.Count > 0;
                }
                if (had)
                {
                    DropDirty(np, first, last);
                    ErrSeq.Set(ref np.WbErr, (int)Errno.ESTALE);
                    return Errno.ESTALE;
                }
                return Errno.OK;
            }
            int maxPages = Math.Max(1, conn.MaxWriteSize / PageSize);
            byte[]? buffer = null;
            try
            {
                while (true)
                {
                    FuseFile? file = WriteFileOf(np);
                    long start;
                    int run = 0;
                    lock (_lock)
                    {
                        if (np.Dirty.Count == 0)
                        {
                            break;
                        }
                        var view = first == 0 && last == long.MaxValue ? np.Dirty : np.Dirty.GetViewBetween(first, last);
                        if (view.Count == 0)
                        {
                            break;
                        }
                        start = view.Min;
                        if (file == null)
                        {
                            // Nothing open for writing can carry the data (cannot happen while files and mappings
                            // hold their handles): the pages are lost, as a failed write-back loses them.
                            DropDirtyLocked(np, first, last);
                            ErrSeq.Set(ref np.WbErr, (int)Errno.EIO);
                            return Errno.EIO;
                        }
                        buffer ??= ArrayPool<byte>.Shared.Rent(maxPages * PageSize);
                        while (run < maxPages && start + run <= last && np.Pages.TryGetValue(start + run, out var page) && page.Dirty)
                        {
                            page.Data.CopyTo(buffer.AsSpan(run * PageSize, PageSize));
                            page.Dirty = false;
                            np.Dirty.Remove(start + run);
                            _dirty--;
                            run++;
                        }
                        if (np.Dirty.Count == 0)
                        {
                            _dirtyNodes.Remove(np);
                        }
                        _writtenBack[(int)reason] += run;
                    }
                    long size = (long)node.Attr.FileSize;
                    long length = Math.Min((long)run * PageSize, size - start * PageSize);
                    if (length <= 0)
                    {
                        // Pages past the end of the file (a truncate raced): nothing to write.
                        continue;
                    }
                    var rc = SendWrite(file, start * PageSize, buffer.AsSpan(0, (int)length));
                    if (rc != Errno.OK)
                    {
                        ErrSeq.Set(ref np.WbErr, (int)rc);
                        if (result == Errno.OK)
                        {
                            result = rc;
                        }
                    }
                }
            }
            finally
            {
                if (buffer != null)
                {
                    ArrayPool<byte>.Shared.Return(buffer);
                }
            }
            return result;
        }
    }

    private Errno SendWrite(FuseFile file, long offset, ReadOnlySpan<byte> data)
    {
        var conn = _fs.Conn;
        var opener = file.Opener;
        uint writeFlags = (uint)(FuseWriteFlags.Cache | FuseWriteFlags.LockOwner);
        if (conn.Has(FuseInitFlags.HandleKillprivV2) && !opener.IsRoot)
        {
            writeFlags |= (uint)FuseWriteFlags.KillSuidgid;
        }
        var arg = new FuseWriteIn
        {
            Fh = file.Fh,
            Offset = (ulong)offset,
            Length = (uint)data.Length,
            WriteFlags = writeFlags,
            LockOwner = FuseFs.LockOwnerOf(opener),
            Flags = (uint)file.Flags,
        };
        FuseWriteOut outArg = default;
        Interlocked.Increment(ref _writeRequests);
        var reply = conn.Send(FuseOpcode.Write, file.Node.NodeId, opener, new FuseArgs(FuseFs.Bytes(in arg), data),
            MemoryMarshal.AsBytes(new Span<FuseWriteOut>(ref outArg)), FuseReplyShape.Fixed);
        if (!reply.IsOk)
        {
            return reply.Errno;
        }
        // A short write-back is an error (fuse_writepage_end: the rest of the data is lost).
        return outArg.Length == (uint)data.Length ? Errno.OK : Errno.EIO;
    }

    private static FuseFile? WriteFileOf(NodePages np)
    {
        lock (np.Node.Sync)
        {
            return np.WriteFiles.Count > 0 ? np.WriteFiles[0] : null;
        }
    }

    private void DropDirty(NodePages np, long first, long last)
    {
        lock (_lock)
        {
            DropDirtyLocked(np, first, last);
        }
    }

    private void DropDirtyLocked(NodePages np, long first, long last)
    {
        var doomed = new List<CachePage>();
        foreach (long index in np.Dirty.GetViewBetween(first, last))
        {
            doomed.Add(np.Pages[index]);
        }
        foreach (var page in doomed)
        {
            RemoveLocked(page);
        }
        np.Generation++;
    }

    /// <summary>Writes back every dirty file (sync(2), umount).</summary>
    internal void SyncAll(WritebackReason reason)
    {
        while (true)
        {
            NodePages? next;
            lock (_lock)
            {
                next = _dirtyNodes.Count > 0 ? _dirtyNodes.First() : null;
            }
            if (next == null)
            {
                return;
            }
            Writeback(next, reason);
        }
    }

    /// <summary>The flusher thread: every quarter of dirty_expire it writes back the files whose first dirty page is
    /// older than dirty_expire.</summary>
    private void FlusherLoop()
    {
        var due = new List<NodePages>();
        while (true)
        {
            lock (_lock)
            {
                if (_stopping)
                {
                    return;
                }
                Monitor.Wait(_lock, TimeSpan.FromTicks(Math.Max(TimeSpan.TicksPerMillisecond, DirtyExpire.Ticks / 4)));
                if (_stopping)
                {
                    return;
                }
                long now = Stopwatch.GetTimestamp();
                due.Clear();
                foreach (var np in _dirtyNodes)
                {
                    if (now - np.DirtySince >= _expireTicks)
                    {
                        due.Add(np);
                    }
                }
            }
            foreach (var np in due)
            {
                if (!_fs.IsMounted)
                {
                    return;
                }
                Writeback(np, WritebackReason.Timer);
            }
        }
    }

    /// <summary>Forgets a node's pages when the node is evicted (fuse_evict_inode: truncate_inode_pages_final).</summary>
    internal void DropNode(FuseNode node)
    {
        var np = node.Pages;
        if (np != null)
        {
            DropRange(np);
        }
    }

    /// <summary>Stops the flusher.</summary>
    public void Dispose()
    {
        Thread? flusher;
        lock (_lock)
        {
            _stopping = true;
            flusher = _flusher;
            Monitor.PulseAll(_lock);
        }
        if (flusher != null && !ReferenceEquals(flusher, Thread.CurrentThread))
        {
            flusher.Join(TimeSpan.FromSeconds(10));
        }
    }
}
