using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Running;
using BenchmarkDotNet.Toolchains.InProcess.Emit;
using Vhostfsd.Bench.Micro;

// Hot-path micro-benchmarks (docs/performance.md). "--alloc-check" skips BenchmarkDotNet and prints the bytes
// allocated per request of each path directly (a quick check; exit code 1 when any path allocates).
if (args.Length > 0 && args[0] == "--alloc-check")
{
    return AllocationCheck.Run(Console.Out);
}

// In-process toolchain: no per-benchmark project build (the machine is small and shared); one launch, short runs.
var config = DefaultConfig.Instance
    .AddJob(Job.Default.WithToolchain(InProcessEmitToolchain.Instance).WithLaunchCount(1).WithWarmupCount(3).WithIterationCount(10))
    .WithOptions(ConfigOptions.DisableOptimizationsValidator);
BenchmarkSwitcher.FromAssembly(typeof(HotPathBenchmarks).Assembly).Run(args, config);
return 0;
