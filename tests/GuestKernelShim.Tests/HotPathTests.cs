using System.Diagnostics;
using System.Runtime.InteropServices;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Xunit;
using Xunit.Abstractions;

namespace Vhostfsd.GuestKernelShim.Tests;

/// <summary>The per-request path of the shim: no heap allocation per request in the steady state, and many
/// threads at once over several queues.</summary>
public class HotPathTests
{
    private readonly ITestOutputHelper _output;

    public HotPathTests(ITestOutputHelper output)
    {
        _output = output;
    }

    private static VirtioFsBackendOptions Options(int queues) => new() { Register = false, MemorySize = 64UL << 20, NumRequestQueues = queues };

    /// <summary>Bytes this thread allocates per request over 2,000 rounds of <paramref name="round"/>, after
    /// 300 rounds of warm-up (pools filled, JIT settled).</summary>
    private static long AllocatedPerRequest(Action round, int requestsPerRound)
    {
        for (int i = 0; i < 300; i++)
        {
            round();
        }
        const int rounds = 2000;
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < rounds; i++)
        {
            round();
        }
        return (GC.GetAllocatedBytesForCurrentThread() - before) / (rounds * requestsPerRound);
    }

    [Fact]
    public void SendingAllocatesNothingPerRequestInTheSteadyState()
    {
        using var device = new TestFsDevice(requestQueues: 1);
        File.WriteAllBytes(Path.Combine(device.Dir, "f"), new byte[65536]);
        using var fs = FuseFs.Mount(VirtioFsBackend.Connect(device.SocketPath, Options(1)));
        Assert.Equal(Errno.OK, fs.Walk("f", out var node));
        Assert.Equal(Errno.OK, fs.Open(node, Libc.O_RDWR, out var file));
        var buffer = new byte[4096];
        int failures = 0;
        // No xunit assertion inside the loop: they allocate.
        void Round()
        {
            if (fs.GetAttr(node, out _, force: true) != Errno.OK)
            {
                failures++;
            }
            if (fs.Read(file!, buffer, 4096, out _) != Errno.OK)
            {
                failures++;
            }
            if (fs.Write(file!, buffer, 8192, out _) != Errno.OK)
            {
                failures++;
            }
        }
        long perRequest = AllocatedPerRequest(Round, requestsPerRound: 3);
        _output.WriteLine($"{perRequest} bytes allocated per request on the sending thread");
        Assert.Equal(0, failures);
        Assert.True(perRequest < 8, $"{perRequest} bytes per request");
        fs.Release(file!);
    }

    [Fact]
    public void DirectIoWithAUserBufferAllocatesNothingPerRequest()
    {
        using var device = new TestFsDevice(requestQueues: 1);
        File.WriteAllBytes(Path.Combine(device.Dir, "f"), new byte[1 << 20]);
        using var fs = FuseFs.Mount(VirtioFsBackend.Connect(device.SocketPath, Options(1)));
        Assert.Equal(Errno.OK, fs.Walk("f", out var node));
        Assert.Equal(Errno.OK, fs.Open(node, Libc.O_RDWR, out var file));
        using var buffer = fs.AllocateUserBuffer(65536);
        int failures = 0;
        void Round()
        {
            if (fs.Conn.Read(node.NodeId, file!.Fh, 4096, buffer, 0, 65536, FuseCaller.Root).Length != 65536)
            {
                failures++;
            }
            if (!fs.Conn.Write(node.NodeId, file.Fh, 8192, buffer, 4096, 4096, FuseCaller.Root, out int written).IsOk || written != 4096)
            {
                failures++;
            }
        }
        long perRequest = AllocatedPerRequest(Round, requestsPerRound: 2);
        _output.WriteLine($"{perRequest} bytes allocated per direct-I/O request on the sending thread");
        Assert.Equal(0, failures);
        Assert.True(perRequest < 8, $"{perRequest} bytes per request");
        Assert.Equal(0, buffer.RequestsInFlight);
        fs.Release(file!);
    }

    [Fact]
    public void ReadsServedByThePageCacheAllocateNothing()
    {
        using var device = new TestFsDevice(requestQueues: 1);
        File.WriteAllBytes(Path.Combine(device.Dir, "f"), new byte[65536]);
        using var fs = FuseFs.Mount(VirtioFsBackend.Connect(device.SocketPath, Options(1)), new MountOptions { CacheSize = 1 << 20 });
        Assert.Equal(Errno.OK, fs.Walk("f", out var node));
        Assert.Equal(Errno.OK, fs.Open(node, Libc.O_RDONLY, out var file));
        var buffer = new byte[4096];
        Assert.Equal(Errno.OK, fs.Read(file!, buffer, 0, out _));
        long requests = fs.PageCache!.ReadRequests;
        int failures = 0;
        int index = 0;
        void Round()
        {
            index = (index + 1) % 16;
            if (fs.Read(file!, buffer, index * 4096L, out int n) != Errno.OK || n != 4096)
            {
                failures++;
            }
        }
        long perRead = AllocatedPerRequest(Round, requestsPerRound: 1);
        _output.WriteLine($"{perRead} bytes allocated per cached read");
        Assert.Equal(0, failures);
        Assert.Equal(requests, fs.PageCache.ReadRequests);
        Assert.True(perRead < 8, $"{perRead} bytes per cached read");
        fs.Release(file!);
    }

    [Fact]
    public void SixteenThreadsOverFourQueues()
    {
        using var device = new TestFsDevice(requestQueues: 4);
        File.WriteAllBytes(Path.Combine(device.Dir, "f"), new byte[1 << 20]);
        using var fs = FuseFs.Mount(VirtioFsBackend.Connect(device.SocketPath, Options(4)));
        Assert.Equal(Errno.OK, fs.Walk("f", out var node));
        Assert.Equal(Errno.OK, fs.Open(node, Libc.O_RDONLY, out var file));
        const int perThread = 300;
        int failures = 0;
        var sw = Stopwatch.StartNew();
        var threads = Enumerable.Range(0, 16).Select(t => new Thread(() =>
        {
            var buffer = new byte[4096];
            var rng = new Random(t);
            for (int i = 0; i < perThread; i++)
            {
                long offset = rng.Next(0, 255) * 4096L;
                if (fs.Read(file!, buffer, offset, out int n) != Errno.OK || n != 4096 || fs.GetAttr(node, out _, force: true) != Errno.OK)
                {
                    Interlocked.Increment(ref failures);
                }
            }
        })).ToArray();
        foreach (var t in threads)
        {
            t.Start();
        }
        foreach (var t in threads)
        {
            Assert.True(t.Join(TimeSpan.FromSeconds(120)));
        }
        sw.Stop();
        Assert.Equal(0, failures);
        var backend = (VirtioFsBackend)fs.Conn.Transport;
        long total = 0;
        for (int q = 1; q <= 4; q++)
        {
            Assert.True(backend.CompletedOn(q) > 0, $"queue {q} idle");
            total += backend.CompletedOn(q);
        }
        _output.WriteLine($"{16 * perThread * 2} requests in {sw.ElapsedMilliseconds} ms ({16 * perThread * 2 / sw.Elapsed.TotalSeconds:F0}/s), per queue: "
            + string.Join(", ", Enumerable.Range(1, 4).Select(q => backend.CompletedOn(q))));
        Assert.True(total >= 16 * perThread * 2);
        fs.Release(file!);
    }
}
