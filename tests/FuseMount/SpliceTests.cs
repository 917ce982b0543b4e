using System.Globalization;
using System.Security.Cryptography;
using System.Text.RegularExpressions;
using Microsoft.Win32.SafeHandles;

namespace Vhostfsd.FuseMount.Tests;

/// <summary>READ replies and WRITE data by reference (FuseReplySplicer, FuseRequestSplicer): the
/// file's pages spliced through a reader's pipes to /dev/fuse, the caller's pages from /dev/fuse
/// through a pipe into the file. With --cache never each pread or pwrite through the mount is one
/// request of the caller's size at the caller's offset (up to 1 MiB), so the sizes and offsets below
/// reach the daemon as such. Every test compares byte for byte with the file on the share, in each
/// mode of the test hook VHOSTFSD_TEST_SPLICE: splicing (default), every splice of data failing
/// (READ data copied back into the reply buffer, WRITE data read into memory) and splicing off
/// (the copy path).</summary>
public sealed class SpliceTests
{
    private const int MiB = 1 << 20;

    public static TheoryData<string> Modes => new() { "splice", "fail", "off" };

    private static MountedShare Mount(string mode, Action<string>? prepare = null) =>
        MountedShare.Start(["--cache", "never"], prepare,
            new Dictionary<string, string?> { ["VHOSTFSD_TEST_SPLICE"] = mode == "splice" ? null : mode });

    /// <summary>Stops the daemon and checks, from its counts, that the replies took the mode's path.</summary>
    private static void StopAndCheckPath(MountedShare m, string mode)
    {
        Assert.Equal(0, m.Stop());
        var counts = Regex.Match(m.Daemon.Stderr, @"READ replies spliced: (\d+), copied back after a splice failed: (\d+)");
        Assert.True(counts.Success, m.Daemon.Stderr);
        long spliced = long.Parse(counts.Groups[1].Value, CultureInfo.InvariantCulture);
        long copiedBack = long.Parse(counts.Groups[2].Value, CultureInfo.InvariantCulture);
        switch (mode)
        {
            case "splice":
                Assert.True(spliced > 0, m.Daemon.Stderr);
                Assert.Equal(0, copiedBack);
                break;
            case "fail":
                Assert.Equal(0, spliced);
                Assert.True(copiedBack > 0, m.Daemon.Stderr);
                break;
            default:
                Assert.Equal(0, spliced);
                Assert.Equal(0, copiedBack);
                break;
        }
        Assert.DoesNotContain("refused a FUSE reply", m.Daemon.Stderr, StringComparison.Ordinal);
    }

    private static byte[] Pread(SafeFileHandle file, long offset, int length)
    {
        byte[] buffer = new byte[length];
        int total = 0;
        while (total < length)
        {
            int n = RandomAccess.Read(file, buffer.AsSpan(total), offset + total);
            if (n == 0)
            {
                break;
            }
            total += n;
        }
        return buffer[..total];
    }

    private static byte[] Expected(byte[] data, long offset, int length) =>
        offset >= data.Length ? [] : data.AsSpan((int)offset, (int)Math.Min(length, data.Length - offset)).ToArray();

    [Theory]
    [MemberData(nameof(Modes))]
    public void Large_reads_at_odd_offsets_and_sizes_and_across_the_end_match_the_file(string mode)
    {
        byte[] data = RandomNumberGenerator.GetBytes(5 * MiB + 123);
        using var m = Mount(mode, share => File.WriteAllBytes(Path.Combine(share, "big"), data));
        (long Offset, int Length)[] reads =
        [
            (0, MiB), (4095, MiB), (1, MiB - 1), (12345, 777_777), (MiB - 1, 2), (0, 1), (3 * MiB + 7, MiB),
            (data.Length - 100, MiB), (data.Length - MiB + 1, MiB), (data.Length, 4096), (data.Length + 4096, MiB),
            (4096, MiB - 8192), (2 * MiB, 4096), (777, 3),
        ];
        using (var file = File.OpenHandle(m.InMount("big")))
        {
            foreach (var (offset, length) in reads)
            {
                Assert.True(Expected(data, offset, length).AsSpan().SequenceEqual(Pread(file, offset, length)), $"pread({offset}, {length})");
            }
        }
        Assert.Equal(data, File.ReadAllBytes(m.InMount("big")));
        StopAndCheckPath(m, mode);
    }

    [Theory]
    [MemberData(nameof(Modes))]
    public void Holes_read_as_zeros(string mode)
    {
        byte[] island = RandomNumberGenerator.GetBytes(5000);
        using var m = Mount(mode, share =>
        {
            using var f = File.Create(Path.Combine(share, "sparse"));
            f.SetLength(6 * MiB + 3);
            f.Position = 3 * MiB - 17;
            f.Write(island);
        });
        byte[] expected = new byte[6 * MiB + 3];
        island.CopyTo(expected, 3 * MiB - 17);
        using (var file = File.OpenHandle(m.InMount("sparse")))
        {
            // Chunks that fit the readers' pipes even where they cannot grow past 1 MiB.
            const int chunk = MiB - 3 * 4096 - 1;
            for (long offset = 0; offset < expected.Length; offset += chunk)
            {
                Assert.True(Expected(expected, offset, chunk).AsSpan().SequenceEqual(Pread(file, offset, chunk)), $"pread({offset})");
            }
        }
        StopAndCheckPath(m, mode);
    }

    [Theory]
    [MemberData(nameof(Modes))]
    public void Many_concurrent_readers_each_get_their_own_bytes(string mode)
    {
        byte[] data = RandomNumberGenerator.GetBytes(8 * MiB + 5);
        using var m = Mount(mode, share => File.WriteAllBytes(Path.Combine(share, "shared"), data));
        var failures = new System.Collections.Concurrent.ConcurrentBag<string>();
        Parallel.For(0, 16, new ParallelOptions { MaxDegreeOfParallelism = 16 }, reader =>
        {
            var random = new Random(reader);
            using var file = File.OpenHandle(m.InMount("shared"));
            for (int i = 0; i < 40; i++)
            {
                long offset = random.NextInt64(0, data.Length + 4096);
                int length = random.Next(1, MiB + 1);
                if (!Expected(data, offset, length).AsSpan().SequenceEqual(Pread(file, offset, length)))
                {
                    failures.Add($"reader {reader}: pread({offset}, {length})");
                }
            }
        });
        Assert.Empty(failures);
        StopAndCheckPath(m, mode);
    }

    /// <summary>The host truncates the file and writes it back while the mount reads it: every read
    /// ends in time (short past the current end), and every byte it returns is the file's or a zero
    /// that truncation left in a page the read had already taken; once the writer stops, the mount
    /// reads the whole file again.</summary>
    [Theory]
    [MemberData(nameof(Modes))]
    public void A_file_truncated_while_being_read_gives_short_reads_of_its_bytes(string mode)
    {
        byte[] data = RandomNumberGenerator.GetBytes(4 * MiB);
        using var m = Mount(mode, share => File.WriteAllBytes(Path.Combine(share, "shrinking"), data));
        using var stop = new CancellationTokenSource();
        var truncator = Task.Run(() =>
        {
            var random = new Random(1);
            using var host = File.OpenHandle(m.InShare("shrinking"), FileMode.Open, FileAccess.ReadWrite);
            while (!stop.IsCancellationRequested)
            {
                long size = random.NextInt64(0, data.Length);
                RandomAccess.SetLength(host, size);
                RandomAccess.Write(host, data.AsSpan((int)size), size);
            }
        });
        try
        {
            using var file = File.OpenHandle(m.InMount("shrinking"));
            var random = new Random(2);
            for (int i = 0; i < 300; i++)
            {
                long offset = random.NextInt64(0, data.Length);
                int length = random.Next(1, MiB + 1);
                byte[] got = Pread(file, offset, length);
                Assert.True(got.Length <= length);
                for (int b = 0; b < got.Length; b++)
                {
                    if (got[b] != data[offset + b] && got[b] != 0)
                    {
                        Assert.Fail($"pread({offset}, {length}): byte {b} is {got[b]}, neither the file's {data[offset + b]} nor a zero");
                    }
                }
            }
        }
        finally
        {
            stop.Cancel();
            truncator.Wait();
        }
        Assert.Equal(data, File.ReadAllBytes(m.InMount("shrinking")));
        Assert.Equal(0, m.Stop());
        Assert.DoesNotContain("refused a FUSE reply", m.Daemon.Stderr, StringComparison.Ordinal);
    }

    [Theory]
    [MemberData(nameof(Modes))]
    public void Large_writes_at_odd_offsets_land_byte_for_byte(string mode)
    {
        byte[] data = RandomNumberGenerator.GetBytes(3 * MiB + 999);
        using var m = Mount(mode);
        using (var file = File.OpenHandle(m.InMount("written"), FileMode.Create, FileAccess.ReadWrite))
        {
            // Out of order, unaligned, each piece up to 1 MiB + a page: two WRITEs where it is longer.
            (int Offset, int Length)[] pieces = [(4097, MiB), (0, 4097), (MiB + 4097, MiB + 4096), (2 * MiB + 8193, data.Length - (2 * MiB + 8193))];
            foreach (var (offset, length) in pieces)
            {
                RandomAccess.Write(file, data.AsSpan(offset, length), offset);
            }
        }
        // An append (O_APPEND: RWF_APPEND, never spliced) and a write that ends past a hole.
        using (var append = new FileStream(m.InMount("written"), FileMode.Append, FileAccess.Write, FileShare.ReadWrite, 1))
        {
            append.Write(data.AsSpan(0, MiB + 5));
        }
        data = [.. data, .. data.AsSpan(0, MiB + 5)];
        using (var file = File.OpenHandle(m.InMount("written"), FileMode.Open, FileAccess.Write))
        {
            RandomAccess.Write(file, data.AsSpan(100, 70_000), data.Length + 3 * MiB);
        }
        data = [.. data, .. new byte[3 * MiB], .. data.AsSpan(100, 70_000)];
        Assert.Equal(data, File.ReadAllBytes(m.InShare("written")));
        Assert.Equal(data, File.ReadAllBytes(m.InMount("written")));
        Assert.Equal(0, m.Stop());
        var counts = Regex.Match(m.Daemon.Stderr, @"WRITE data spliced: (\d+), copied after a splice failed: (\d+)");
        Assert.True(counts.Success, m.Daemon.Stderr);
        long spliced = long.Parse(counts.Groups[1].Value, CultureInfo.InvariantCulture);
        long fetched = long.Parse(counts.Groups[2].Value, CultureInfo.InvariantCulture);
        // Where pipes cannot grow to hold a 1 MiB WRITE (fs.pipe-max-size without CAP_SYS_RESOURCE),
        // the daemon says so and copies: then the copy path is what was checked.
        bool pipesTooSmall = m.Daemon.Stderr.Contains("WRITE data is copied: a request pipe could not grow", StringComparison.Ordinal);
        switch (pipesTooSmall ? "off" : mode)
        {
            case "splice":
                Assert.True(spliced >= 3, m.Daemon.Stderr);
                Assert.Equal(0, fetched);
                break;
            case "fail":
                Assert.Equal(0, spliced);
                Assert.True(fetched >= 3, m.Daemon.Stderr);
                break;
            default:
                Assert.Equal(0, spliced);
                Assert.Equal(0, fetched);
                break;
        }
    }
}
