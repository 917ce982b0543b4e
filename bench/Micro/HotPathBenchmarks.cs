using BenchmarkDotNet.Attributes;

namespace Vhostfsd.Bench.Micro;

/// <summary>Pop chain → FUSE decode → syscall → reply → push used, on a fabricated queue, per request.
/// The bar: 0 B allocated.</summary>
[MemoryDiagnoser]
public class HotPathBenchmarks
{
    private const int Batch = 64;
    private QueueHotPath _path = null!;

    /// <summary>How nodes are held: O_PATH fds, or file handles (vhostfsd's default is prefer).</summary>
    [Params(Vhostfsd.FusePassthrough.InodeFileHandles.Never, Vhostfsd.FusePassthrough.InodeFileHandles.Prefer)]
    public Vhostfsd.FusePassthrough.InodeFileHandles FileHandles { get; set; }

    [GlobalSetup]
    public void Setup() => _path = new QueueHotPath(FileHandles);

    [GlobalCleanup]
    public void Cleanup() => _path.Dispose();

    /// <summary>An opcode the server does not know: decode and an ENOSYS reply, no syscall.</summary>
    [Benchmark(OperationsPerInvoke = Batch)]
    public int UnknownOpcode()
    {
        int sum = 0;
        for (int i = 0; i < Batch; i++)
        {
            sum += _path.Process(_path.Unknown);
        }
        return sum;
    }

    /// <summary>GETATTR of the root: one fstat.</summary>
    [Benchmark(OperationsPerInvoke = Batch)]
    public int GetattrRoot()
    {
        int sum = 0;
        for (int i = 0; i < Batch; i++)
        {
            sum += _path.Process(_path.GetattrRoot);
        }
        return sum;
    }

    /// <summary>GETATTR of a regular file.</summary>
    [Benchmark(OperationsPerInvoke = Batch)]
    public int GetattrFile()
    {
        int sum = 0;
        for (int i = 0; i < Batch; i++)
        {
            sum += _path.Process(_path.GetattrFile);
        }
        return sum;
    }

    /// <summary>LOOKUP of an existing file (known inode), then FORGET to keep the lookup count flat.</summary>
    [Benchmark(OperationsPerInvoke = Batch * 2)]
    public int LookupForget()
    {
        int sum = 0;
        for (int i = 0; i < Batch; i++)
        {
            sum += _path.Process(_path.LookupFile);
            sum += _path.Process(_path.Forget);
        }
        return sum;
    }

    /// <summary>READ of 4 KiB from a tmpfs file straight into the guest buffer.</summary>
    [Benchmark(OperationsPerInvoke = Batch)]
    public int Read4K()
    {
        int sum = 0;
        for (int i = 0; i < Batch; i++)
        {
            sum += _path.Process(_path.Read4K);
        }
        return sum;
    }
}

/// <summary>A whole round trip through vhostfsd's device and the shim in one process (both wake-ups included),
/// QD1. Allocation is counted process-wide, so it covers the daemon's worker, the shim's completion thread and
/// the caller.</summary>
[MemoryDiagnoser]
public class RoundTripBenchmarks
{
    private InProcessDaemon _daemon = null!;
    private readonly byte[] _buffer = new byte[4096];

    [GlobalSetup]
    public void Setup() => _daemon = new InProcessDaemon();

    [GlobalCleanup]
    public void Cleanup() => _daemon.Dispose();

    [Benchmark]
    public int GetattrRoundTrip() => _daemon.Getattr();

    [Benchmark]
    public int Read4KRoundTrip() => _daemon.Read(_buffer);
}
