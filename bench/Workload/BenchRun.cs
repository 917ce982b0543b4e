using System.Diagnostics;

namespace Vhostfsd.Bench;

/// <summary>Everything the command line decided.</summary>
public sealed record BenchSettings
{
    public required IReadOnlyList<DaemonSpec> Daemons { get; init; }
    public required IReadOnlyList<string> DirKinds { get; init; }
    public required IReadOnlyList<string> Workloads { get; init; }
    public required IReadOnlyList<int> Callers { get; init; }
    public required IReadOnlyList<int> Queues { get; init; }
    public required int Repeat { get; init; }
    public required Budget Budget { get; init; }
    public required DatasetShape Shape { get; init; }
    public required bool Native { get; init; }
    /// <summary>vhostfsd.dll to measure as a host FUSE mount (<see cref="FuseMountUnderTest"/>); null: not measured.</summary>
    public string? FuseMountExecutable { get; init; }
    public string? JsonPath { get; init; }
    /// <summary>A command run during each daemon cell's measured phase ({pid} = the daemon), stopped with SIGINT.</summary>
    public string? ProfileCommand { get; init; }
    public TimeSpan StartTimeout { get; init; } = TimeSpan.FromSeconds(60);
    /// <summary>Extend a daemon cell's warm-up while the daemon's background JIT is busy (not with --quick).</summary>
    public bool WarmupUntilJitIdle { get; init; } = true;
}

/// <summary>One measured cell: a workload run by one daemon (or natively) at one caller count and queue count.</summary>
public sealed record CellResult
{
    public required string DirKind { get; init; }
    public required string Workload { get; init; }
    public required string Unit { get; init; }
    /// <summary>Daemon name, or "native".</summary>
    public required string Daemon { get; init; }
    public required int Callers { get; init; }
    public required int QueuesAsked { get; init; }
    /// <summary>Request queues the device really had (0 for native).</summary>
    public required int QueuesUsed { get; init; }
    public required int Repetition { get; init; }
    /// <summary>Units per second (ops, entries or MiB).</summary>
    public required double Rate { get; init; }
    public required double P50Us { get; init; }
    public required double P99Us { get; init; }
    public required long Steps { get; init; }
    public required double ElapsedSeconds { get; init; }
    /// <summary>Warm-up run before the measured phase (extended until the daemon's JIT was idle).</summary>
    public double WarmupSeconds { get; init; }
    /// <summary>Daemon CPU (user + system) during the measured phase; NaN for native.</summary>
    public required double CpuSeconds { get; init; }
    /// <summary>CPU (user + system) of this benchmark process during the measured phase: the driver (callers,
    /// completion threads: the guest's share of the work) in a daemon cell, the operations themselves in a native cell.</summary>
    public required double DriverCpuSeconds { get; init; }
    /// <summary>Voluntary context switches of the daemon's threads per step (how often it slept); NaN for native.</summary>
    public required double SleepsPerStep { get; init; }
    /// <summary>Share of the machine's CPU time the hypervisor stole during the measured phase, in per cent:
    /// a repetition far from its neighbours with a high figure ran on a busy host.</summary>
    public required double StealPercent { get; init; }
    /// <summary>Daemon VmHWM at the end of the cell; 0 for native.</summary>
    public required long PeakRssBytes { get; init; }
    public double ListenMs { get; init; }
    public long IdleRssBytes { get; init; }
    public long IdleUssBytes { get; init; }
    /// <summary>From the daemon's exec to the shim's INIT answered (the device ready for requests).</summary>
    public double ReadyMs { get; init; }
    public int DaemonThreads { get; init; }
    public string? Note { get; init; }
}

/// <summary>Runs the cells: per directory kind, per repetition, per workload, caller count and queue count, each
/// daemon in turn (the order alternates between repetitions), then the native floor. Every daemon cell starts a
/// fresh daemon, so its CPU and peak memory are its own.</summary>
public sealed class BenchRun
{
    private readonly BenchSettings _settings;
    private readonly Action<string> _log;
    private readonly List<CellResult> _results = new();

    public BenchRun(BenchSettings settings, Action<string> log)
    {
        _settings = settings;
        _log = log;
    }

    public IReadOnlyList<CellResult> Results => _results;

    public List<(string DirKind, string Start, string End)> Loads { get; } = new();

    public void Execute()
    {
        foreach (string kind in _settings.DirKinds)
        {
            string loadStart = ReadLoad();
            using var dataset = Dataset.Create(kind, _settings.Shape, _log);
            // Request queues each daemon really offers: asking a daemon for more gives the same cell again.
            var maxQueues = new Dictionary<string, int>();
            foreach (var daemon in _settings.Daemons)
            {
                maxQueues[daemon.Name] = ProbeQueues(dataset, daemon, _settings.Queues.Max());
            }
            for (int rep = 0; rep < _settings.Repeat; rep++)
            {
                foreach (string workloadName in _settings.Workloads)
                {
                    foreach (int callers in _settings.Callers)
                    {
                        var done = new HashSet<(string, int)>();
                        foreach (int queues in _settings.Queues)
                        {
                            var order = rep % 2 == 0 ? _settings.Daemons : _settings.Daemons.Reverse().ToList();
                            foreach (var daemon in order)
                            {
                                int effective = Math.Min(queues, maxQueues[daemon.Name]);
                                if (!done.Add((daemon.Name, effective)))
                                {
                                    continue;
                                }
                                Add(RunDaemonCell(dataset, Workload.Create(workloadName), daemon, callers, effective, rep));
                            }
                        }
                        if (_settings.FuseMountExecutable != null)
                        {
                            Add(RunFuseMountCell(dataset, Workload.Create(workloadName), callers, rep));
                        }
                        if (_settings.Native)
                        {
                            Add(RunNativeCell(dataset, Workload.Create(workloadName), callers, rep));
                        }
                    }
                }
            }
            Loads.Add((kind, loadStart, ReadLoad()));
        }
    }

    private void Add(CellResult result)
    {
        _results.Add(result);
        string cpu = double.IsNaN(result.CpuSeconds) ? "" : $", daemon cpu {result.CpuSeconds:F2} s ({result.CpuSeconds * 1e6 / Math.Max(1, result.Steps):F1} us/step), " +
            $"{result.SleepsPerStep:F2} sleeps/step, peak rss {result.PeakRssBytes >> 20} MiB, warm-up {result.WarmupSeconds:F1} s";
        _log($"[{result.DirKind} rep {result.Repetition + 1}/{_settings.Repeat}] {result.Workload,-11} {result.Daemon,-10} callers {result.Callers,2} " +
            $"queues {result.QueuesUsed}: {Report.FormatRate(result.Rate)} {result.Unit}, p50 {result.P50Us:F1} us, p99 {result.P99Us:F1} us{cpu}, steal {result.StealPercent:F1}%" +
            (result.Note != null ? $" ({result.Note})" : ""));
    }

    public static string ReadLoad()
    {
        try
        {
            string[] parts = File.ReadAllText("/proc/loadavg").Split(' ');
            return $"{parts[0]} {parts[1]} {parts[2]}";
        }
        catch (IOException)
        {
            return "?";
        }
    }

    /// <summary>Starts the daemon once and connects asking for <paramref name="queues"/> request queues; returns
    /// how many it gave.</summary>
    private int ProbeQueues(Dataset dataset, DaemonSpec spec, int queues)
    {
        using var daemon = DaemonUnderTest.Start(spec, dataset.Root, _settings.StartTimeout);
        try
        {
            using var session = FuseSession.Connect(daemon.SocketPath, queues, dataset);
            _log($"{spec.Name}: {session.Queues} request queue(s) of {queues} asked; listening after {daemon.TimeToListen.TotalMilliseconds:F0} ms; " +
                $"max READ {session.MaxRead >> 10} KiB, max WRITE {session.MaxWrite >> 10} KiB, READDIRPLUS {(session.ReaddirplusGranted ? "granted" : "not granted")}");
            return session.Queues;
        }
        catch (Exception e) when (e is not BenchFailure)
        {
            throw new BenchFailure($"connecting to {spec.Name} failed: {e.Message}\n{daemon.Output}");
        }
    }

    private CellResult RunDaemonCell(Dataset dataset, Workload workload, DaemonSpec spec, int callers, int queues, int rep)
    {
        if (workload.Name == "smallfile")
        {
            dataset.CleanSmall();
        }
        long started = Stopwatch.GetTimestamp();
        using var daemon = DaemonUnderTest.Start(spec, dataset.Root, _settings.StartTimeout, workload.Caching);
        try
        {
            FuseSession session;
            try
            {
                session = FuseSession.Connect(daemon.SocketPath, queues, dataset, workload.MountOptions(dataset.Shape));
            }
            catch (Exception e)
            {
                throw new BenchFailure($"connecting to {spec.Name} failed: {e.Message}\n{daemon.Output}");
            }
            double readyMs = session.ReadyAfter(started);
            using (session)
            {
                workload.Prepare(session);
                // Idle: connected, INIT done, the dataset's directories looked up, nothing in flight.
                Thread.Sleep(50);
                IdleFigures idle = daemon.Tree.Idle();
                var measured = MeasureTree(daemon.Tree, callers, caller => workload.CreateFuse(session, caller, callers),
                    $"{workload.Name}-{spec.Name}-c{callers}-q{queues}-r{rep}");
                var measurement = measured.Measurement;
                long peak = daemon.Tree.PeakRssBytes();
                return new CellResult
                {
                    DirKind = dataset.Kind,
                    Workload = workload.Name,
                    Unit = workload.Unit,
                    Daemon = spec.Name,
                    Callers = callers,
                    QueuesAsked = queues,
                    QueuesUsed = session.Queues,
                    Repetition = rep,
                    Rate = measurement.Units / workload.UnitDivisor / measurement.ElapsedSeconds,
                    P50Us = measurement.Latency.Quantile(0.50) / 1000,
                    P99Us = measurement.Latency.Quantile(0.99) / 1000,
                    Steps = measurement.Steps,
                    WarmupSeconds = measurement.WarmupSeconds,
                    ElapsedSeconds = measurement.ElapsedSeconds,
                    CpuSeconds = measured.CpuSeconds,
                    DriverCpuSeconds = measured.DriverCpuSeconds,
                    SleepsPerStep = measured.SleepsPerStep,
                    StealPercent = measured.StealPercent,
                    PeakRssBytes = peak,
                    ListenMs = daemon.TimeToListen.TotalMilliseconds,
                    IdleRssBytes = idle.RssBytes,
                    IdleUssBytes = idle.UssBytes,
                    ReadyMs = readyMs,
                    DaemonThreads = idle.Threads,
                    Note = workload.Note(session),
                };
            }
        }
        catch (BenchFailure e) when (!daemon.Output.Contains(e.Message, StringComparison.Ordinal) && daemon.Output.Length > 0)
        {
            throw new BenchFailure($"{spec.Name}, {workload.Name}, {callers} callers, {queues} queues: {e.Message}\ndaemon output:\n{daemon.Output}");
        }
    }

    private Process? StartProfiler(int pid, string cell)
    {
        if (_settings.ProfileCommand == null)
        {
            return null;
        }
        var tree = ProcStats.Tree(pid);
        string command = _settings.ProfileCommand
            .Replace("{pids}", string.Join(',', tree), StringComparison.Ordinal)
            .Replace("{pid}", tree[^1].ToString(System.Globalization.CultureInfo.InvariantCulture), StringComparison.Ordinal)
            .Replace("{cell}", cell, StringComparison.Ordinal);
        var info = new ProcessStartInfo("/bin/sh") { UseShellExecute = false };
        info.ArgumentList.Add("-c");
        info.ArgumentList.Add("exec " + command);
        var process = Process.Start(info)!;
        Thread.Sleep(200);
        return process;
    }

    private static void StopProfiler(Process? profiler)
    {
        if (profiler == null)
        {
            return;
        }
        Vhostfsd.Posix.Libc.Kill(profiler.Id, 2);
        profiler.WaitForExit(30_000);
        profiler.Dispose();
    }

    /// <summary>What a cell measures of a daemon's process tree around <see cref="CallerRunner.Run"/>: the
    /// tree's and the driver's CPU, the tree's sleeps per step and the host's steal, over the measured phase
    /// only; the warm-up lasts until the runtime's background JIT is idle when the settings ask.</summary>
    private TreeMeasurement MeasureTree(ProcessTree tree, int callers, Func<int, CallerWork> create, string profileName)
    {
        double cpuBefore = 0, cpuAfter = 0, driverCpuBefore = 0, driverCpuAfter = 0;
        long switchesBefore = 0, switchesAfter = 0;
        (long, long) hostBefore = default, hostAfter = default;
        Process? profiler = null;
        double jitCpu = tree.JitCpuSeconds();
        bool JitIdle()
        {
            // Settled once the runtime's background JIT used no CPU tick since the last look.
            double now = tree.JitCpuSeconds();
            bool idle = now - jitCpu < 0.015;
            jitCpu = now;
            return idle;
        }
        var measurement = CallerRunner.Run(callers, create, _settings.Budget,
            () =>
            {
                profiler = StartProfiler(tree.Pid, profileName);
                cpuBefore = tree.CpuSeconds();
                driverCpuBefore = ProcStats.CpuSeconds(Environment.ProcessId);
                switchesBefore = tree.ContextSwitches();
                hostBefore = ProcStats.HostCpuTicks();
            },
            () =>
            {
                cpuAfter = tree.CpuSeconds();
                driverCpuAfter = ProcStats.CpuSeconds(Environment.ProcessId);
                switchesAfter = tree.ContextSwitches();
                hostAfter = ProcStats.HostCpuTicks();
                StopProfiler(profiler);
            },
            _settings.WarmupUntilJitIdle ? JitIdle : null);
        return new TreeMeasurement(measurement, cpuAfter - cpuBefore, driverCpuAfter - driverCpuBefore,
            (switchesAfter - switchesBefore) / (double)Math.Max(1, measurement.Steps), ProcStats.StealPercent(hostBefore, hostAfter));
    }

    private readonly record struct TreeMeasurement(Measurement Measurement, double CpuSeconds, double DriverCpuSeconds, double SleepsPerStep,
        double StealPercent);

    /// <summary>The native workload code on a host FUSE mount of the dataset served by a fresh vhostfsd: the
    /// host kernel's FUSE client is the guest.</summary>
    private CellResult RunFuseMountCell(Dataset dataset, Workload workload, int callers, int rep)
    {
        if (workload.Name == "smallfile")
        {
            dataset.CleanSmall();
        }
        using var daemon = FuseMountUnderTest.Start(_settings.FuseMountExecutable!, dataset.Root, _settings.StartTimeout);
        try
        {
            using var native = new NativeSession(dataset, daemon.MountPoint);
            Thread.Sleep(50);
            IdleFigures idle = daemon.Tree.Idle();
            var measured = MeasureTree(daemon.Tree, callers, caller => workload.CreateNative(native, caller, callers),
                $"{workload.Name}-{FuseMountUnderTest.Name}-c{callers}-r{rep}");
            var measurement = measured.Measurement;
            return new CellResult
            {
                DirKind = dataset.Kind,
                Workload = workload.Name,
                Unit = workload.Unit,
                Daemon = FuseMountUnderTest.Name,
                Callers = callers,
                QueuesAsked = 0,
                QueuesUsed = 0,
                Repetition = rep,
                Rate = measurement.Units / workload.UnitDivisor / measurement.ElapsedSeconds,
                P50Us = measurement.Latency.Quantile(0.50) / 1000,
                P99Us = measurement.Latency.Quantile(0.99) / 1000,
                Steps = measurement.Steps,
                WarmupSeconds = measurement.WarmupSeconds,
                ElapsedSeconds = measurement.ElapsedSeconds,
                CpuSeconds = measured.CpuSeconds,
                DriverCpuSeconds = measured.DriverCpuSeconds,
                SleepsPerStep = measured.SleepsPerStep,
                StealPercent = measured.StealPercent,
                PeakRssBytes = daemon.Tree.PeakRssBytes(),
                ListenMs = daemon.TimeToMount.TotalMilliseconds,
                IdleRssBytes = idle.RssBytes,
                IdleUssBytes = idle.UssBytes,
                ReadyMs = daemon.TimeToReady.TotalMilliseconds,
                DaemonThreads = idle.Threads,
            };
        }
        catch (BenchFailure e) when (daemon.Output.Length > 0 && !e.Message.Contains(daemon.Output, StringComparison.Ordinal))
        {
            throw new BenchFailure($"{FuseMountUnderTest.Name}, {workload.Name}, {callers} callers: {e.Message}\ndaemon output:\n{daemon.Output}");
        }
    }

    private CellResult RunNativeCell(Dataset dataset, Workload workload, int callers, int rep)
    {
        if (workload.Name == "smallfile")
        {
            dataset.CleanSmall();
        }
        using var native = new NativeSession(dataset);
        double cpuBefore = 0;
        double cpuAfter = 0;
        (long, long) hostBefore = default;
        (long, long) hostAfter = default;
        var measurement = CallerRunner.Run(callers, caller => workload.CreateNative(native, caller, callers), _settings.Budget,
            () =>
            {
                cpuBefore = ProcStats.CpuSeconds(Environment.ProcessId);
                hostBefore = ProcStats.HostCpuTicks();
            },
            () =>
            {
                cpuAfter = ProcStats.CpuSeconds(Environment.ProcessId);
                hostAfter = ProcStats.HostCpuTicks();
            });
        return new CellResult
        {
            DirKind = dataset.Kind,
            Workload = workload.Name,
            Unit = workload.Unit,
            Daemon = "native",
            Callers = callers,
            QueuesAsked = 0,
            QueuesUsed = 0,
            Repetition = rep,
            Rate = measurement.Units / workload.UnitDivisor / measurement.ElapsedSeconds,
            P50Us = measurement.Latency.Quantile(0.50) / 1000,
            P99Us = measurement.Latency.Quantile(0.99) / 1000,
            Steps = measurement.Steps,
            ElapsedSeconds = measurement.ElapsedSeconds,
            CpuSeconds = double.NaN,
            DriverCpuSeconds = cpuAfter - cpuBefore,
            SleepsPerStep = double.NaN,
            StealPercent = ProcStats.StealPercent(hostBefore, hostAfter),
            PeakRssBytes = 0,
        };
    }
}
