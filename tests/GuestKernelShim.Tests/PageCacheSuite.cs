using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Xunit;

namespace Vhostfsd.GuestKernelShim.Tests;

/// <summary>The daemon's guest-cache setting the suites start it with (vhostfsd --cache, virtiofsd -o cache=).</summary>
public enum DaemonCache
{
    /// <summary>never / none: every file opened FOPEN_DIRECT_IO, timeouts 0.</summary>
    None,
    /// <summary>auto: no FOPEN flags (pages dropped at each open), timeouts 1 s.</summary>
    Auto,
    /// <summary>always: FOPEN_KEEP_CACHE, timeouts of a day.</summary>
    Always,
}

/// <summary>A daemon started for one test and the shim mounted on it with a page cache.</summary>
public sealed class CacheTarget : IDisposable
{
    public CacheTarget(DaemonProcess daemon, MountOptions options, FuseConnOptions? connOptions)
    {
        Daemon = daemon;
        try
        {
            Fs = daemon.Mount(options, connOptions);
        }
        catch
        {
            daemon.Dispose();
            throw;
        }
    }

    public DaemonProcess Daemon { get; }
    public FuseFs Fs { get; }
    public PageCache Cache => Fs.PageCache!;
    public string HostDir => Daemon.SharedDir;
    public string Host(string name) => Path.Combine(HostDir, name);

    public void Dispose()
    {
        Fs.Dispose();
        Daemon.Dispose();
    }
}

/// <summary>The guest page cache, mmap and write-back caching of issue 20 through a real daemon: every semantic is
/// checked against what the host file holds, so a daemon that mishandles a WRITE_CACHE request, a lock owner or a
/// killpriv flag fails it as surely as a shim that caches wrongly. Run against vhostfsd and the reference daemon.</summary>
public abstract class PageCacheSuite
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);
    private const int Page = FuseConn.PageSize;

    /// <summary>Starts the daemon with its guest-cache setting, write-back caching on or off, on
    /// <paramref name="sharedDir"/> (a fresh directory when null).</summary>
    protected abstract DaemonProcess StartDaemon(DaemonCache cache, bool writeback, string? sharedDir = null, bool killprivV2 = false);

    private CacheTarget Start(DaemonCache cache, bool writeback = false, long cacheSize = 16 << 20, FuseConnOptions? connOptions = null,
        TimeSpan? dirtyExpire = null, string? sharedDir = null, bool killprivV2 = false)
    {
        var options = new MountOptions { CacheSize = cacheSize, Writeback = writeback, DirtyExpire = dirtyExpire ?? TimeSpan.FromSeconds(30) };
        var target = new CacheTarget(StartDaemon(cache, writeback, sharedDir, killprivV2), options, connOptions);
        if (writeback)
        {
            Assert.True(target.Fs.WritebackCache, "the daemon was started to grant FUSE_WRITEBACK_CACHE");
        }
        return target;
    }

    protected static byte[] Pattern(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    private static FuseFile OpenFile(CacheTarget t, string name, int flags = Libc.O_RDWR, FuseCaller? caller = null)
    {
        Assert.Equal(Errno.OK, t.Fs.Walk(name, out var node, caller));
        Assert.Equal(Errno.OK, t.Fs.Open(node, flags, out var file, caller));
        return file!;
    }

    private static byte[] ReadAll(CacheTarget t, FuseFile file, int length, long offset = 0)
    {
        var buffer = new byte[length];
        Assert.Equal(Errno.OK, t.Fs.Read(file, buffer, offset, out int read));
        return buffer.AsSpan(0, read).ToArray();
    }

    private static readonly DateTime FixedMtime = new(2020, 1, 1, 0, 0, 0, DateTimeKind.Utc);

    /// <summary>Host contents with a fixed mtime (whole seconds, so it is set back exactly): a rewrite this way changes
    /// only the bytes.</summary>
    private static void WriteWithFixedMtime(string path, byte[] data)
    {
        File.WriteAllBytes(path, data);
        File.SetLastWriteTimeUtc(path, FixedMtime);
    }

    // ---------------------------------------------------------------- the page cache

    [Fact]
    public void RereadsAreServedFromTheCache()
    {
        using var t = Start(DaemonCache.Always);
        var data = Pattern(64 * 1024, 1);
        File.WriteAllBytes(t.Host("f"), data);
        var file = OpenFile(t, "f", Libc.O_RDONLY);
        Assert.Equal(data, ReadAll(t, file, data.Length));
        long requests = t.Cache.ReadRequests;
        Assert.True(requests >= 1);
        Assert.Equal(16, t.Cache.PagesOf(file.Node));
        for (int i = 0; i < 10; i++)
        {
            Assert.Equal(data.AsSpan(4096 * i, 4096).ToArray(), ReadAll(t, file, 4096, 4096 * i));
        }
        Assert.Equal(requests, t.Cache.ReadRequests);
        Assert.True(t.Cache.Hits >= 10);
        Assert.Equal(Errno.OK, t.Fs.Release(file));
    }

    [Fact]
    public void KeepCacheKeepsPagesAcrossOpensAndItsAbsenceDropsThem()
    {
        foreach (var mode in new[] { DaemonCache.Always, DaemonCache.Auto })
        {
            using var t = Start(mode);
            var before = Pattern(8192, 2);
            var after = Pattern(8192, 3);
            WriteWithFixedMtime(t.Host("f"), before);
            var first = OpenFile(t, "f", Libc.O_RDONLY);
            Assert.Equal(before, ReadAll(t, first, 8192));
            Assert.Equal(Errno.OK, t.Fs.Release(first));
            Assert.Equal(mode == DaemonCache.Always, (first.OpenFlags & FuseOpenOutFlags.KeepCache) != 0);
            // The host changes the bytes but neither size nor mtime: only the open can tell the guest.
            WriteWithFixedMtime(t.Host("f"), after);
            var second = OpenFile(t, "f", Libc.O_RDONLY);
            var seen = ReadAll(t, second, 8192);
            if (mode == DaemonCache.Always)
            {
                // FOPEN_KEEP_CACHE: the pages cached before the open are trusted.
                Assert.Equal(before, seen);
            }
            else
            {
                Assert.Equal(after, seen);
            }
            Assert.Equal(Errno.OK, t.Fs.Release(second));
        }
    }

    [Fact]
    public void ANewMtimeOrSizeInTheAttributesDropsThePages()
    {
        using var t = Start(DaemonCache.Always);
        Assert.True(t.Fs.Conn.Has(FuseInitFlags.AutoInvalData), "the daemon grants AUTO_INVAL_DATA");
        File.WriteAllBytes(t.Host("f"), Pattern(8192, 4));
        var file = OpenFile(t, "f", Libc.O_RDONLY);
        Assert.Equal(Pattern(8192, 4), ReadAll(t, file, 8192));
        // Same size, new mtime: AUTO_INVAL_DATA drops the pages when the guest sees the attributes.
        File.WriteAllBytes(t.Host("f"), Pattern(8192, 5));
        File.SetLastWriteTimeUtc(t.Host("f"), DateTime.UtcNow.AddSeconds(5));
        Assert.Equal(Pattern(8192, 4), ReadAll(t, file, 8192));
        Assert.Equal(Errno.OK, t.Fs.GetAttr(file.Node, out _, force: true));
        Assert.Equal(0, t.Cache.PagesOf(file.Node));
        Assert.Equal(Pattern(8192, 5), ReadAll(t, file, 8192));
        // A new size (mtime kept): the pages past it go and the rest is read again.
        WriteWithFixedMtime(t.Host("f"), Pattern(8192, 5));
        Assert.Equal(Errno.OK, t.Fs.GetAttr(file.Node, out _, force: true));
        Assert.Equal(Pattern(8192, 5), ReadAll(t, file, 8192));
        WriteWithFixedMtime(t.Host("f"), Pattern(5000, 6));
        Assert.Equal(Errno.OK, t.Fs.GetAttr(file.Node, out var attr, force: true));
        Assert.Equal(5000ul, attr.FileSize);
        Assert.Equal(Pattern(5000, 6), ReadAll(t, file, 8192));
        Assert.Equal(Errno.OK, t.Fs.Release(file));
    }

    [Fact]
    public void AfterTheAttributeTimeoutReadsSeeTheHostsChange()
    {
        using var t = Start(DaemonCache.Auto);
        File.WriteAllBytes(t.Host("f"), Pattern(4096, 7));
        var file = OpenFile(t, "f", Libc.O_RDONLY);
        Assert.Equal(Pattern(4096, 7), ReadAll(t, file, 4096));
        File.WriteAllBytes(t.Host("f"), Pattern(4096, 8));
        File.SetLastWriteTimeUtc(t.Host("f"), DateTime.UtcNow.AddSeconds(5));
        Thread.Sleep(1200); // cache=auto: attributes live 1 s
        Assert.Equal(Pattern(4096, 8), ReadAll(t, file, 4096));
        Assert.Equal(Errno.OK, t.Fs.Release(file));
    }

    [Fact]
    public void DirectIoFilesBypassTheCacheAndRefuseSharedMappings()
    {
        using var t = Start(DaemonCache.None);
        File.WriteAllBytes(t.Host("f"), Pattern(8192, 9));
        var file = OpenFile(t, "f");
        Assert.True(file.IsDirectIo);
        Assert.Equal(Pattern(8192, 9), ReadAll(t, file, 8192));
        Assert.Equal(0, t.Cache.PagesOf(file.Node));
        File.WriteAllBytes(t.Host("f"), Pattern(8192, 10));
        Assert.Equal(Pattern(8192, 10), ReadAll(t, file, 8192));
        Assert.Equal(Errno.ENODEV, t.Fs.Mmap(file, 0, 8192, shared: true, writable: true, out _));
        Assert.Equal(Errno.OK, t.Fs.Mmap(file, 0, 8192, shared: false, writable: true, out var map));
        var bytes = new byte[100];
        Assert.Equal(Errno.OK, map!.Read(4000, bytes));
        Assert.Equal(Pattern(8192, 10).AsSpan(4000, 100).ToArray(), bytes);
        map.Unmap();
        Assert.Equal(Errno.OK, t.Fs.Release(file));
    }

    [Fact]
    public void TruncateDropsThePagesPastTheNewSize()
    {
        using var t = Start(DaemonCache.Always);
        File.WriteAllBytes(t.Host("f"), Pattern(3 * Page, 11));
        var file = OpenFile(t, "f");
        Assert.Equal(Pattern(3 * Page, 11), ReadAll(t, file, 3 * Page));
        Assert.Equal(Errno.OK, t.Fs.Truncate(file.Node, 5000, file: file));
        Assert.Equal(5000, new FileInfo(t.Host("f")).Length);
        Assert.Equal(Pattern(5000, 11), ReadAll(t, file, 3 * Page));
        // Growing again: the cut bytes are gone, zeros in their place.
        Assert.Equal(Errno.OK, t.Fs.Truncate(file.Node, 3 * Page, file: file));
        var grown = ReadAll(t, file, 3 * Page);
        Assert.Equal(Pattern(5000, 11), grown.AsSpan(0, 5000).ToArray());
        Assert.All(grown.AsSpan(5000).ToArray(), b => Assert.Equal(0, b));
        Assert.Equal(grown, File.ReadAllBytes(t.Host("f")));
        Assert.Equal(Errno.OK, t.Fs.Release(file));
    }

    [Fact]
    public void AWriteThroughAnotherHandleReplacesWhatACachedHandleReads()
    {
        using var t = Start(DaemonCache.Always);
        File.WriteAllBytes(t.Host("f"), Pattern(4 * Page, 12));
        var reader = OpenFile(t, "f", Libc.O_RDONLY);
        Assert.Equal(Pattern(4 * Page, 12), ReadAll(t, reader, 4 * Page));
        // An O_DIRECT handle writes past the cache: the cached pages of its range go.
        var direct = OpenFile(t, "f", Libc.O_RDWR | Libc.O_DIRECT);
        Assert.True(direct.IsDirectIo);
        var news = Pattern(Page, 13);
        Assert.Equal(Errno.OK, t.Fs.Write(direct, news, Page, out int written));
        Assert.Equal(Page, written);
        Assert.False(t.Cache.Contains(reader.Node, 1));
        Assert.True(t.Cache.Contains(reader.Node, 0));
        Assert.Equal(news, ReadAll(t, reader, Page, Page));
        // A cached handle's write-through puts its bytes into the pages the reader uses.
        var writer = OpenFile(t, "f", Libc.O_WRONLY);
        var more = Pattern(100, 14);
        Assert.Equal(Errno.OK, t.Fs.Write(writer, more, 2 * Page + 10, out _));
        Assert.Equal(more, ReadAll(t, reader, 100, 2 * Page + 10));
        Assert.Equal(more, File.ReadAllBytes(t.Host("f")).AsSpan(2 * Page + 10, 100).ToArray());
        foreach (var f in new[] { reader, direct, writer })
        {
            Assert.Equal(Errno.OK, t.Fs.Release(f));
        }
    }

    [Fact]
    public void SequentialReadsReadAheadUpToMaxReadaheadAndRandomReadsDoNot()
    {
        using var t = Start(DaemonCache.Always, connOptions: new FuseConnOptions { MaxReadahead = 64 * 1024 });
        Assert.Equal(64u * 1024, t.Fs.Conn.MaxReadahead);
        File.WriteAllBytes(t.Host("f"), Pattern(1 << 20, 15));
        var file = OpenFile(t, "f", Libc.O_RDONLY);
        for (int i = 0; i < 16; i++)
        {
            Assert.Equal(Pattern(1 << 20, 15).AsSpan(i * Page, Page).ToArray(), ReadAll(t, file, Page, i * Page));
        }
        Assert.Equal(1, t.Cache.ReadRequests);
        Assert.Equal(16, t.Cache.PagesRead);
        // The 17th page continues the stream: the next window.
        ReadAll(t, file, Page, 16 * Page);
        Assert.Equal(2, t.Cache.ReadRequests);
        Assert.Equal(32, t.Cache.PagesRead);
        // A random page elsewhere: that page alone.
        ReadAll(t, file, Page, 200 * Page);
        Assert.Equal(3, t.Cache.ReadRequests);
        Assert.Equal(33, t.Cache.PagesRead);
        Assert.Equal(Errno.OK, t.Fs.Release(file));
    }

    [Fact]
    public void TheCacheIsBoundedAndEvictsTheLeastRecentlyUsedPage()
    {
        using var t = Start(DaemonCache.Always, cacheSize: 16 * Page, connOptions: new FuseConnOptions { MaxReadahead = Page });
        Assert.Equal(16, t.Cache.Capacity);
        File.WriteAllBytes(t.Host("f"), Pattern(32 * Page, 16));
        var file = OpenFile(t, "f", Libc.O_RDONLY);
        for (int i = 0; i < 16; i++)
        {
            ReadAll(t, file, Page, i * Page);
        }
        Assert.Equal(16, t.Cache.CachedPages);
        ReadAll(t, file, Page, 0); // page 0 is now the most recently used, page 1 the least
        ReadAll(t, file, Page, 20 * Page);
        Assert.Equal(16, t.Cache.CachedPages);
        Assert.True(t.Cache.Contains(file.Node, 0));
        Assert.False(t.Cache.Contains(file.Node, 1));
        Assert.True(t.Cache.Contains(file.Node, 20));
        Assert.Equal(1, t.Cache.Evictions);
        Assert.Equal(Pattern(32 * Page, 16).AsSpan(Page, Page).ToArray(), ReadAll(t, file, Page, Page));
        Assert.Equal(Errno.OK, t.Fs.Release(file));
    }

    // ---------------------------------------------------------------- mmap

    [Fact]
    public void MappingsFaultPagesInAndSharedWritesReachTheHostAtMsync()
    {
        using var t = Start(DaemonCache.Auto);
        File.WriteAllBytes(t.Host("f"), Pattern(3 * Page, 17));
        var file = OpenFile(t, "f");
        Assert.Equal(Errno.OK, t.Fs.Mmap(file, 0, 3 * Page, shared: true, writable: true, out var map));
        var bytes = new byte[10];
        Assert.Equal(Errno.OK, map!.Read(2 * Page + 5, bytes));
        Assert.Equal(Pattern(3 * Page, 17).AsSpan(2 * Page + 5, 10).ToArray(), bytes);
        Assert.Equal(1, map.Faults);
        Assert.Equal(Errno.OK, map.Read(2 * Page + 100, bytes));
        Assert.Equal(1, map.Faults);
        Assert.Equal(Errno.EFAULT, map.Read(3 * Page - 5, bytes));
        var store = Pattern(Page + 50, 18);
        Assert.Equal(Errno.OK, map.Write(100, store));
        Assert.Equal(2, t.Cache.DirtyPagesOf(file.Node));
        Assert.Equal(Pattern(3 * Page, 17), File.ReadAllBytes(t.Host("f")));
        Assert.Equal(Errno.OK, map.Msync());
        Assert.Equal(0, t.Cache.DirtyPagesOf(file.Node));
        Assert.True(t.Cache.PagesWrittenBack(WritebackReason.Msync) >= 2);
        var expected = Pattern(3 * Page, 17);
        store.CopyTo(expected, 100);
        Assert.Equal(expected, File.ReadAllBytes(t.Host("f")));
        map.Unmap();
        Assert.Equal(Errno.OK, t.Fs.Release(file));
    }

    [Fact]
    public void AnOverlappingPwriteIntoADirtyMappedPageIsWhatMsyncWritesBack()
    {
        using var t = Start(DaemonCache.Auto);
        File.WriteAllBytes(t.Host("f"), new byte[2 * Page]);
        var file = OpenFile(t, "f");
        Assert.Equal(Errno.OK, t.Fs.Mmap(file, 0, 2 * Page, shared: true, writable: true, out var map));
        var mapped = Enumerable.Repeat((byte)'m', Page).ToArray();
        Assert.Equal(Errno.OK, map!.Write(0, mapped));
        var written = Enumerable.Repeat((byte)'p', 200).ToArray();
        Assert.Equal(Errno.OK, t.Fs.Write(file, written, 1000, out int n));
        Assert.Equal(200, n);
        Assert.Equal(Errno.OK, map.Msync());
        var host = File.ReadAllBytes(t.Host("f"));
        var expected = new byte[2 * Page];
        mapped.CopyTo(expected, 0);
        written.CopyTo(expected, 1000);
        Assert.Equal(expected, host);
        var seen = new byte[Page];
        Assert.Equal(Errno.OK, map.Read(0, seen));
        Assert.Equal(expected.AsSpan(0, Page).ToArray(), seen);
        map.Unmap();
        Assert.Equal(Errno.OK, t.Fs.Release(file));
    }

    [Fact]
    public void PrivateMappingsCopyOnWriteAndNeverReachTheFile()
    {
        using var t = Start(DaemonCache.Auto);
        File.WriteAllBytes(t.Host("f"), Pattern(2 * Page, 19));
        var file = OpenFile(t, "f", Libc.O_RDONLY);
        Assert.Equal(Errno.EACCES, t.Fs.Mmap(file, 0, Page, shared: true, writable: true, out _));
        Assert.Equal(Errno.OK, t.Fs.Mmap(file, 0, 2 * Page, shared: false, writable: true, out var map));
        Assert.Equal(Errno.OK, map!.Write(10, new byte[] { 1, 2, 3 }));
        Assert.Equal(1, map.PrivatePages);
        var back = new byte[3];
        Assert.Equal(Errno.OK, map.Read(10, back));
        Assert.Equal(new byte[] { 1, 2, 3 }, back);
        Assert.Equal(Pattern(2 * Page, 19).AsSpan(10, 3).ToArray(), ReadAll(t, file, 3, 10));
        Assert.Equal(0, t.Cache.DirtyPages);
        Assert.Equal(Errno.OK, map.Msync());
        map.Unmap();
        Assert.Equal(Errno.OK, t.Fs.Release(file));
        Assert.Equal(Pattern(2 * Page, 19), File.ReadAllBytes(t.Host("f")));
    }

    [Fact]
    public void MunmapWritesBackAndTheFileIsReleasedAfterItsLastMapping()
    {
        using var t = Start(DaemonCache.Auto);
        File.WriteAllBytes(t.Host("f"), new byte[Page]);
        var file = OpenFile(t, "f");
        Assert.Equal(Errno.OK, t.Fs.Mmap(file, 0, Page, shared: true, writable: true, out var map));
        // close(2) with the mapping alive: FLUSH now, RELEASE at munmap; the mapping still works.
        Assert.Equal(Errno.OK, t.Fs.Release(file));
        Assert.Equal(1, file.Node.OpenFiles);
        Assert.Equal(Errno.OK, map!.Write(0, "after close"u8));
        map.Unmap();
        Assert.Equal(0, file.Node.OpenFiles);
        Assert.True(t.Cache.PagesWrittenBack(WritebackReason.Munmap) >= 1);
        Assert.Equal("after close"u8.ToArray(), File.ReadAllBytes(t.Host("f")).AsSpan(0, 11).ToArray());
        Assert.Equal(Errno.EFAULT, map.Read(0, new byte[1]));
    }

    // ---------------------------------------------------------------- write-back caching

    [Fact]
    public void WritebackWritesWaitInTheCacheUntilFsyncAndGoAsLargeWrites()
    {
        using var t = Start(DaemonCache.Always, writeback: true);
        File.WriteAllBytes(t.Host("f"), Array.Empty<byte>());
        var file = OpenFile(t, "f");
        var data = Pattern(256 * 1024, 20);
        for (int offset = 0; offset < data.Length; offset += 4096)
        {
            Assert.Equal(Errno.OK, t.Fs.Write(file, data.AsSpan(offset, 4096), offset, out int n));
            Assert.Equal(4096, n);
        }
        Assert.Equal(0, new FileInfo(t.Host("f")).Length);
        Assert.Equal(Errno.OK, t.Fs.GetAttr(file.Node, out var attr, force: true));
        Assert.Equal((ulong)data.Length, attr.FileSize); // the guest's size, not the daemon's
        Assert.Equal(0, t.Cache.WritebackRequests);
        Assert.Equal(Errno.OK, t.Fs.Fsync(file));
        Assert.Equal(data, File.ReadAllBytes(t.Host("f")));
        Assert.Equal(64, t.Cache.PagesWrittenBack(WritebackReason.Fsync));
        Assert.True(t.Cache.WritebackRequests <= (data.Length + t.Fs.Conn.MaxWriteSize - 1) / t.Fs.Conn.MaxWriteSize,
            $"{t.Cache.WritebackRequests} WRITEs for 256 KiB");
        Assert.Equal(Errno.OK, t.Fs.Release(file));
    }

    [Fact]
    public void APartialWriteInsideTheFileReadsThePageFirst()
    {
        using var t = Start(DaemonCache.Always, writeback: true);
        File.WriteAllBytes(t.Host("f"), Pattern(2 * Page, 21));
        var file = OpenFile(t, "f", Libc.O_WRONLY);
        Assert.Equal(Errno.OK, t.Fs.Write(file, "xyz"u8, Page + 7, out _));
        Assert.Equal(Errno.OK, t.Fs.Release(file));
        var expected = Pattern(2 * Page, 21);
        "xyz"u8.CopyTo(expected.AsSpan(Page + 7));
        Assert.Equal(expected, File.ReadAllBytes(t.Host("f")));
        Assert.True(t.Cache.PagesWrittenBack(WritebackReason.Flush) >= 1);
    }

    [Fact]
    public void DataWrittenThroughTheCacheSurvivesAnUnmount()
    {
        var data = Pattern(3 * 1024 * 1024 + 123, 22);
        string dir;
        using (var t = Start(DaemonCache.Always, writeback: true, cacheSize: 64 << 20))
        {
            dir = t.HostDir;
            Assert.Equal(Errno.OK, t.Fs.Create(t.Fs.Root, "f", Libc.O_RDWR | Libc.O_CREAT, 0x1A4, out _, out var file));
            for (int offset = 0; offset < data.Length; offset += 10_000)
            {
                Assert.Equal(Errno.OK, t.Fs.Write(file!, data.AsSpan(offset, Math.Min(10_000, data.Length - offset)), offset, out _));
            }
            Assert.True(t.Cache.DirtyPages > 0);
            // Unmount with the file still open: sync_filesystem writes it back before DESTROY.
            t.Fs.Unmount();
            Assert.True(t.Cache.PagesWrittenBack(WritebackReason.Unmount) > 0);
            Assert.Equal(data, File.ReadAllBytes(t.Host("f")));
            // A fresh mount reads the same bytes back through the daemon.
            using var again = new CacheTarget(StartDaemon(DaemonCache.None, writeback: false, sharedDir: dir), new MountOptions(), null);
            var file2 = OpenFile(again, "f", Libc.O_RDONLY);
            Assert.Equal(data, ReadAll(again, file2, data.Length + 10));
        }
    }

    [Fact]
    public void TheFlusherWritesBackPagesOlderThanDirtyExpire()
    {
        using var t = Start(DaemonCache.Always, writeback: true, dirtyExpire: TimeSpan.FromMilliseconds(200));
        File.WriteAllBytes(t.Host("f"), Array.Empty<byte>());
        var file = OpenFile(t, "f");
        Assert.Equal(Errno.OK, t.Fs.Write(file, "timer"u8, 0, out _));
        Assert.True(SpinWait.SpinUntil(() => File.ReadAllBytes(t.Host("f")).AsSpan().SequenceEqual("timer"u8), Timeout),
            "the dirty page never reached the host");
        Assert.Equal(1, t.Cache.PagesWrittenBack(WritebackReason.Timer));
        Assert.Equal(Errno.OK, t.Fs.Release(file));
    }

    [Fact]
    public void MemoryPressureWritesDirtyPagesBack()
    {
        using var t = Start(DaemonCache.Always, writeback: true, cacheSize: 16 * Page);
        File.WriteAllBytes(t.Host("f"), Array.Empty<byte>());
        var file = OpenFile(t, "f");
        var data = Pattern(64 * Page, 23);
        for (int i = 0; i < 64; i++)
        {
            Assert.Equal(Errno.OK, t.Fs.Write(file, data.AsSpan(i * Page, Page), i * Page, out _));
            Assert.True(t.Cache.CachedPages <= 16);
        }
        Assert.True(t.Cache.PagesWrittenBack(WritebackReason.Pressure) >= 48, $"{t.Cache.PagesWrittenBack(WritebackReason.Pressure)} pages under pressure");
        Assert.Equal(Errno.OK, t.Fs.Release(file));
        Assert.Equal(data, File.ReadAllBytes(t.Host("f")));
    }

    [Fact]
    public void WritebackCarriesTheOpenersCredentialsSoAnUnprivilegedWriterClearsSetuid()
    {
        using var t = Start(DaemonCache.Always, writeback: true, killprivV2: true);
        Assert.True(t.Fs.Conn.Has(FuseInitFlags.HandleKillprivV2));
        HostStat.Chmod(t.HostDir, 0x1ED); // the temporary share is 0700: let uid 1000 in
        File.WriteAllBytes(t.Host("f"), new byte[10]);
        HostStat.Chmod(t.Host("f"), 0xDB6 /* 06666 */);
        var user = new FuseCaller(1000, 1000, 4242);
        var file = OpenFile(t, "f", Libc.O_WRONLY, user);
        Assert.Equal(Errno.OK, t.Fs.Write(file, "user data"u8, 0, out _, user));
        Assert.Equal(0xDB6, HostStat.Of(t.Host("f")).Mode & 0xFFF);
        // root asks for the fsync; the WRITE still goes as the opener (uid 1000, no CAP_FSETID).
        Assert.Equal(Errno.OK, t.Fs.Fsync(file, caller: FuseCaller.Root));
        Assert.Equal("user data"u8.ToArray(), File.ReadAllBytes(t.Host("f")).AsSpan(0, 9).ToArray());
        Assert.Equal(0, HostStat.Of(t.Host("f")).Mode & 0x800);
        Assert.Equal(Errno.OK, t.Fs.Release(file, user));
    }

    [Fact]
    public void AWritebackErrorAfterCloseIsSeenOnceByTheNextFsyncOfAnotherOpenFile()
    {
        string mountPoint = Directory.CreateTempSubdirectory("shim-enospc-").FullName;
        ShellCommand.Run("mount", "-t", "tmpfs", "-o", "size=4m", "shim-enospc", mountPoint);
        try
        {
            using var t = Start(DaemonCache.Always, writeback: true, sharedDir: mountPoint);
            File.WriteAllBytes(t.Host("f"), Array.Empty<byte>());
            var other = OpenFile(t, "f", Libc.O_RDONLY);
            var writer = OpenFile(t, "f");
            Assert.Equal(Errno.OK, t.Fs.Truncate(writer.Node, 1 << 20, file: writer));
            Assert.Equal(Errno.OK, t.Fs.Mmap(writer, 0, 1 << 20, shared: true, writable: true, out var map));
            Assert.Equal(Errno.OK, t.Fs.Release(writer));
            Assert.Equal(Errno.OK, map!.Write(0, Pattern(1 << 20, 24)));
            // The host file system fills up, then the mapping's pages are written back at munmap: ENOSPC.
            FillUp(mountPoint);
            map.Unmap();
            Assert.Equal(Errno.ENOSPC, t.Fs.Fsync(other));
            Assert.Equal(Errno.OK, t.Fs.Fsync(other));
            // A file opened after the error was seen does not see it again; the close of the one that saw it is clean.
            var later = OpenFile(t, "f", Libc.O_RDONLY);
            Assert.Equal(Errno.OK, t.Fs.Fsync(later));
            Assert.Equal(Errno.OK, t.Fs.Release(later));
            Assert.Equal(Errno.OK, t.Fs.Release(other));
        }
        finally
        {
            ShellCommand.Run("umount", "-l", mountPoint);
            Directory.Delete(mountPoint);
        }
    }

    private static void FillUp(string dir)
    {
        using var filler = new FileStream(Path.Combine(dir, "filler"), FileMode.Create);
        var chunk = new byte[64 * 1024];
        try
        {
            while (true)
            {
                filler.Write(chunk);
                filler.Flush();
            }
        }
        catch (IOException)
        {
        }
    }

    [Fact]
    public void CopyFileRangeAndFallocateSeeDirtyPagesAndDropStaleOnes()
    {
        using var t = Start(DaemonCache.Always, writeback: true);
        File.WriteAllBytes(t.Host("src"), new byte[2 * Page]);
        File.WriteAllBytes(t.Host("dst"), Pattern(2 * Page, 26));
        var src = OpenFile(t, "src");
        var dst = OpenFile(t, "dst");
        Assert.Equal(Pattern(2 * Page, 26), ReadAll(t, dst, 2 * Page));
        Assert.Equal(Errno.OK, t.Fs.Write(src, "dirty"u8, 0, out _));
        Assert.Equal(Errno.OK, t.Fs.CopyFileRange(src, 0, dst, 0, 2 * Page, out long copied));
        Assert.Equal(2 * Page, copied);
        // The source's dirty page reached the daemon before the copy, and the destination's cached pages went.
        Assert.Equal("dirty"u8.ToArray(), File.ReadAllBytes(t.Host("dst")).AsSpan(0, 5).ToArray());
        Assert.Equal("dirty"u8.ToArray(), ReadAll(t, dst, 5));
        // A punched hole reads zeros through the cache too.
        const int punchHoleKeepSize = 0x02 | 0x01;
        Assert.Equal(Errno.OK, t.Fs.Fallocate(dst, punchHoleKeepSize, 0, Page));
        Assert.All(ReadAll(t, dst, Page), b => Assert.Equal(0, b));
        Assert.Equal(2 * Page, new FileInfo(t.Host("dst")).Length);
        Assert.Equal(Errno.OK, t.Fs.Release(src));
        Assert.Equal(Errno.OK, t.Fs.Release(dst));
    }

    // ---------------------------------------------------------------- lock owners, flush

    [Fact]
    public void DirectReadsAndWritesCarryTheCallersLockOwner()
    {
        using var t = Start(DaemonCache.None);
        File.WriteAllBytes(t.Host("f"), Pattern(Page, 25));
        var p1 = new FuseCaller(0, 0, 5001);
        var file = OpenFile(t, "f", Libc.O_RDWR, p1);
        Assert.Equal(Errno.OK, t.Fs.SetLock(file, new FileLockRange(FileLockRange.WriteLock, 0, 100), wait: false, p1));
        Assert.Equal(Errno.OK, t.Fs.Write(file, "owned"u8, 0, out int n, p1));
        Assert.Equal(5, n);
        var back = new byte[5];
        Assert.Equal(Errno.OK, t.Fs.Read(file, back, 0, out int read, p1));
        Assert.Equal("owned"u8.ToArray(), back);
        using var buffer = t.Fs.AllocateUserBuffer(Page);
        "buffered"u8.CopyTo(buffer.Span);
        Assert.Equal(Errno.OK, t.Fs.Write(file, buffer, 0, 8, 100, out int put, p1));
        Assert.Equal(8, put);
        Assert.Equal(Errno.OK, t.Fs.Read(file, buffer, 0, Page, 0, out int got, p1));
        Assert.Equal("buffered"u8.ToArray(), buffer.Span.Slice(100, 8).ToArray());
        Assert.Equal(Errno.OK, t.Fs.Release(file, p1));
        Assert.Equal("owned"u8.ToArray(), File.ReadAllBytes(t.Host("f")).AsSpan(0, 5).ToArray());
    }
}

/// <summary>Host commands a test needs (mount, umount).</summary>
internal static class ShellCommand
{
    public static void Run(string file, params string[] args)
    {
        var info = new System.Diagnostics.ProcessStartInfo(file) { RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args)
        {
            info.ArgumentList.Add(a);
        }
        using var p = System.Diagnostics.Process.Start(info)!;
        string err = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"{file} {string.Join(' ', args)}: {err}");
    }
}
