using System.CommandLine;
using System.Globalization;
using System.Text.RegularExpressions;
using Vhostfsd.Bench;

// vhostfs-bench: drives vhost-user-fs daemons through GuestKernelShim over their real sockets and prints one
// comparison table. See docs/performance.md.

var daemonOption = new Option<string[]>("--daemon")
{
    Description = "Daemon to measure (repeatable): vhostfsd (the native executable), vhostfsd-jit (the same program on the JIT: " +
        "dotnet vhostfsd.dll), reference (/usr/lib/qemu/virtiofsd), or a command with {socket} and {dir} " +
        "(optionally NAME=COMMAND) [default: vhostfsd and reference]",
    HelpName = "vhostfsd|vhostfsd-jit|reference|CMD",
    AllowMultipleArgumentsPerToken = false,
};
var dirKindOption = new Option<string>("--dir-kind") { Description = "Shared directory: tmpfs (a fresh tmpfs mount; needs root), disk (a temp dir under /var/tmp), or both comma-separated [default: tmpfs,disk; --quick: tmpfs]", HelpName = "tmpfs|disk" };
var workloadsOption = new Option<string>("--workloads") { Description = "Comma-separated: " + string.Join(",", Workload.AllNames) + " [default: all]. randread, randwrite, seqread and seqwrite " +
    "read into / write from a per-caller buffer in guest memory (direct I/O as with cache=none: the daemon uses the caller's pages, no copy in the shim; native: pread/pwrite into a process buffer)", HelpName = "LIST" };
var callersOption = new Option<string>("--callers") { Description = "Concurrent callers (queue depth), comma-separated [default: 1,16]", HelpName = "LIST" };
var queuesOption = new Option<string>("--queues") { Description = "Request queues the shim asks for, comma-separated; a daemon that offers fewer is run with what it offers [default: 1,4]", HelpName = "LIST" };
var repeatOption = new Option<int?>("--repeat") { Description = "Repetitions (daemons alternate within each); the table shows medians [default: 3; --quick: 1]", HelpName = "N" };
var durationOption = new Option<double?>("--duration") { Description = "Seconds measured per cell [default: 2; --quick: 0.4]", HelpName = "SECONDS" };
var warmupOption = new Option<double?>("--warmup") { Description = "Seconds of warm-up per cell, at least; a daemon cell warms up longer (in 0.5 s steps, up to 15 s more) until the daemon's background JIT threads used no CPU for a step (not with --quick). 3 s by default: a fresh .NET daemon reaches its steady-state code (tiered JIT) 2-3 s after its first requests [default: 3; --quick: 0.1]", HelpName = "SECONDS" };
var opsOption = new Option<long?>("--ops") { Description = "Measure a fixed number of operations per cell (shared by the callers) instead of a duration", HelpName = "N" };
var quickOption = new Option<bool>("--quick") { Description = "CI-size run: small data set (1,000 files, 64 MiB file), tmpfs only, 1 repetition, short cells" };
var noNativeOption = new Option<bool>("--no-native") { Description = "Skip the native (direct syscall) floor" };
var fuseMountOption = new Option<bool>("--fuse-mount") { Description = "Also measure vhostfsd --fuse-mount (as fuse-mount): the native workload code, plain syscalls, on a mount of the share through the host kernel's FUSE, daemon with --cache never (needs root and /dev/fuse)" };
var jsonOption = new Option<string>("--json") { Description = "Also write every cell and the medians as JSON to FILE (- for stdout)", HelpName = "FILE" };
var profileOption = new Option<string>("--profile-cmd") { Description = "Run this command during each daemon cell's measured phase, stopped with SIGINT. {pid}: the serving process (the newest of the daemon's process tree), {pids}: the whole tree, comma-separated, {cell}: a name for the cell. E.g. \"perf record -g -p {pids} -o /tmp/{cell}.data\"", HelpName = "CMD" };
var vhostfsdOption = new Option<string>("--vhostfsd") { Description = "The vhostfsd executable to run [default: src/Vhostfsd/bin/CONFIG/native/vhostfsd]", HelpName = "PATH" };

var root = new RootCommand("vhostfs-bench: compare virtio-fs daemons (vhostfsd, the reference virtiofsd, any other) on the same workloads, through GuestKernelShim over their vhost-user sockets, against the native syscall floor.")
{
    daemonOption, dirKindOption, workloadsOption, callersOption, queuesOption, repeatOption, durationOption, warmupOption, opsOption,
    quickOption, noNativeOption, fuseMountOption, jsonOption, vhostfsdOption, profileOption,
};

root.SetAction(parse =>
{
    bool quick = parse.GetValue(quickOption);
    var daemons = new List<DaemonSpec>();
    string[] daemonArgs = parse.GetValue(daemonOption) is { Length: > 0 } given ? given : ["vhostfsd", "reference"];
    int custom = 0;
    foreach (string value in daemonArgs)
    {
        switch (value)
        {
            case "vhostfsd":
                daemons.Add(DaemonSpec.Vhostfsd(parse.GetValue(vhostfsdOption) ?? DaemonSpec.FindVhostfsd()));
                break;
            case "vhostfsd-jit":
                daemons.Add(DaemonSpec.VhostfsdJit(DaemonSpec.FindVhostfsdDll()));
                break;
            case "reference":
                if (!File.Exists(DaemonSpec.ReferencePath))
                {
                    Console.Error.WriteLine($"vhostfs-bench: the reference daemon {DaemonSpec.ReferencePath} is not installed (make deps, or apt-get install qemu-system-common)");
                    return 2;
                }
                daemons.Add(DaemonSpec.Reference());
                break;
            default:
                var named = Regex.Match(value, @"^([A-Za-z][A-Za-z0-9_-]*)=(.+)$", RegexOptions.Singleline);
                string name = named.Success ? named.Groups[1].Value : $"cmd{++custom}";
                daemons.Add(DaemonSpec.Custom(name, named.Success ? named.Groups[2].Value : value));
                break;
        }
    }
    if (daemons.Select(d => d.Name).Distinct().Count() != daemons.Count)
    {
        Console.Error.WriteLine("vhostfs-bench: a daemon is named twice");
        return 2;
    }

    var workloads = ParseList(parse.GetValue(workloadsOption) ?? "all", s => s).SelectMany(w => w == "all" ? Workload.AllNames : [w]).Distinct().ToList();
    foreach (string w in workloads)
    {
        if (!Workload.AllNames.Contains(w))
        {
            Console.Error.WriteLine($"vhostfs-bench: unknown workload '{w}' (one of {string.Join(", ", Workload.AllNames)})");
            return 2;
        }
    }
    var dirKinds = ParseList(parse.GetValue(dirKindOption) ?? (quick ? "tmpfs" : "tmpfs,disk"), s => s);
    if (dirKinds.Any(k => k is not ("tmpfs" or "disk")))
    {
        Console.Error.WriteLine("vhostfs-bench: --dir-kind is tmpfs, disk or both");
        return 2;
    }
    var callers = ParseList(parse.GetValue(callersOption) ?? "1,16", s => int.Parse(s, CultureInfo.InvariantCulture));
    var queues = ParseList(parse.GetValue(queuesOption) ?? "1,4", s => int.Parse(s, CultureInfo.InvariantCulture));
    if (callers.Any(c => c < 1 || c > 256) || queues.Any(q => q < 1 || q > 64))
    {
        Console.Error.WriteLine("vhostfs-bench: callers are 1..256 and queues 1..64");
        return 2;
    }
    var settings = new BenchSettings
    {
        Daemons = daemons,
        DirKinds = dirKinds,
        Workloads = workloads,
        Callers = callers,
        Queues = queues,
        Repeat = Math.Max(1, parse.GetValue(repeatOption) ?? (quick ? 1 : 3)),
        Budget = new Budget(
            TimeSpan.FromSeconds(parse.GetValue(warmupOption) ?? (quick ? 0.1 : 3)),
            TimeSpan.FromSeconds(parse.GetValue(durationOption) ?? (quick ? 0.4 : 2)),
            parse.GetValue(opsOption) ?? 0),
        Shape = quick ? DatasetShape.Quick : DatasetShape.Full,
        Native = !parse.GetValue(noNativeOption),
        FuseMountExecutable = parse.GetValue(fuseMountOption) ? parse.GetValue(vhostfsdOption) ?? DaemonSpec.FindVhostfsd() : null,
        JsonPath = parse.GetValue(jsonOption),
        ProfileCommand = parse.GetValue(profileOption),
        WarmupUntilJitIdle = !quick,
    };

    string machine = Machine.Describe();
    string commandLine = "vhostfs-bench " + string.Join(' ', args);
    Console.Error.WriteLine($"vhostfs-bench: {machine}");
    foreach (var d in daemons)
    {
        Console.Error.WriteLine($"  {d.Name}: {d.Display}");
    }
    if (settings.FuseMountExecutable != null)
    {
        Console.Error.WriteLine($"  {FuseMountUnderTest.Name}: {FuseMountUnderTest.Display(settings.FuseMountExecutable)}");
    }
    var run = new BenchRun(settings, line => Console.Error.WriteLine(line));
    try
    {
        run.Execute();
    }
    catch (BenchFailure e)
    {
        Console.Error.WriteLine($"vhostfs-bench: {e.Message}");
        return 1;
    }
    var rows = Report.Summarize(run.Results, daemons, workloads);
    Console.WriteLine($"Machine: {machine}");
    Console.WriteLine($"Command: {commandLine}");
    foreach (var (kind, start, end) in run.Loads)
    {
        Console.WriteLine($"Load average on {kind}: {start} at start, {end} at end");
    }
    if (run.Results.Count > 0)
    {
        var steals = run.Results.Select(c => c.StealPercent).Order().ToList();
        var worst = run.Results.MaxBy(c => c.StealPercent)!;
        Console.WriteLine($"Host CPU stolen by the hypervisor in the measured phases: median {steals[steals.Count / 2]:F1}%, " +
            $"highest {worst.StealPercent:F1}% ({worst.DirKind} {worst.Workload} {worst.Daemon} callers {worst.Callers} queues {worst.QueuesUsed} rep {worst.Repetition + 1})");
    }
    foreach (var d in daemons)
    {
        Console.WriteLine($"{d.Name}: {d.Display}");
    }
    if (settings.FuseMountExecutable != null)
    {
        Console.WriteLine($"{FuseMountUnderTest.Name}: {FuseMountUnderTest.Display(settings.FuseMountExecutable)}, driven by the native workload code on the mount point");
    }
    Console.WriteLine($"Medians of {settings.Repeat} repetition(s), {(settings.Budget.ByOps ? $"{settings.Budget.Ops} ops" : $"{settings.Budget.Duration.TotalSeconds} s")} per cell " +
        $"after {settings.Budget.Warmup.TotalSeconds} s warm-up; rates are per second.");
    Console.WriteLine();
    Console.Write(Report.Table(rows, Report.Baseline(daemons)));
    Console.Write(Report.StartupTable(run.Results));
    if (settings.JsonPath != null)
    {
        Report.WriteJson(settings.JsonPath, settings, machine, run.Loads, run.Results, rows, commandLine);
    }
    return 0;
});

return root.Parse(args).Invoke();

static List<T> ParseList<T>(string text, Func<string, T> parse) =>
    text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(parse).ToList();

/// <summary>One line about the machine for the report.</summary>
internal static class Machine
{
    public static string Describe()
    {
        string cpu = "?";
        try
        {
            cpu = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))?.Split(':', 2)[1].Trim() ?? "?";
        }
        catch (IOException)
        {
        }
        string kernel = TryRead("/proc/sys/kernel/osrelease");
        long memKb = 0;
        try
        {
            string? line = File.ReadLines("/proc/meminfo").FirstOrDefault(l => l.StartsWith("MemTotal:", StringComparison.Ordinal));
            if (line != null)
            {
                memKb = long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture);
            }
        }
        catch (IOException)
        {
        }
        return $"{Environment.ProcessorCount} CPUs ({cpu}), {memKb >> 20} GiB, Linux {kernel}, .NET {Environment.Version}";
    }

    private static string TryRead(string path)
    {
        try
        {
            return File.ReadAllText(path).Trim();
        }
        catch (IOException)
        {
            return "?";
        }
    }
}
