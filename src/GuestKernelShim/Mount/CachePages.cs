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
    /// <summary>sync(2) (<see cref="FuseFs.Sync"/>).</summary>
    Sync,
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
/// write-back error sequence (mapping->wb_err), the pages whose write-back WRITE is in flight (fuse_inode.writepages)
/// and a generation that moves whenever pages are invalidated or written back, so that a READ racing either does not
/// put stale data back.</summary>
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
    /// <summary>Pages [<see cref="WritebackFirst"/>, <see cref="WritebackEnd"/>) went out in a write-back WRITE that
    /// has not been answered: the daemon may still hold their old bytes while the cache may already have let them go
    /// (empty when equal; guarded by the cache lock, set only under <see cref="WritebackLock"/>, so one run at a time).</summary>
    public long WritebackFirst;
    public long WritebackEnd;
    public int WbErr;
    public long DirtySince;
}

/// <summary>One load or store of a mapping into one page: the bytes, and once done the page it reached.</summary>
internal ref struct MappedAccess
{
    public long Index;
    public int InPage;
    public Span<byte> ReadInto;
    public ReadOnlySpan<byte> WriteFrom;
    public bool Done;
    public CachePage? Page;
    public long Identity;
}
