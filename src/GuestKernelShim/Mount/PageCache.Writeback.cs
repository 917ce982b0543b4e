using System.Buffers;
using System.Diagnostics;
using System.Runtime.InteropServices;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.GuestKernelShim;

// Write-back: dirty pages to the daemon as WRITE_CACHE requests, the flusher thread, sync and shutdown.
public sealed partial class PageCache
{
    // ---------------------------------------------------------------- write-back

    /// <summary>Writes the dirty pages of <paramref name="np"/> in [<paramref name="first"/>, <paramref name="last"/>]
    /// to the daemon (fuse_writepages): runs of contiguous pages up to the connection's largest WRITE, each sent with
    /// FUSE_WRITE_CACHE on the handle of the file's first writable open file, with that opener's credentials and lock
    /// owner (FUSE_WRITE_LOCKOWNER), clamped to the file size the guest knows. A page is clean once its bytes are
    /// copied for sending, and may then be evicted before the daemon has them: until the WRITE is answered its range
    /// is recorded as in flight, which a READ of it waits for (fuse_wait_on_page_writeback), and the copy moves the
    /// file's generation, so a READ the daemon answered before the copy does not put the old bytes back once the
    /// pages are gone. A failed WRITE records its error in the file's <see cref="ErrSeq"/> (the data is lost, as
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
                        np.Generation++;
                        np.WritebackFirst = start;
                        np.WritebackEnd = start + run;
                    }
                    long size = (long)node.Attr.FileSize;
                    long length = Math.Min((long)run * PageSize, size - start * PageSize);
                    var rc = Errno.OK;
                    try
                    {
                        // Pages past the end of the file (a truncate raced) have nothing to write.
                        if (length > 0)
                        {
                            rc = SendWrite(file, start * PageSize, buffer.AsSpan(0, (int)length));
                        }
                    }
                    finally
                    {
                        lock (_lock)
                        {
                            np.WritebackEnd = np.WritebackFirst;
                        }
                    }
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
    internal void Stop()
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
