using System.Collections.Concurrent;
using Vhostfsd.FusePassthrough;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Xunit;

namespace Vhostfsd.GuestKernelShim.Tests;

/// <summary>The request-level side of the page cache, write-back caching, write-back errors, lock owners, FLUSH and
/// no-open mode (fs/fuse/file.c), checked against a scripted daemon that records every request: what each WRITE,
/// READ and FSYNC carries, which a real daemon would accept without showing.</summary>
public class PageCacheSemanticsTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);
    private const int Page = FuseConn.PageSize;
    private const FuseInitFlags WithWriteback = FuseConnOptions.DefaultFlags | FuseInitFlags.WritebackCache;

    private static MountOptions Cached(bool writeback = false, TimeSpan? dirtyExpire = null) =>
        new() { CacheSize = 1 << 20, Writeback = writeback, DirtyExpire = dirtyExpire ?? TimeSpan.FromSeconds(30) };

    private static (MiniFs Fs, FakeMount Mount) MountWithFile(byte[] contents, FuseInitFlags? granted = null, MountOptions? options = null,
        Func<SeenRequest, FakeAnswer?>? overrides = null, uint mode = FakeMount.File644)
    {
        var mini = new MiniFs { Override = overrides };
        mini.Add("f", 5, mode);
        mini.SetContents(5, contents);
        return (mini, new FakeMount(mini.Handle, granted, mountOptions: options));
    }

    // ---------------------------------------------------------------- options and defaults

    [Fact]
    public void MountOptionsParseTheCacheOptionsAndTheDefaultHasNoCache()
    {
        var parsed = MountOptions.Parse("cache_size=64M,writeback,dirty_expire_ms=250");
        Assert.Equal(64L << 20, parsed.CacheSize);
        Assert.Equal(16384, parsed.CachePages);
        Assert.True(parsed.Writeback);
        Assert.Equal(TimeSpan.FromMilliseconds(250), parsed.DirtyExpire);
        Assert.Equal(4096L * 100, MountOptions.Parse("cache_size=400K").CacheSize);
        Assert.Throws<ArgumentException>(() => MountOptions.Parse("writeback"));
        Assert.Throws<ArgumentException>(() => MountOptions.Parse("cache_size=4K"));
        Assert.Throws<ArgumentException>(() => MountOptions.Parse("cache_size=lots"));
        Assert.Equal(0, MountOptions.Parse(null).CacheSize);

        // Without cache_size: no page cache, WRITEBACK_CACHE not asked for, reads go to the daemon every time.
        var (_, m) = MountWithFile(new byte[Page], granted: WithWriteback);
        using (m)
        {
            Assert.Null(m.Fs.PageCache);
            Assert.False(m.Fs.Conn.Has(FuseInitFlags.WritebackCache));
            Assert.Equal(0ul, (ulong)(m.Fs.Conn.RequestedFlags & FuseInitFlags.WritebackCache));
            Assert.Equal(Errno.OK, m.Fs.Walk("f", out var node));
            Assert.Equal(Errno.OK, m.Fs.Open(node, Libc.O_RDWR, out var file));
            Assert.True(file!.IsDirectIo);
            var buffer = new byte[100];
            Assert.Equal(Errno.OK, m.Fs.Read(file, buffer, 0, out _));
            Assert.Equal(Errno.OK, m.Fs.Read(file, buffer, 0, out _));
            Assert.Equal(2, m.Count(FuseOpcode.Read));
            Assert.Equal(Errno.ENODEV, m.Fs.Mmap(file, 0, Page, shared: false, writable: false, out _));
            m.Fs.Release(file);
        }
    }

    [Fact]
    public void WritebackIsAskedForOnlyWithTheOptionAndUsedOnlyWhenGranted()
    {
        var (_, asked) = MountWithFile(new byte[Page], granted: FuseConnOptions.DefaultFlags, options: Cached(writeback: true));
        using (asked)
        {
            Assert.True((asked.Fs.Conn.RequestedFlags & FuseInitFlags.WritebackCache) != 0);
            Assert.False(asked.Fs.WritebackCache); // not granted: write-through
            Assert.Equal(Errno.OK, asked.Fs.Walk("f", out var node));
            Assert.Equal(Errno.OK, asked.Fs.Open(node, Libc.O_RDWR, out var file));
            Assert.Equal(Errno.OK, asked.Fs.Write(file!, "through"u8, 0, out _));
            Assert.Equal(1, asked.Count(FuseOpcode.Write));
            asked.Fs.Release(file!);
        }
    }

    // ---------------------------------------------------------------- what write-back sends

    [Fact]
    public void WritebackSendsWriteCacheWithTheOpenersCredentialsLockOwnerAndHandle()
    {
        var (mini, m) = MountWithFile(new byte[2 * Page], granted: WithWriteback, options: Cached(writeback: true), mode: 0x81B6);
        using (m)
        {
            var opener = new FuseCaller(1000, 1001, 777);
            Assert.Equal(Errno.OK, m.Fs.Walk("f", out var node));
            mini.NextFh = 31;
            Assert.Equal(Errno.OK, m.Fs.Open(node, Libc.O_RDWR, out var writer, opener));
            mini.NextFh = 32;
            Assert.Equal(Errno.OK, m.Fs.Open(node, Libc.O_RDONLY, out var reader, FuseCaller.Root));
            Assert.Equal(Errno.OK, m.Fs.Write(writer!, new byte[2 * Page], 0, out _, opener));
            Assert.Empty(m.Of(FuseOpcode.Write));
            // Another process's fsync on another file makes the pages go: still as the opener of the writable file.
            Assert.Equal(Errno.OK, m.Fs.Fsync(reader!, caller: new FuseCaller(0, 0, 9)));
            var write = Assert.Single(m.Of(FuseOpcode.Write));
            var arg = write.Arg<FuseWriteIn>();
            Assert.Equal(31ul, arg.Fh);
            Assert.Equal((uint)(2 * Page), arg.Length);
            Assert.Equal(FuseWriteFlags.Cache | FuseWriteFlags.LockOwner | FuseWriteFlags.KillSuidgid, (FuseWriteFlags)arg.WriteFlags);
            Assert.Equal((1000u, 1001u, 777u), (write.Header.Uid, write.Header.Gid, write.Header.Pid));
            // The FSYNC itself is the caller's, on its own handle.
            var fsync = Assert.Single(m.Of(FuseOpcode.Fsync));
            Assert.Equal(32ul, fsync.Arg<FuseFsyncIn>().Fh);
            Assert.Equal(9u, fsync.Header.Pid);
            m.Fs.Release(reader!);
            m.Fs.Release(writer!, opener);
            // The lock owner is the opener's: the one its close puts in FLUSH.
            var flush = m.Of(FuseOpcode.Flush).Single(f => f.Header.Pid == 777);
            Assert.Equal(flush.Arg<FuseFlushIn>().LockOwner, arg.LockOwner);
        }
    }

    [Fact]
    public void TheFlusherWritesBackWithoutAnyCaller()
    {
        var (mini, m) = MountWithFile(new byte[Page], granted: WithWriteback, options: Cached(writeback: true, dirtyExpire: TimeSpan.FromMilliseconds(100)),
            mode: 0x81B6);
        using (m)
        {
            var opener = new FuseCaller(1000, 1000, 4321);
            Assert.Equal(Errno.OK, m.Fs.Walk("f", out var node));
            Assert.Equal(Errno.OK, m.Fs.Open(node, Libc.O_WRONLY, out var file, opener));
            Assert.Equal(Errno.OK, m.Fs.Write(file!, "late"u8, 0, out _, opener));
            Assert.True(SpinWait.SpinUntil(() => m.Count(FuseOpcode.Write) == 1, Timeout));
            Assert.Equal(4321u, m.Of(FuseOpcode.Write)[0].Header.Pid);
            Assert.Equal("late"u8.ToArray(), mini.Contents[5].AsSpan(0, 4).ToArray());
            Assert.Equal(1, m.Fs.PageCache!.PagesWrittenBack(WritebackReason.Timer));
            m.Fs.Release(file!, opener);
        }
    }

    [Fact]
    public void AStaleNodeIsNeverWrittenBack()
    {
        var mini = new MiniFs();
        mini.Add("f", 5, FakeMount.File644, generation: 1);
        mini.SetContents(5, new byte[Page]);
        using var m = new FakeMount(mini.Handle, WithWriteback, mountOptions: Cached(writeback: true));
        Assert.Equal(Errno.OK, m.Fs.Walk("f", out var old));
        Assert.Equal(Errno.OK, m.Fs.Open(old, Libc.O_RDWR, out var file));
        Assert.Equal(Errno.OK, m.Fs.Write(file!, "old data"u8, 0, out _));
        // The daemon hands node 5 out again for another file: the dirty pages belong to a file that is gone.
        mini.Names.TryRemove("f", out _);
        mini.Add("g", 5, FakeMount.File644, generation: 2);
        Assert.Equal(Errno.OK, m.Fs.Walk("g", out var fresh));
        Assert.True(old.IsStale);
        m.Fs.Sync();
        Assert.Empty(m.Of(FuseOpcode.Write));
        Assert.Equal(0, m.Fs.PageCache!.DirtyPages);
        Assert.Equal(Errno.ESTALE, m.Fs.Release(file!));
    }

    // ---------------------------------------------------------------- write-back errors

    [Fact]
    public void AWritebackErrorIsReportedOnceToEachFileOpenBeforeItAndToTheFirstOpenedAfterItIfUnseen()
    {
        bool fail = false;
        var (_, m) = MountWithFile(new byte[Page], WithWriteback, Cached(writeback: true),
            r => r.Opcode == FuseOpcode.Write && Volatile.Read(ref fail) ? FakeAnswer.Fail(Errno.EIO) : null);
        using (m)
        {
            Assert.Equal(Errno.OK, m.Fs.Walk("f", out var node));
            Assert.Equal(Errno.OK, m.Fs.Open(node, Libc.O_RDWR, out var a));
            Assert.Equal(Errno.OK, m.Fs.Open(node, Libc.O_RDONLY, out var b));
            Volatile.Write(ref fail, true);
            Assert.Equal(Errno.OK, m.Fs.Write(a!, "x"u8, 0, out _));
            m.Fs.Sync(); // write-back fails with nobody to tell yet
            Assert.Equal(1, m.Count(FuseOpcode.Write));
            // Nobody saw it: a file opened now still reports it.
            Assert.Equal(Errno.OK, m.Fs.Open(node, Libc.O_RDONLY, out var c));
            Assert.Equal(Errno.EIO, m.Fs.Fsync(c!));
            Assert.Equal(Errno.OK, m.Fs.Fsync(c!));
            // Files open before it each see it once, at fsync or at close.
            Assert.Equal(Errno.EIO, m.Fs.Fsync(b!));
            Assert.Equal(Errno.OK, m.Fs.Fsync(b!));
            Assert.Equal(Errno.EIO, m.Fs.Release(a!));
            // Once seen, a newly opened file starts past it.
            Assert.Equal(Errno.OK, m.Fs.Open(node, Libc.O_RDONLY, out var d));
            Assert.Equal(Errno.OK, m.Fs.Fsync(d!));
            // A second failure is a new error for everyone.
            Assert.Equal(Errno.OK, m.Fs.Open(node, Libc.O_RDWR, out var e));
            Assert.Equal(Errno.OK, m.Fs.Write(e!, "y"u8, 0, out _));
            Assert.Equal(Errno.EIO, m.Fs.Fsync(e!));
            Assert.Equal(Errno.EIO, m.Fs.Fsync(d!));
            Assert.Equal(Errno.OK, m.Fs.Fsync(d!));
            // An fsync that reports a write-back error sends no FSYNC.
            Assert.Equal(4, m.Count(FuseOpcode.Fsync));
            foreach (var f in new[] { b, c, d, e })
            {
                m.Fs.Release(f!);
            }
        }
    }

    [Fact]
    public void ErrSeqReportsAnErrorOncePerCursor()
    {
        int value = 0;
        int a = ErrSeq.Sample(ref value);
        ErrSeq.Set(ref value, 5);
        int b = ErrSeq.Sample(ref value); // unseen: starts at 0 and will report it
        Assert.Equal(0, b);
        Assert.Equal(5, ErrSeq.CheckAndAdvance(ref value, ref a));
        Assert.Equal(0, ErrSeq.CheckAndAdvance(ref value, ref a));
        Assert.Equal(5, ErrSeq.CheckAndAdvance(ref value, ref b));
        int c = ErrSeq.Sample(ref value); // seen: starts past it
        Assert.Equal(0, ErrSeq.CheckAndAdvance(ref value, ref c));
        // The same error again before anybody looked is one error; after a look it is a new one.
        ErrSeq.Set(ref value, 28);
        ErrSeq.Set(ref value, 28);
        Assert.Equal(28, ErrSeq.CheckAndAdvance(ref value, ref c));
        ErrSeq.Set(ref value, 28);
        Assert.Equal(28, ErrSeq.CheckAndAdvance(ref value, ref c));
        Assert.Equal(28, ErrSeq.CheckAndAdvance(ref value, ref a));
        Assert.Equal(0, ErrSeq.CheckAndAdvance(ref value, ref a));
    }

    // ---------------------------------------------------------------- lock owners, FLUSH, no-open mode

    [Fact]
    public void DirectIoCarriesTheCallersLockOwnerAndCachedReadsDoNot()
    {
        var (_, m) = MountWithFile(new byte[4 * Page], options: Cached(),
            overrides: r => r.Opcode == FuseOpcode.Open ? FakeMount.Open(7, FuseOpenOutFlags.DirectIo) : null);
        using (m)
        {
            var p = new FuseCaller(0, 0, 6006);
            Assert.Equal(Errno.OK, m.Fs.Walk("f", out var node));
            Assert.Equal(Errno.OK, m.Fs.Open(node, Libc.O_RDWR, out var direct, p));
            Assert.True(direct!.IsDirectIo);
            Assert.Equal(Errno.OK, m.Fs.Read(direct, new byte[10], 0, out _, p));
            Assert.Equal(Errno.OK, m.Fs.Write(direct, new byte[10], 0, out _, p));
            using var buffer = m.Fs.AllocateUserBuffer(Page);
            Assert.Equal(Errno.OK, m.Fs.Read(direct, buffer, 0, 10, 0, out _, p));
            Assert.Equal(Errno.OK, m.Fs.Write(direct, buffer, 0, 10, 0, out _, p));
            Assert.Equal(Errno.OK, m.Fs.Release(direct, p));
            // One process, one owner: the one its close puts in FLUSH.
            ulong owner = Assert.Single(m.Of(FuseOpcode.Flush)).Arg<FuseFlushIn>().LockOwner;
            Assert.NotEqual(0ul, owner);
            Assert.All(m.Of(FuseOpcode.Read), r =>
            {
                Assert.Equal(FuseReadFlags.LockOwner, (FuseReadFlags)r.Arg<FuseReadIn>().ReadFlags);
                Assert.Equal(owner, r.Arg<FuseReadIn>().LockOwner);
            });
            Assert.All(m.Of(FuseOpcode.Write), w =>
            {
                Assert.Equal(FuseWriteFlags.LockOwner, (FuseWriteFlags)w.Arg<FuseWriteIn>().WriteFlags & FuseWriteFlags.LockOwner);
                Assert.Equal(owner, w.Arg<FuseWriteIn>().LockOwner);
            });
            Assert.Equal(2, m.Count(FuseOpcode.Read));
            Assert.Equal(2, m.Count(FuseOpcode.Write));
        }

        // Through the page cache a READ fills pages for everyone: no owner.
        var (_, cached) = MountWithFile(new byte[4 * Page], options: Cached());
        using (cached)
        {
            Assert.Equal(Errno.OK, cached.Fs.Walk("f", out var node));
            Assert.Equal(Errno.OK, cached.Fs.Open(node, Libc.O_RDONLY, out var file));
            Assert.False(file!.IsDirectIo);
            Assert.Equal(Errno.OK, cached.Fs.Read(file, new byte[10], 0, out _));
            var read = Assert.Single(cached.Of(FuseOpcode.Read)).Arg<FuseReadIn>();
            Assert.Equal(0u, read.ReadFlags);
            Assert.Equal((uint)(4 * Page), read.Length); // read-ahead from offset 0, up to the end of the file
            cached.Fs.Release(file);
        }
    }

    [Fact]
    public void CloseReturnsTheFlushErrorAndStillReleases()
    {
        var (_, m) = MountWithFile(new byte[Page], overrides: r => r.Opcode == FuseOpcode.Flush ? FakeAnswer.Fail(Errno.EDQUOT) : null);
        using (m)
        {
            Assert.Equal(Errno.OK, m.Fs.Walk("f", out var node));
            Assert.Equal(Errno.OK, m.Fs.Open(node, Libc.O_RDWR, out var file));
            Assert.Equal(Errno.EDQUOT, m.Fs.Release(file!));
            Assert.True(m.Fs.Conn.Quiesce(Timeout));
            Assert.Equal(1, m.Count(FuseOpcode.Release));
            Assert.Equal(0, node.OpenFiles);
            // FLUSH errors are not remembered: the next close is clean unless the daemon fails it again.
            Assert.Equal(Errno.OK, m.Fs.Open(node, Libc.O_RDONLY, out var again));
            Assert.Equal(Errno.EDQUOT, m.Fs.Release(again!));
        }
    }

    [Fact]
    public void InNoOpenModeFsyncAndWritebackUseHandleZero()
    {
        var (mini, m) = MountWithFile(new byte[Page], WithWriteback, Cached(writeback: true),
            r => r.Opcode == FuseOpcode.Open ? FakeAnswer.Fail(Errno.ENOSYS) : null);
        using (m)
        {
            Assert.Equal(Errno.OK, m.Fs.Walk("f", out var node));
            Assert.Equal(Errno.OK, m.Fs.Open(node, Libc.O_RDWR, out var file));
            Assert.True(file!.NoRelease);
            Assert.Equal(Errno.OK, m.Fs.Write(file, "zero"u8, 0, out _));
            Assert.Equal(Errno.OK, m.Fs.Fsync(file));
            Assert.Equal(0ul, Assert.Single(m.Of(FuseOpcode.Write)).Arg<FuseWriteIn>().Fh);
            Assert.Equal(0ul, Assert.Single(m.Of(FuseOpcode.Fsync)).Arg<FuseFsyncIn>().Fh);
            Assert.Equal("zero"u8.ToArray(), mini.Contents[5].AsSpan(0, 4).ToArray());
            Assert.Equal(Errno.OK, m.Fs.Release(file));
            Assert.True(m.Fs.Conn.Quiesce(Timeout));
            Assert.Equal(0, m.Count(FuseOpcode.Release));
        }
    }

    // ---------------------------------------------------------------- invalidation rules

    [Fact]
    public void WithOnlyExplicitInvalDataASizeChangeTruncatesButKeepsTheRest()
    {
        var granted = (FuseConnOptions.DefaultFlags & ~FuseInitFlags.AutoInvalData) | FuseInitFlags.ExplicitInvalData;
        var (mini, m) = MountWithFile(new byte[3 * Page], granted, Cached());
        using (m)
        {
            Assert.Equal(Errno.OK, m.Fs.Walk("f", out var node));
            Assert.Equal(Errno.OK, m.Fs.Open(node, Libc.O_RDONLY, out var file));
            Assert.Equal(Errno.OK, m.Fs.Read(file!, new byte[3 * Page], 0, out _));
            Assert.Equal(3, m.Fs.PageCache!.PagesOf(node));
            mini.SetContents(5, new byte[Page + 10]);
            var attr = mini.Attrs[5];
            attr.Mtime += 100;
            mini.Attrs[5] = attr;
            Assert.Equal(Errno.OK, m.Fs.GetAttr(node, out _, force: true));
            // Page 0 stays (no AUTO_INVAL_DATA, no full invalidation); pages past the new size go.
            Assert.True(m.Fs.PageCache.Contains(node, 0));
            Assert.True(m.Fs.PageCache.Contains(node, 1));
            Assert.False(m.Fs.PageCache.Contains(node, 2));
            m.Fs.Release(file!);
        }
    }

    [Fact]
    public void OTruncDropsEveryPageEvenWithKeepCache()
    {
        var (mini, m) = MountWithFile(new byte[2 * Page], options: Cached(),
            overrides: r => r.Opcode == FuseOpcode.Open ? FakeMount.Open(7, FuseOpenOutFlags.KeepCache) : null);
        using (m)
        {
            Assert.Equal(Errno.OK, m.Fs.Walk("f", out var node));
            Assert.Equal(Errno.OK, m.Fs.Open(node, Libc.O_RDONLY, out var reader));
            Assert.Equal(Errno.OK, m.Fs.Read(reader!, new byte[2 * Page], 0, out _));
            Assert.Equal(2, m.Fs.PageCache!.PagesOf(node));
            mini.SetContents(5, Array.Empty<byte>());
            Assert.Equal(Errno.OK, m.Fs.Open(node, Libc.O_RDWR | Libc.O_TRUNC, out var truncating));
            Assert.Equal(0, m.Fs.PageCache.PagesOf(node));
            Assert.Equal(Errno.OK, m.Fs.Read(reader!, new byte[10], 0, out int read));
            Assert.Equal(0, read);
            m.Fs.Release(reader!);
            m.Fs.Release(truncating!);
        }
    }

    // ---------------------------------------------------------------- many threads

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ThreadsWritingReadingMappingAndSyncingOneFileEndWithEveryByteOnTheHost(bool writeback)
    {
        using var mount = new ShimInProcessMount(dir => new PassthroughOptions { SharedDir = dir, Cache = CachePolicy.Always, Writeback = writeback },
            new MountOptions { CacheSize = 64 * Page, Writeback = writeback, DirtyExpire = TimeSpan.FromMilliseconds(20) });
        var fs = mount.Fs;
        Assert.Equal(writeback, fs.WritebackCache);
        const int threads = 6;
        const int region = 32 * Page;
        File.WriteAllBytes(mount.HostPath("f"), new byte[threads * region]);
        Assert.Equal(Errno.OK, fs.Walk("f", out var node));
        var expected = new byte[threads * region];
        var failures = new ConcurrentQueue<string>();
        var workers = Enumerable.Range(0, threads).Select(i => new Thread(() =>
        {
            var random = new Random(i);
            var rc = fs.Open(node, Libc.O_RDWR, out var file);
            FuseMapping? map = null;
            if (rc != Errno.OK || (rc = fs.Mmap(file!, (long)i * region, region, shared: true, writable: true, out map)) != Errno.OK)
            {
                failures.Enqueue($"thread {i}: open or mmap: {rc}");
                return;
            }
            var chunk = new byte[3000];
            var check = new byte[3000];
            for (int k = 0; k < 300; k++)
            {
                random.NextBytes(chunk);
                int at = random.Next(region - chunk.Length);
                long fileAt = (long)i * region + at;
                bool viaMap = k % 3 == 0;
                int written = chunk.Length;
                rc = viaMap ? map!.Write(at, chunk) : fs.Write(file!, chunk, fileAt, out written);
                chunk.CopyTo(expected, fileAt);
                // Whatever path wrote it, both paths read it back.
                string what = $"thread {i} step {k}: {(viaMap ? "map.Write" : "fs.Write")} of {chunk.Length} at file offset {fileAt}";
                if (rc != Errno.OK || written != chunk.Length)
                {
                    failures.Enqueue($"{what} returned {rc} having written {written}");
                    continue;
                }
                if ((rc = map!.Read(at, check)) != Errno.OK)
                {
                    failures.Enqueue($"{what}, then map.Read returned {rc}");
                }
                else if (Mismatch(check, chunk) is int bad and >= 0)
                {
                    failures.Enqueue($"{what}, then map.Read differs from byte {bad} (file offset {fileAt + bad}, page {(fileAt + bad) / Page})");
                }
                if ((rc = fs.Read(file!, check, fileAt, out int got)) != Errno.OK || got != check.Length)
                {
                    failures.Enqueue($"{what}, then fs.Read returned {rc} having read {got}");
                }
                else if (Mismatch(check, chunk) is int bad2 and >= 0)
                {
                    failures.Enqueue($"{what}, then fs.Read differs from byte {bad2} (file offset {fileAt + bad2}, page {(fileAt + bad2) / Page})");
                }
                if (k % 50 == 0 && (rc = k % 100 == 0 ? map!.Msync() : fs.Fsync(file!)) != Errno.OK)
                {
                    failures.Enqueue($"thread {i} step {k}: {(k % 100 == 0 ? "msync" : "fsync")} returned {rc}");
                }
            }
            map!.Unmap();
            if ((rc = fs.Release(file!)) != Errno.OK)
            {
                failures.Enqueue($"thread {i}: release returned {rc}");
            }
        })).ToArray();
        foreach (var worker in workers)
        {
            worker.Start();
        }
        foreach (var worker in workers)
        {
            Assert.True(worker.Join(TimeSpan.FromSeconds(60)), "a worker hangs");
        }
        Assert.True(failures.IsEmpty, string.Join("\n", failures));
        Assert.Equal(0, fs.PageCache!.DirtyPages);
        Assert.Equal(expected, File.ReadAllBytes(mount.HostPath("f")));
    }

    /// <summary>The first position where <paramref name="actual"/> differs from <paramref name="expected"/>, or -1.</summary>
    private static int Mismatch(ReadOnlySpan<byte> actual, ReadOnlySpan<byte> expected)
    {
        int common = actual.CommonPrefixLength(expected);
        return common == expected.Length && actual.Length == expected.Length ? -1 : common;
    }
}
