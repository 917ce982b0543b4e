namespace Vhostfsd.GuestKernelShim;

// Invalidation: truncate_pagecache, invalidate_inode_pages2 with laundering, drop_caches.
public sealed partial class PageCache
{
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

    /// <summary>invalidate_inode_pages2(_range): every page of [<paramref name="first"/>, <paramref name="last"/>] goes,
    /// a dirty one only after it was written back (fuse_launder_folio). A page dirtied again by a mapping between its
    /// write-back and its removal is written back again rather than dropped with its new bytes.</summary>
    internal void Invalidate(NodePages np, long first = 0, long last = long.MaxValue)
    {
        // Under the file's write-back lock, as Linux locks each page: no write-through, write-back, truncate or
        // mapping fault of the file runs in the middle.
        lock (np.WritebackLock)
        {
            for (int pass = 0; ; pass++)
            {
                bool dirty;
                lock (_lock)
                {
                    np.Generation++;
                    dirty = RemoveCleanLocked(np, first, last);
                }
                if (!dirty || pass == 8)
                {
                    return;
                }
                Writeback(np, WritebackReason.Invalidate, first, last);
            }
        }
    }

    /// <summary>Removes the clean pages of the range; true when dirty ones remain in it.</summary>
    private bool RemoveCleanLocked(NodePages np, long first, long last)
    {
        List<CachePage>? doomed = null;
        bool dirty = false;
        foreach (var (index, page) in np.Pages)
        {
            if (index >= first && index <= last)
            {
                if (page.Dirty)
                {
                    dirty = true;
                }
                else
                {
                    (doomed ??= new List<CachePage>()).Add(page);
                }
            }
        }
        if (doomed != null)
        {
            foreach (var page in doomed)
            {
                RemoveLocked(page);
            }
        }
        return dirty;
    }

    /// <summary>Drops the pages of [<paramref name="first"/>, <paramref name="last"/>], dirty ones included (an evicted
    /// node, whose files are all closed).</summary>
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
}
