namespace Vhostfsd.Bench.Micro;

/// <summary>Counts the bytes allocated per request on each path after a warm-up (process-wide, every thread),
/// without BenchmarkDotNet. Quick to run, so it is the first thing to look at after a change to the hot path.</summary>
public static class AllocationCheck
{
    private const int WarmupRequests = 20_000;
    private const int MeasuredRequests = 50_000;

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
        }
        using (var daemon = new InProcessDaemon())
        {
            var buffer = new byte[4096];
            allocates |= Measure(output, "round trip: GETATTR root", () => daemon.Getattr(), warmup: 5_000, measured: 20_000);
            allocates |= Measure(output, "round trip: READ 4 KiB", () => daemon.Read(buffer), warmup: 5_000, measured: 20_000);
        }
        return allocates ? 1 : 0;
    }

    private static bool Measure(TextWriter output, string name, Action request, int requestsPerCall = 1, int warmup = WarmupRequests, int measured = MeasuredRequests)
    {
        for (int i = 0; i < warmup; i++)
        {
            request();
        }
        long before = GC.GetTotalAllocatedBytes(precise: true);
        long start = System.Diagnostics.Stopwatch.GetTimestamp();
        for (int i = 0; i < measured; i++)
        {
            request();
        }
        double seconds = System.Diagnostics.Stopwatch.GetElapsedTime(start).TotalSeconds;
        long after = GC.GetTotalAllocatedBytes(precise: true);
        double perRequest = (after - before) / (double)(measured * requestsPerCall);
        output.WriteLine($"{name,-42} {perRequest,8:F2} B/request  {seconds * 1e9 / (measured * requestsPerCall),10:F0} ns/request");
        return perRequest >= 1;
    }
}
