using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.GuestKernelShim;

// mmap(2) of a file through the page cache (fuse_file_mmap, filemap_fault, page_mkwrite, msync, munmap).
public sealed partial class FuseFs
{
    /// <summary>mmap(2) of [<paramref name="offset"/>, +<paramref name="length"/>) of an open regular file. A shared
    /// mapping reads and writes the file's cached pages themselves, so it sees every write to the file and the file
    /// sees its writes once they are written back (msync, munmap, close of the last file, fsync, the flusher, memory
    /// pressure); a private one reads the cached pages until it writes a page, which it then copies for itself and
    /// never writes back. Needs a page cache (ENODEV without). The offset must be page aligned (EINVAL); every
    /// mapping needs a readable file, a writable shared one a file open for writing (EACCES). A FOPEN_DIRECT_IO file
    /// drops its cached pages, and may be mapped shared only when the daemon granted DIRECT_IO_ALLOW_MMAP (ENODEV).
    /// The mapping keeps the file: its RELEASE waits for the munmap.</summary>
    public Errno Mmap(FuseFile file, long offset, long length, bool shared, bool writable, out FuseMapping? mapping)
    {
        ArgumentNullException.ThrowIfNull(file);
        mapping = null;
        var rc = CheckLive(file.Node);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (file.IsClosed)
        {
            return Errno.EBADF;
        }
        if (file.IsDirectory || !file.Node.IsRegular)
        {
            return Errno.ENODEV;
        }
        if (offset < 0 || offset % PageSize != 0 || length <= 0 || offset > long.MaxValue - length)
        {
            return Errno.EINVAL;
        }
        if (!file.CanRead || (shared && writable && !file.CanWrite))
        {
            return Errno.EACCES;
        }
        var cache = Cache;
        if (cache == null)
        {
            return Errno.ENODEV;
        }
        var np = PageCache.For(file.Node);
        if ((file.OpenFlags & FuseOpenOutFlags.DirectIo) != 0)
        {
            if (shared && !Conn.Has(FuseInitFlags.DirectIoAllowMmap))
            {
                return Errno.ENODEV;
            }
            cache.Invalidate(np);
        }
        lock (file.Node.Sync)
        {
            file.MapRefs++;
        }
        if (shared && writable)
        {
            // Write-back of the mapping's dirty pages may use this file's handle (fuse_link_write_file).
            LinkWriteFile(np, file);
        }
        mapping = new FuseMapping(this, cache, file, np, offset, length, shared, writable);
        return Errno.OK;
    }

    /// <summary>munmap: the file loses a mapping; its RELEASE goes once it was closed and this was the last.</summary>
    internal void MappingGone(FuseFile file)
    {
        bool release;
        lock (file.Node.Sync)
        {
            file.MapRefs--;
            release = file.MapRefs == 0 && file.ReleaseDeferred;
            if (release)
            {
                file.ReleaseDeferred = false;
            }
        }
        if (release)
        {
            FinishRelease(file);
        }
    }

    /// <summary>msync(MS_SYNC) of a mapping's range: vfs_fsync_range on the mapping's file.</summary>
    internal Errno MsyncRange(FuseFile file, long firstPage, long lastPage) =>
        FsyncRange(file, dataOnly: true, file.Opener, WritebackReason.Msync, firstPage, lastPage);
}

/// <summary>A mapping of a file range made by <see cref="FuseFs.Mmap"/>: what a process sees at the mapped
/// addresses. <see cref="Read"/> and <see cref="Write"/> take positions relative to the start of the mapping. A page
/// touched for the first time (or again after it left the cache) is a page fault, served from the page cache or by a
/// READ with read-ahead; the mapping then keeps the translation until the page goes. A write to a shared mapping dirties
/// the cached page; to a private one, it copies the page first (copy on write). Touching a page wholly past the end of
/// the file is EFAULT (SIGBUS in a process), as is any position outside the mapping.</summary>
public sealed class FuseMapping : IDisposable
{
    private readonly FuseFs _fs;
    private readonly PageCache _cache;
    private readonly NodePages _np;
    private readonly Dictionary<long, (CachePage Page, long Identity)> _translations = new();
    private readonly Dictionary<long, byte[]>? _private;
    private readonly object _sync = new();
    private long _faults;
    private int _unmapped;

    internal FuseMapping(FuseFs fs, PageCache cache, FuseFile file, NodePages np, long offset, long length, bool shared, bool writable)
    {
        _fs = fs;
        _cache = cache;
        File = file;
        _np = np;
        Offset = offset;
        Length = length;
        IsShared = shared;
        IsWritable = writable;
        if (!shared)
        {
            _private = new Dictionary<long, byte[]>();
        }
    }

    /// <summary>The open file the mapping was made through (it stays referenced until <see cref="Unmap"/>).</summary>
    public FuseFile File { get; }

    /// <summary>File offset of the mapping's first byte.</summary>
    public long Offset { get; }

    public long Length { get; }

    /// <summary>MAP_SHARED (else MAP_PRIVATE).</summary>
    public bool IsShared { get; }

    /// <summary>PROT_WRITE.</summary>
    public bool IsWritable { get; }

    /// <summary>Page faults taken: pages translated on first touch or after they left the cache.</summary>
    public long Faults => Interlocked.Read(ref _faults);

    /// <summary>Pages this private mapping copied on write.</summary>
    public int PrivatePages
    {
        get
        {
            lock (_sync)
            {
                return _private?.Count ?? 0;
            }
        }
    }

    public bool IsUnmapped => Volatile.Read(ref _unmapped) != 0;

    /// <summary>Loads bytes from the mapping at <paramref name="position"/>.</summary>
    public Errno Read(long position, Span<byte> destination) => Access(position, destination, ReadOnlySpan<byte>.Empty);

    /// <summary>Stores bytes into the mapping at <paramref name="position"/> (EACCES for a read-only mapping).</summary>
    public Errno Write(long position, ReadOnlySpan<byte> source)
    {
        if (!IsWritable)
        {
            return Errno.EACCES;
        }
        return Access(position, Span<byte>.Empty, source);
    }

    private Errno Access(long position, Span<byte> readInto, ReadOnlySpan<byte> writeFrom)
    {
        if (IsUnmapped)
        {
            return Errno.EFAULT;
        }
        int total = writeFrom.IsEmpty ? readInto.Length : writeFrom.Length;
        if (position < 0 || total > Length || position > Length - total)
        {
            return Errno.EFAULT;
        }
        int done = 0;
        while (done < total)
        {
            long filePosition = Offset + position + done;
            long index = filePosition / FuseConn.PageSize;
            int inPage = (int)(filePosition % FuseConn.PageSize);
            int n = Math.Min(FuseConn.PageSize - inPage, total - done);
            var rc = writeFrom.IsEmpty
                ? AccessPage(index, inPage, readInto.Slice(done, n), ReadOnlySpan<byte>.Empty)
                : AccessPage(index, inPage, Span<byte>.Empty, writeFrom.Slice(done, n));
            if (rc != Errno.OK)
            {
                return rc;
            }
            done += n;
        }
        return Errno.OK;
    }

    private Errno AccessPage(long index, int inPage, Span<byte> readInto, ReadOnlySpan<byte> writeFrom)
    {
        if (_private != null)
        {
            lock (_sync)
            {
                if (_private.TryGetValue(index, out var copy))
                {
                    if (writeFrom.IsEmpty)
                    {
                        copy.AsSpan(inPage, readInto.Length).CopyTo(readInto);
                    }
                    else
                    {
                        writeFrom.CopyTo(copy.AsSpan(inPage));
                    }
                    return Errno.OK;
                }
            }
            if (!writeFrom.IsEmpty)
            {
                // Copy on write: the page as the file has it now, then the store into the copy.
                var copy = new byte[FuseConn.PageSize];
                var rc = AccessPage(index, 0, copy, ReadOnlySpan<byte>.Empty);
                if (rc != Errno.OK)
                {
                    return rc;
                }
                writeFrom.CopyTo(copy.AsSpan(inPage));
                lock (_sync)
                {
                    _private[index] = copy;
                }
                return Errno.OK;
            }
        }
        var access = new MappedAccess { Index = index, InPage = inPage, ReadInto = readInto, WriteFrom = writeFrom };
        for (int attempt = 0; ; attempt++)
        {
            (CachePage Page, long Identity) translation;
            bool known;
            lock (_sync)
            {
                known = _translations.TryGetValue(index, out translation);
            }
            if (known && _cache.AccessMapped(_np, translation.Page, translation.Identity, ref access))
            {
                return Errno.OK;
            }
            // Not translated, or the page left the cache: a fault. After a few of them in a row (invalidations of a
            // busy file) the fault runs under the file's write-back lock, which keeps writes and invalidations out.
            bool locked = attempt >= 2;
            if (locked)
            {
                Monitor.Enter(_np.WritebackLock);
            }
            try
            {
                var rc = Fault(ref access, locked);
                if (rc != Errno.OK)
                {
                    return rc;
                }
                if (access.Done)
                {
                    lock (_sync)
                    {
                        _translations[index] = (access.Page!, access.Identity);
                    }
                    return Errno.OK;
                }
                if (attempt >= 8)
                {
                    return Errno.ENOMEM;
                }
            }
            finally
            {
                if (locked)
                {
                    Monitor.Exit(_np.WritebackLock);
                }
            }
        }
    }

    /// <summary>filemap_fault: the access runs on the cached page, or on the page a READ (with read-ahead) brings in,
    /// under the lock that finds or inserts it. Pages wholly past the end of the file are SIGBUS.</summary>
    private Errno Fault(scoped ref MappedAccess access, bool underWritebackLock)
    {
        Interlocked.Increment(ref _faults);
        long index = access.Index;
        long size = (long)File.Node.Attr.FileSize;
        if (index * FuseConn.PageSize >= size)
        {
            return Errno.EFAULT;
        }
        var page = _cache.Lookup(_np, index, out long identity);
        if (page != null && _cache.AccessMapped(_np, page, identity, ref access))
        {
            return Errno.OK;
        }
        long endPage = (size + FuseConn.PageSize - 1) / FuseConn.PageSize;
        int readahead = Math.Max(1, (int)(_fs.Conn.MaxReadahead / FuseConn.PageSize));
        int count = (int)Math.Min(Math.Min(readahead, Math.Max(1, _fs.Conn.MaxReadSize / FuseConn.PageSize)), endPage - index);
        var rc = _cache.Fill(File, _np, index, count, File.Opener, index * FuseConn.PageSize, Span<byte>.Empty, out _, out int fetched,
            ref access, keepEvenIfInvalidated: underWritebackLock);
        if (rc != Errno.OK)
        {
            return rc;
        }
        return fetched == 0 ? Errno.EFAULT : Errno.OK;
    }

    /// <summary>msync(MS_SYNC) of [<paramref name="position"/>, +<paramref name="length"/>) of the mapping (all of it by
    /// default): the dirty pages of the range are written back and the file synced; a write-back error the mapping's
    /// file has not reported yet comes back once. A private mapping has nothing to write.</summary>
    public Errno Msync(long position = 0, long length = -1)
    {
        if (IsUnmapped)
        {
            return Errno.ENOMEM;
        }
        if (length < 0)
        {
            length = Length - position;
        }
        if (position < 0 || length < 0 || position > Length - length)
        {
            return Errno.ENOMEM;
        }
        if (!IsShared || length == 0)
        {
            return Errno.OK;
        }
        long first = (Offset + position) / FuseConn.PageSize;
        long last = (Offset + position + length - 1) / FuseConn.PageSize;
        return _fs.MsyncRange(File, first, last);
    }

    /// <summary>munmap: the dirty pages of a shared mapping are written back (errors are recorded in the file's
    /// write-back error, for the next fsync or close of an open file to report), then the mapping lets go of its
    /// file. Idempotent.</summary>
    public void Unmap()
    {
        if (Interlocked.Exchange(ref _unmapped, 1) != 0)
        {
            return;
        }
        if (IsShared && IsWritable && _fs.IsMounted)
        {
            long first = Offset / FuseConn.PageSize;
            long last = (Offset + Length - 1) / FuseConn.PageSize;
            _cache.Writeback(_np, WritebackReason.Munmap, first, last);
        }
        lock (_sync)
        {
            _translations.Clear();
            _private?.Clear();
        }
        _fs.MappingGone(File);
    }

    public void Dispose() => Unmap();

    public override string ToString() => $"{(IsShared ? "shared" : "private")} mapping of {File} at {Offset}+{Length}";
}
