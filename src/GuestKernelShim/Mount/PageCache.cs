using System.Buffers;
using System.Diagnostics;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.GuestKernelShim;

/// <summary>A mount's page cache (Linux's page cache as fs/fuse/file.c uses it): page-sized, bounded by the
/// cache_size mount option, least recently used pages evicted first. Filled by READ with read-ahead up to the
/// max_readahead INIT granted; with FUSE_WRITEBACK_CACHE it holds dirty pages that go to the daemon as WRITE
/// requests with FUSE_WRITE_CACHE, carrying the credentials and lock owner of a file opened for writing. Write-back
/// errors are recorded per file in an <see cref="ErrSeq"/> that every open file reports once.</summary>
/// <remarks>
/// One lock guards the page tables, the LRU list, page contents and the counters; it is never held across a request
/// to the daemon, and no other lock is taken under it. Page contents are copied in and out under it one page at a
/// time. A file's write-back lock (<see cref="NodePages.WritebackLock"/>) is taken before it, never after: it keeps
/// write-back, write-through, truncation, invalidation and a mapping's slow fault of one file from interleaving, and
/// a READ over pages whose write-back is in flight waits on it.
/// </remarks>
public sealed partial class PageCache
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
    /// <paramref name="fetched"/> is what the READ returned (short at end of file). The READ waits for a write-back
    /// WRITE in flight over the window, so it sees the written bytes. Pages are kept only when no invalidation, write
    /// or write-back ran meanwhile, unless <paramref name="keepEvenIfInvalidated"/> (a caller that holds the file's
    /// write-back lock, which keeps write-back and invalidations out).</summary>
    internal Errno Fill(FuseFile file, NodePages np, long first, int count, in FuseCaller caller, long position, Span<byte> destination,
        out int copied, out int fetched, bool keepEvenIfInvalidated = false)
    {
        var none = new MappedAccess { Index = -1 };
        return Fill(file, np, first, count, caller, position, destination, out copied, out fetched, ref none, keepEvenIfInvalidated);
    }

    /// <summary>As the other overload; a mapping's access to page <see cref="MappedAccess.Index"/> runs under the same
    /// lock that puts the page in, so the page cannot be evicted or invalidated between its fault and the access
    /// (the page lock of filemap_fault).</summary>
    internal Errno Fill(FuseFile file, NodePages np, long first, int count, in FuseCaller caller, long position, Span<byte> destination,
        out int copied, out int fetched, scoped ref MappedAccess access, bool keepEvenIfInvalidated = false)
    {
        copied = 0;
        fetched = 0;
        int generation;
        while (true)
        {
            lock (_lock)
            {
                for (int i = 1; i < count; i++)
                {
                    if (np.Pages.ContainsKey(first + i))
                    {
                        count = i;
                        break;
                    }
                }
                if (np.WritebackEnd == np.WritebackFirst || np.WritebackFirst >= first + count || np.WritebackEnd <= first)
                {
                    generation = np.Generation;
                    _misses++;
                    break;
                }
            }
            // Pages of the window are in a write-back WRITE not answered yet, maybe gone from the cache already: the
            // daemon may still answer the READ with their old bytes (fuse_wait_on_page_writeback). The write-back
            // holds the file's write-back lock until it is done.
            lock (np.WritebackLock)
            {
            }
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
                if (np.Generation == generation || keepEvenIfInvalidated)
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
                if (access.Index >= first && access.Index < first + pages && np.Pages.TryGetValue(access.Index, out var mapped))
                {
                    AccessLocked(np, mapped, ref access);
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
    internal bool AccessMapped(NodePages np, CachePage page, long identity, scoped ref MappedAccess access)
    {
        lock (_lock)
        {
            if (page.Identity != identity || !ReferenceEquals(page.Owner, np))
            {
                return false;
            }
            AccessLocked(np, page, ref access);
            return true;
        }
    }

    /// <summary>A mapping's access to a cached page (under _lock): copies out, or copies in and dirties the page.</summary>
    private void AccessLocked(NodePages np, CachePage page, scoped ref MappedAccess access)
    {
        if (access.WriteFrom.IsEmpty)
        {
            page.Data.AsSpan(access.InPage, access.ReadInto.Length).CopyTo(access.ReadInto);
        }
        else
        {
            access.WriteFrom.CopyTo(page.Data.AsSpan(access.InPage));
            MarkDirtyLocked(np, page);
        }
        TouchLocked(page);
        access.Page = page;
        access.Identity = page.Identity;
        access.Done = true;
    }
}
