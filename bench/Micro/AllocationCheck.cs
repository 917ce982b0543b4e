namespace Vhostfsd.Bench.Micro;

/// <summary>Counts the bytes allocated per request on each path after a warm-up (process-wide, every thread),
/// without BenchmarkDotNet. Quick to run, so it is the first thing to look at after a change to the hot path.</summary>
public static class AllocationCheck
{
    // Enough warm-up for tiered compilation to reach tier 1 (it waits 100 ms after 30 calls).
    private const int WarmupRequests = 200_000;
    private const int MeasuredRequests = 200_000;

    public static int Run(TextWriter output)
    {
        bool allocates = false;
        using (var path = new QueueHotPath())
        {
            allocates |= Measure(output, "queue hot path: unknown opcode (ENOSYS)", () => path.Process(path.Unknown));
            allocates |= Measure(output, "queue hot path: GETATTR root", () => path.Process(path.GetattrRoot));
            allocates |= Measure(output, "queue hot path: LOOKUP + FORGET", () =>
            {
                path.Process(path.LookupFile);
                path.Process(path.Forget);
            }, requestsPerCall: 2);
            allocates |= Measure(output, "queue hot path: READ 4 KiB", () => path.Process(path.Read4K));
            allocates |= Measure(output, "queue hot path: GETATTR file", () => path.Process(path.GetattrFile));
        }
        // vhostfsd's default --inode-file-handles=prefer: nodes may be held by file handle.
        using (var path = new QueueHotPath(Vhostfsd.FusePassthrough.InodeFileHandles.Prefer))
        {
            allocates |= Measure(output, "file handles (prefer): GETATTR file", () => path.Process(path.GetattrFile));
            allocates |= Measure(output, "file handles (prefer): LOOKUP + FORGET", () =>
            {
                path.Process(path.LookupFile);
                path.Process(path.Forget);
            }, requestsPerCall: 2);
            allocates |= Measure(output, "file handles (prefer): READ 4 KiB", () => path.Process(path.Read4K));
        }
        using (var daemon = new InProcessDaemon())
        {
            var buffer = new byte[4096];
            allocates |= Measure(output, "round trip: GETATTR root", () => daemon.Getattr(), warmup: 20_000, measured: 30_000);
            allocates |= Measure(output, "round trip: READ 4 KiB", () => daemon.Read(buffer), warmup: 20_000, measured: 30_000);
        }
        return allocates ? 1 : 0;
    }

    /// <summary>Time this thread spent on a CPU (the first field of /proc/thread-self/schedstat): unlike wall
    /// time it does not grow when other processes take the CPU, so it stays comparable on a loaded machine.</summary>
    public static long ThreadCpuNanoseconds()
    {
        string text = File.ReadAllText("/proc/thread-self/schedstat");
        return long.Parse(text.AsSpan(0, text.IndexOf(' ')), System.Globalization.CultureInfo.InvariantCulture);
    }

    private static bool Measure(TextWriter output, string name, Action request, int requestsPerCall = 1, int warmup = WarmupRequests, int measured = MeasuredRequests)
    {
        for (int i = 0; i < warmup; i++)
        {
            request();
        }
        long cpuBefore = ThreadCpuNanoseconds();
        var processBefore = System.Diagnostics.Process.GetCurrentProcess().TotalProcessorTime;
        long before = GC.GetTotalAllocatedBytes(precise: true);
        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        for (int i = 0; i < measured; i++)
        {
            request();
        }
        double seconds = System.Diagnostics.Stopwatch.GetElapsedTime(start).TotalSeconds;
        long after = GC.GetTotalAllocatedBytes(precise: true);
        long cpuAfter = ThreadCpuNanoseconds();
        var processAfter = System.Diagnostics.Process.GetCurrentProcess().TotalProcessorTime;
        int requests = measured * requestsPerCall;
        double perRequest = (after - before) / (double)requests;
        output.WriteLine($"{name,-42} {perRequest,8:F2} B/request  {seconds * 1e9 / requests,9:F0} ns/request wall  " +
            $"{(cpuAfter - cpuBefore) / (double)requests,9:F0} ns/request CPU (this thread)  " +
            $"{(processAfter - processBefore).TotalNanoseconds / requests,9:F0} ns/request CPU (process)");
        return perRequest >= 1;
    }
}
