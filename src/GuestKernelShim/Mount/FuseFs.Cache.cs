using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.GuestKernelShim;

/// <summary>What a change of a cached file's attributes does to its pages.</summary>
internal enum CacheEffect
{
    None,
    /// <summary>The size changed: pages past it go (truncate_pagecache).</summary>
    Truncate,
    /// <summary>Every page goes (invalidate_inode_pages2), dirty ones written back first.</summary>
    Invalidate,
    TruncateAndInvalidate,
}

// The page cache as the file operations use it (fs/fuse/file.c's cached paths): reads through the cache with
// read-ahead, write-through or write-back writes, and the points where open, close, fsync, truncate and attribute
// changes keep, write back or drop pages.
public sealed partial class FuseFs
{
    private const int PageSize = FuseConn.PageSize;

    /// <summary>The mount's page cache (null without the cache_size mount option).</summary>
    public PageCache? PageCache => Cache;

    internal PageCache? Cache;

    /// <summary>FUSE_WRITEBACK_CACHE is in force: the mount has a page cache, asked for it, and the daemon granted it.</summary>
    public bool WritebackCache => Cache != null && Conn.Has(FuseInitFlags.WritebackCache);

    /// <summary>sync(2): writes back every dirty page of the mount (errors are recorded per file, as sync reports none).</summary>
    public void Sync() => Cache?.SyncAll(WritebackReason.Sync);

    // ---------------------------------------------------------------- attributes of cached files

    /// <summary>fuse_change_attributes_i for a file with cached pages (under the node's lock). Under write-back
    /// caching the guest's size, mtime and ctime win (fuse_get_cache_mask); otherwise a new size truncates the
    /// pages (and invalidates them unless only EXPLICIT_INVAL_DATA was negotiated) and, with AUTO_INVAL_DATA, a new
    /// mtime invalidates them.</summary>
    internal CacheEffect ReconcileCachedAttr(in FuseAttr current, ref FuseAttr incoming)
    {
        if (!ModeBits.IsRegular(current.Mode) || !ModeBits.IsRegular(incoming.Mode))
        {
            return CacheEffect.None;
        }
        if (WritebackCache)
        {
            incoming.FileSize = current.FileSize;
            incoming.Mtime = current.Mtime;
            incoming.MtimeNsec = current.MtimeNsec;
            incoming.Ctime = current.Ctime;
            incoming.CtimeNsec = current.CtimeNsec;
            return CacheEffect.None;
        }
        bool autoInval = Conn.Has(FuseInitFlags.AutoInvalData);
        if (current.FileSize != incoming.FileSize)
        {
            bool explicitOnly = !autoInval && Conn.Has(FuseInitFlags.ExplicitInvalData);
            return explicitOnly ? CacheEffect.Truncate : CacheEffect.TruncateAndInvalidate;
        }
        if (autoInval && (current.Mtime != incoming.Mtime || current.MtimeNsec != incoming.MtimeNsec))
        {
            return CacheEffect.Invalidate;
        }
        return CacheEffect.None;
    }

    internal void ApplyCacheEffect(FuseNode node, CacheEffect effect, long newSize)
    {
        var np = node.Pages;
        var cache = Cache;
        if (np == null || cache == null)
        {
            return;
        }
        if (effect is CacheEffect.Truncate or CacheEffect.TruncateAndInvalidate)
        {
            cache.TruncateTo(np, newSize);
        }
        if (effect is CacheEffect.Invalidate or CacheEffect.TruncateAndInvalidate)
        {
            cache.Invalidate(np);
        }
    }

    // ---------------------------------------------------------------- open and close

    /// <summary>After a regular file was opened (fuse_open / fuse_create_open with a page cache): its write-back
    /// error cursor starts at the file's current one (errseq_sample); O_TRUNC drops every page, an open without
    /// FOPEN_KEEP_CACHE drops them too (dirty ones written back first); a writable file joins the files write-back
    /// may use when write-back caching is on.</summary>
    private void CacheOpened(FuseFile file, bool truncated)
    {
        var cache = Cache;
        if (cache == null || file.IsDirectory || !file.Node.IsRegular)
        {
            return;
        }
        var np = PageCache.For(file.Node);
        file.WbErrSince = ErrSeq.Sample(ref np.WbErr);
        if (truncated)
        {
            cache.TruncateTo(np, 0);
            file.Node.SetLocalSize(0, onlyGrow: false);
        }
        else if ((file.OpenFlags & FuseOpenOutFlags.KeepCache) == 0)
        {
            cache.Invalidate(np);
        }
        if (file.CanWrite && WritebackCache)
        {
            LinkWriteFile(np, file);
        }
    }

    /// <summary>fuse_link_write_file: write-back may send through this file's handle.</summary>
    private static void LinkWriteFile(NodePages np, FuseFile file)
    {
        lock (np.Node.Sync)
        {
            if (!file.InWriteFiles)
            {
                file.InWriteFiles = true;
                np.WriteFiles.Add(file);
            }
        }
    }

    private static void UnlinkWriteFile(FuseFile file)
    {
        var np = file.Node.Pages;
        if (np == null)
        {
            return;
        }
        lock (np.Node.Sync)
        {
            if (file.InWriteFiles)
            {
                file.InWriteFiles = false;
                np.WriteFiles.Remove(file);
            }
        }
    }

    /// <summary>The cache's part of close (fuse_flush before its request) and fsync (file_write_and_wait_range):
    /// the file's dirty pages go to the daemon, then the write-back error this open file has not reported yet comes
    /// back (errseq_check_and_advance), once.</summary>
    private Errno WritebackForFile(FuseFile file, WritebackReason reason, long first = 0, long last = long.MaxValue)
    {
        var np = file.Node.Pages;
        if (Cache == null || np == null || file.IsDirectory)
        {
            return Errno.OK;
        }
        Cache.Writeback(np, reason, first, last);
        int errno = ErrSeq.CheckAndAdvance(ref np.WbErr, ref file.WbErrSince);
        return (Errno)errno;
    }

    // ---------------------------------------------------------------- reads

    /// <summary>A read through the page cache (fuse_cache_read_iter): fresh attributes first when AUTO_INVAL_DATA
    /// asks for them or the read goes past the size the guest knows, then cached pages are copied and missing ones
    /// filled by READ — with read-ahead of up to max_readahead when the miss continues the file's last read (or is at
    /// offset 0), exactly the pages asked for when it is a random one.</summary>
    private Errno CachedRead(FuseFile file, Span<byte> buffer, long offset, in FuseCaller caller, out int bytesRead)
    {
        bytesRead = 0;
        var node = file.Node;
        var cache = Cache!;
        var np = PageCache.For(node);
        if (Conn.Has(FuseInitFlags.AutoInvalData) || offset + buffer.Length > (long)node.Attr.FileSize)
        {
            var refreshed = RefreshAttr(node, caller, out _);
            if (refreshed != Errno.OK)
            {
                return refreshed;
            }
        }
        long size = (long)node.Attr.FileSize;
        if (offset >= size || buffer.IsEmpty)
        {
            return Errno.OK;
        }
        int want = (int)Math.Min(buffer.Length, size - offset);
        long lastPage = (offset + want - 1) / PageSize;
        long endPage = (size + PageSize - 1) / PageSize;
        int readahead = Math.Max(1, (int)(Conn.MaxReadahead / PageSize));
        int perRequest = Math.Max(1, Conn.MaxReadSize / PageSize);
        while (bytesRead < want)
        {
            bytesRead += cache.CopyOut(np, offset + bytesRead, buffer[bytesRead..want]);
            if (bytesRead == want)
            {
                break;
            }
            long position = offset + bytesRead;
            long index = position / PageSize;
            long needed = lastPage - index + 1;
            bool sequential = index == 0 || index == Volatile.Read(ref file.ReadaheadNext);
            long count = Math.Min(Math.Min(sequential ? Math.Max(needed, readahead) : needed, perRequest), endPage - index);
            if (count <= 0)
            {
                break;
            }
            var rc = cache.Fill(file, np, index, (int)count, caller, position, buffer[bytesRead..want], out int copied, out _);
            if (rc != Errno.OK)
            {
                return bytesRead == 0 ? rc : Errno.OK;
            }
            Volatile.Write(ref file.ReadaheadNext, index + count);
            if (copied == 0)
            {
                break;
            }
            bytesRead += copied;
        }
        return Errno.OK;
    }

    // ---------------------------------------------------------------- writes

    /// <summary>A write through the page cache. Without write-back caching it is written through (fuse_perform_write):
    /// WRITE requests first, then the cached pages take the bytes and the size grows; with it, the bytes land in
    /// dirty pages (fuse_write_begin reads a partly written page first when it lies inside the file) and the guest's
    /// size and times move, the WRITEs following at write-back.</summary>
    private Errno CachedWrite(FuseFile file, ReadOnlySpan<byte> data, long offset, in FuseCaller caller, out int bytesWritten)
    {
        var node = file.Node;
        var np = PageCache.For(node);
        if (WritebackCache)
        {
            return BufferedWrite(file, np, data, offset, caller, out bytesWritten);
        }
        Errno rc;
        lock (np.WritebackLock)
        {
            rc = SendWrites(file, data, offset, caller, lockOwner: false, out bytesWritten);
            if (bytesWritten > 0)
            {
                Cache!.UpdateAfterWrite(np, offset, data[..bytesWritten]);
                node.SetLocalSize(offset + bytesWritten, onlyGrow: true);
            }
        }
        node.InvalidateAttr();
        return rc;
    }

    private Errno BufferedWrite(FuseFile file, NodePages np, ReadOnlySpan<byte> data, long offset, in FuseCaller caller, out int bytesWritten)
    {
        bytesWritten = 0;
        var node = file.Node;
        var cache = Cache!;
        if ((file.Flags & Libc.O_APPEND) != 0)
        {
            offset = (long)node.Attr.FileSize;
        }
        int attempts = 0;
        while (bytesWritten < data.Length)
        {
            long position = offset + bytesWritten;
            long index = position / PageSize;
            int inPage = (int)(position % PageSize);
            int n = Math.Min(PageSize - inPage, data.Length - bytesWritten);
            bool beyondEof = index * PageSize >= (long)node.Attr.FileSize;
            if (cache.TryWriteInto(np, index, inPage, data.Slice(bytesWritten, n), beyondEof, out bool needRoom))
            {
                bytesWritten += n;
                node.SetLocalSize(position + n, onlyGrow: true);
                attempts = 0;
                continue;
            }
            if (++attempts > 16)
            {
                return bytesWritten == 0 ? Errno.ENOMEM : Errno.OK;
            }
            if (needRoom)
            {
                cache.RelievePressure();
                continue;
            }
            // The page is read under the file's write-back lock, which keeps write-back and invalidation out (the
            // locked page of fuse_write_begin): otherwise a write-back anywhere in a busy file could discard the
            // read page again and again. Writes that create the page meanwhile win; the read does not overwrite them.
            Errno rc;
            int fetched;
            lock (np.WritebackLock)
            {
                rc = cache.Fill(file, np, index, 1, caller, position, Span<byte>.Empty, out _, out fetched, keepEvenIfInvalidated: true);
            }
            if (rc != Errno.OK)
            {
                return bytesWritten == 0 ? rc : Errno.OK;
            }
            if (fetched == 0)
            {
                // The daemon's file ends before this page: nothing to read, the page starts as zeros.
                if (cache.TryWriteInto(np, index, inPage, data.Slice(bytesWritten, n), pageBeyondEof: true, out _))
                {
                    bytesWritten += n;
                    node.SetLocalSize(position + n, onlyGrow: true);
                }
            }
        }
        node.TouchLocalTimes();
        if (cache.OverDirtyLimit)
        {
            cache.Writeback(np, WritebackReason.Pressure);
            if (cache.OverDirtyLimit)
            {
                cache.RelievePressure();
            }
        }
        return Errno.OK;
    }

    // ---------------------------------------------------------------- direct I/O beside the cache

    /// <summary>Before a direct READ or WRITE of [<paramref name="offset"/>, +<paramref name="length"/>) on a file that
    /// also has cached pages: dirty pages of the range go to the daemon first (filemap_write_and_wait_range), so the
    /// direct request sees them and cannot be overtaken by them.</summary>
    private NodePages? DirectIoBegin(FuseFile file, long offset, long length)
    {
        var np = file.Node.Pages;
        if (Cache == null || np == null || length <= 0)
        {
            return null;
        }
        Cache.Writeback(np, WritebackReason.Invalidate, offset / PageSize, (offset + length - 1) / PageSize);
        return np;
    }

    /// <summary>After a direct WRITE: the cached pages of the range are stale and go
    /// (kiocb_invalidate_post_direct_write).</summary>
    private void DirectWriteDone(NodePages? np, long offset, long length)
    {
        if (np != null && length > 0)
        {
            Cache!.Invalidate(np, offset / PageSize, (offset + length - 1) / PageSize);
        }
    }
}
