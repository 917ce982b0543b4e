using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Xunit;

namespace Vhostfsd.Virtqueue.Tests;

public unsafe class GuestMemoryTests
{
    private const ulong Page = 4096;

    [Fact]
    public void TranslatesInsideARegionToTheMappedBytes()
    {
        using var mem = QueueTestMemory.Create((0x10000, 4 * Page));
        mem.Write(0x10000 + 100, [1, 2, 3]);
        using var view = mem.Memory.Acquire();
        Assert.True(view.TryTranslate(0x10000 + 100, 3, out nint host));
        Assert.Equal(new byte[] { 1, 2, 3 }, new ReadOnlySpan<byte>((void*)host, 3).ToArray());
        Assert.True(view.TryTranslate(0x10000, 4 * Page, out nint start));
        Assert.Equal(host - 100, start);
        Assert.True(view.TryTranslateUser(0x10000 + 100 + QueueTestMemory.UserOffset, 3, out nint viaUser));
        Assert.Equal(host, viaUser);
        Assert.True(view.TryGuestPhysToUser(0x10000 + 7, out ulong user));
        Assert.Equal(0x10000 + 7 + QueueTestMemory.UserOffset, user);
    }

    [Theory]
    [InlineData(0x0UL, 1UL)]                 // below the region
    [InlineData(0xFFFFUL, 2UL)]              // starts below, ends inside
    [InlineData(0x14000UL, 1UL)]             // first byte past the end
    [InlineData(0x13FFFUL, 2UL)]             // runs one byte past the end
    [InlineData(0x10000UL, 0x4001UL)]        // longer than the region
    [InlineData(0x10010UL, ulong.MaxValue)]  // length overflows the address space
    [InlineData(ulong.MaxValue, 1UL)]        // address at the top
    public void RefusesRangesOutsideMemory(ulong gpa, ulong length)
    {
        using var mem = QueueTestMemory.Create((0x10000, 4 * Page));
        using var view = mem.Memory.Acquire();
        Assert.False(view.TryTranslate(gpa, length, out nint host));
        Assert.Equal(0, host);
        Assert.Equal(-1, view.TryTranslateSplit(gpa, length, stackalloc IoVec[4]));
        Assert.False(view.TryTranslateUser(gpa + QueueTestMemory.UserOffset, length, out _));
    }

    [Fact]
    public void ZeroLengthNeedsAnAddressInsideARegion()
    {
        using var mem = QueueTestMemory.Create((0x10000, Page));
        using var view = mem.Memory.Acquire();
        Assert.True(view.TryTranslate(0x10000 + 5, 0, out _));
        Assert.False(view.TryTranslate(0x20000, 0, out _));
        Assert.Equal(0, view.TryTranslateSplit(0x10000, 0, stackalloc IoVec[1]));
        Assert.Equal(-1, view.TryTranslateSplit(0x20000, 0, stackalloc IoVec[1]));
    }

    [Fact]
    public void SingleTranslationDoesNotCrossIntoAnAdjacentRegionButSplitDoes()
    {
        using var mem = QueueTestMemory.Create((0, Page), (Page, 2 * Page));
        mem.Write(Page - 2, [0xA1, 0xA2]);
        mem.Write(Page, [0xB1, 0xB2]);
        using var view = mem.Memory.Acquire();
        Assert.False(view.TryTranslate(Page - 2, 4, out _));

        Span<IoVec> iov = stackalloc IoVec[4];
        Assert.Equal(2, view.TryTranslateSplit(Page - 2, 4, iov));
        Assert.Equal(2u, (uint)iov[0].Length);
        Assert.Equal(2u, (uint)iov[1].Length);
        Assert.Equal(new byte[] { 0xA1, 0xA2 }, new ReadOnlySpan<byte>(iov[0].Base, 2).ToArray());
        Assert.Equal(new byte[] { 0xB1, 0xB2 }, new ReadOnlySpan<byte>(iov[1].Base, 2).ToArray());
        Assert.Equal(2, view.CountSegments(Page - 2, 4));

        // The whole of both regions.
        Assert.Equal(2, view.TryTranslateSplit(0, 3 * Page, iov));
        Assert.Equal(Page, (ulong)iov[0].Length);
        Assert.Equal(2 * Page, (ulong)iov[1].Length);
        // Too small an output array.
        Assert.Equal(-1, view.TryTranslateSplit(Page - 2, 4, iov[..1]));
    }

    [Fact]
    public void SplitStopsAtAGap()
    {
        using var mem = QueueTestMemory.Create((0, Page), (2 * Page, Page));
        using var view = mem.Memory.Acquire();
        Span<IoVec> iov = stackalloc IoVec[4];
        Assert.Equal(-1, view.TryTranslateSplit(Page - 1, 2, iov));
        Assert.Equal(-1, view.TryTranslateSplit(Page, 1, iov));
        Assert.Equal(1, view.TryTranslateSplit(2 * Page, Page, iov));
        Assert.Equal(-1, view.TryTranslateSplit(2 * Page, Page + 1, iov));
    }

    [Fact]
    public void FindsEachOfManyRegions()
    {
        var layout = new (ulong, ulong)[16];
        for (int i = 0; i < layout.Length; i++)
        {
            // Out of order on purpose, with gaps.
            layout[i] = ((ulong)((i * 7) % 16) * 4 * Page, Page);
        }
        using var mem = QueueTestMemory.Create(layout);
        Assert.Equal(16, mem.Memory.RegionCount);
        using var view = mem.Memory.Acquire();
        for (int i = 0; i < 16; i++)
        {
            ulong gpa = (ulong)i * 4 * Page;
            Assert.True(view.TryTranslate(gpa + 10, Page - 10, out _));
            Assert.False(view.TryTranslate(gpa + Page, 1, out _));
            Assert.False(view.TryTranslate(gpa + 10, Page, out _));
        }
        var regions = mem.Memory.GetRegions();
        for (int i = 1; i < regions.Length; i++)
        {
            Assert.True(regions[i - 1].GuestPhysAddr < regions[i].GuestPhysAddr);
        }
    }

    [Fact]
    public void AddRegionRejectsOverlapInGuestOrUserAddresses()
    {
        using var mem = QueueTestMemory.Create((0x10000, 4 * Page));
        using var fd = MemFd.Create("overlap", 4 * Page);

        using var gpaOverlap = GuestMemoryRegion.Map(fd, 0, Page, 0x13000, 0x1_0000_0000);
        var error = Assert.Throws<ArgumentException>(() => mem.Memory.AddRegion(gpaOverlap));
        Assert.Contains("overlaps", error.Message);

        using var userOverlap = GuestMemoryRegion.Map(fd, 0, Page, 0x100000, QueueTestMemory.UserOffset + 0x10000 + Page);
        Assert.False(mem.Memory.TryAddRegion(userOverlap, out string? why));
        Assert.Contains("overlaps", why);
        Assert.Equal(1, mem.Memory.RegionCount);

        // Adjacent is fine.
        var adjacent = GuestMemoryRegion.Map(fd, 0, Page, 0x14000, 0x1_0000_0000);
        mem.Memory.AddRegion(adjacent);
        Assert.Equal(2, mem.Memory.RegionCount);
        // The rejected regions were not taken over: their owner still disposes them (the usings above).
        Assert.False(gpaOverlap.IsUnmapped);
    }

    [Fact]
    public void RemoveRegionMatchesAddressAndSize()
    {
        using var mem = QueueTestMemory.Create((0, Page), (Page, Page));
        Assert.False(mem.Memory.RemoveRegion(0, 2 * Page));
        Assert.False(mem.Memory.RemoveRegion(0x100, Page));
        Assert.True(mem.Memory.RemoveRegion(Page, Page));
        Assert.False(mem.Memory.RemoveRegion(Page, Page));
        Assert.Equal(1, mem.Memory.RegionCount);
        using var view = mem.Memory.Acquire();
        Assert.False(view.TryTranslate(Page, 1, out _));
        Assert.True(view.TryTranslate(0, 1, out _));
    }

    [Fact]
    public void RemovedRegionStaysMappedUntilTheLastViewIsReleased()
    {
        using var mem = QueueTestMemory.Create((0, Page), (Page, Page));
        var region = mem.Memory.GetRegions()[1];
        var held = mem.Memory.Acquire();
        Assert.True(held.TryTranslate(Page + 8, 8, out nint host));

        Assert.True(mem.Memory.RemoveRegion(Page, Page));
        Assert.False(region.IsUnmapped);
        // New views no longer see it...
        using (var fresh = mem.Memory.Acquire())
        {
            Assert.False(fresh.TryTranslate(Page + 8, 8, out _));
        }
        // ...but the held one still reads and writes it (a fault here would crash the test host).
        *(long*)host = 0x1122334455667788;
        Assert.Equal(0x1122334455667788, *(long*)host);
        Assert.True(held.TryTranslate(Page + 8, 8, out nint again));
        Assert.Equal(host, again);

        held.Dispose();
        Assert.True(region.IsUnmapped);
        // The bytes live on in the memfd: a region mapped again shows them.
        mem.Memory.AddRegion(mem.MapRegionAgain(Page));
        Assert.Equal(0x1122334455667788, mem.ReadObj<long>(Page + 8));
    }

    [Fact]
    public void ReplaceAllSwapsTheSetAndKeepsHeldViewsValid()
    {
        using var mem = QueueTestMemory.Create((0, Page), (Page, Page));
        var old = mem.Memory.GetRegions();
        var held = mem.Memory.Acquire();
        using var fd = MemFd.Create("replace", 2 * Page);
        var a = GuestMemoryRegion.Map(fd, 0, Page, 0x100000, 0x2_0000_0000);
        var b = GuestMemoryRegion.Map(fd, Page, Page, 0x101000, 0x2_0000_1000);
        mem.Memory.ReplaceAll([a, b]);
        Assert.Equal(2, mem.Memory.RegionCount);
        Assert.False(old[0].IsUnmapped);
        using (var fresh = mem.Memory.Acquire())
        {
            Assert.False(fresh.TryTranslate(0, 1, out _));
            Assert.Equal(2, fresh.TryTranslateSplit(0x100000, 2 * Page, stackalloc IoVec[2]));
        }
        Assert.True(held.TryTranslate(0, Page, out _));
        held.Dispose();
        Assert.True(old[0].IsUnmapped);
        Assert.True(old[1].IsUnmapped);
        Assert.False(a.IsUnmapped);
    }

    [Fact]
    public void ReplaceAllWithOverlapChangesNothing()
    {
        using var mem = QueueTestMemory.Create((0, Page));
        using var fd = MemFd.Create("replace", 2 * Page);
        using var a = GuestMemoryRegion.Map(fd, 0, 2 * Page, 0x100000, 0x2_0000_0000);
        using var b = GuestMemoryRegion.Map(fd, Page, Page, 0x101000, 0x3_0000_0000);
        Assert.Throws<ArgumentException>(() => mem.Memory.ReplaceAll([a, b]));
        Assert.Equal(1, mem.Memory.RegionCount);
        using var view = mem.Memory.Acquire();
        Assert.True(view.TryTranslate(0, Page, out _));
        Assert.False(view.TryTranslate(0x100000, 1, out _));
    }

    [Fact]
    public void DisposedMemoryGivesEmptyViewsAndUnmapsAfterTheLastView()
    {
        var mem = QueueTestMemory.Create((0, Page));
        var region = mem.Memory.GetRegions()[0];
        var held = mem.Memory.Acquire();
        mem.Memory.Dispose();
        Assert.False(region.IsUnmapped);
        using (var after = mem.Memory.Acquire())
        {
            Assert.False(after.TryTranslate(0, 1, out _));
        }
        Assert.Throws<ObjectDisposedException>(() => mem.Memory.AddRegion(GuestMemoryRegion.FromHostMemory(1, 1, 0, 0)));
        Assert.True(held.TryTranslate(0, Page, out _));
        held.Dispose();
        Assert.True(region.IsUnmapped);
        mem.Dispose();
    }

    [Fact]
    public void AViewDisposedTwiceIsReportedInsteadOfHangingAcquire()
    {
        var mem = QueueTestMemory.Create((0, Page));
        var view = mem.Memory.Acquire();
        view.Dispose();
        view.Dispose();
        Assert.Throws<InvalidOperationException>(() => mem.Memory.Acquire());
        Assert.Throws<InvalidOperationException>(() => mem.Memory.Dispose());
        mem.Fd.Dispose();
    }

    [Fact]
    public void MapHonoursAnOffsetThatIsNotPageAligned()
    {
        using var fd = MemFd.Create("offset", 4 * Page);
        using var whole = MemoryMapping.MapShared(fd.Fd, 4 * Page, 0);
        for (int i = 0; i < (int)(4 * Page); i++)
        {
            ((byte*)whole.Address)[i] = (byte)(i * 13);
        }
        using var region = GuestMemoryRegion.Map(fd, Page + 100, Page, 0x5000, 0x9000);
        Assert.Equal(Page, region.Size);
        Assert.Equal(unchecked((byte)((Page + 100) * 13)), *(byte*)region.HostAddress);
        Assert.Equal(unchecked((byte)((2 * Page + 99) * 13)), ((byte*)region.HostAddress)[Page - 1]);
    }

    [Fact]
    public void MapRejectsEmptyAndOverflowingRanges()
    {
        using var fd = MemFd.Create("bad", Page);
        Assert.Throws<ArgumentException>(() => GuestMemoryRegion.Map(fd, 0, 0, 0, 0));
        Assert.Throws<ArgumentException>(() => GuestMemoryRegion.Map(fd, 0, Page, ulong.MaxValue - 10, 0));
        Assert.Throws<ArgumentException>(() => GuestMemoryRegion.Map(fd, 0, Page, 0, ulong.MaxValue - 10));
        Assert.Throws<ArgumentException>(() => GuestMemoryRegion.Map(fd, ulong.MaxValue - 10, Page, 0, 0));
        Assert.Throws<PosixException>(() => GuestMemoryRegion.Map(new SafeFd(-1, ownsHandle: false), 0, Page, 0, 0));
    }

    [Fact]
    public void AcquireAndTranslateDoNotAllocate()
    {
        using var mem = QueueTestMemory.Create((0, Page), (Page, Page));
        Span<IoVec> iov = stackalloc IoVec[2];
        int found = 0;
        for (int warm = 0; warm < 2; warm++)
        {
            long before = GC.GetAllocatedBytesForCurrentThread();
            for (int i = 0; i < 10_000; i++)
            {
                using var view = mem.Memory.Acquire();
                found += view.TryTranslate((ulong)i % Page, 1, out _) ? 1 : 0;
                found += view.TryTranslateSplit(Page - 1, 2, iov);
            }
            long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            if (warm == 1)
            {
                Assert.Equal(0, allocated);
            }
        }
        Assert.Equal(2 * 10_000 * 3, found);
    }

    [Fact]
    public void WorkersTranslateSafelyWhileRegionsComeAndGo()
    {
        // Region 0 is permanent; regions 1..3 are removed and re-added in a loop. Each region's first
        // byte holds its number; a reader that got a pointer must always see the right number.
        using var mem = QueueTestMemory.Create((0, Page), (Page, Page), (2 * Page, Page), (3 * Page, Page));
        for (ulong r = 0; r < 4; r++)
        {
            mem.Write(r * Page, [(byte)r]);
        }
        using var stop = new CancellationTokenSource(TimeSpan.FromMilliseconds(400));
        long reads = 0;
        long wrong = 0;
        var readers = new Thread[2];
        for (int t = 0; t < readers.Length; t++)
        {
            readers[t] = new Thread(() =>
            {
                ulong r = 0;
                while (!stop.IsCancellationRequested)
                {
                    r = (r + 1) % 4;
                    using var view = mem.Memory.Acquire();
                    if (view.TryTranslate(r * Page, Page, out nint host))
                    {
                        Thread.SpinWait(20);
                        if (*(byte*)host != (byte)r)
                        {
                            Interlocked.Increment(ref wrong);
                        }
                        Interlocked.Increment(ref reads);
                    }
                }
            });
            readers[t].Start();
        }
        int changes = 0;
        while (!stop.IsCancellationRequested)
        {
            ulong r = (ulong)(changes % 3) + 1;
            Assert.True(mem.Memory.RemoveRegion(r * Page, Page));
            mem.Memory.AddRegion(mem.MapRegionAgain(r * Page));
            changes++;
        }
        foreach (var t in readers)
        {
            t.Join();
        }
        Assert.Equal(0, Interlocked.Read(ref wrong));
        Assert.True(reads > 100, $"only {reads} reads");
        Assert.True(changes > 10, $"only {changes} changes");
        Assert.Equal(4, mem.Memory.RegionCount);
    }
}
