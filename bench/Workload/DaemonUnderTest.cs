using System.Diagnostics;
using System.Globalization;
using System.Text;
using Vhostfsd.Posix;

namespace Vhostfsd.Bench;

/// <summary>What a workload needs the daemon to let the guest cache.</summary>
public enum DaemonCaching
{
    /// <summary>Nothing: every request reaches the daemon (cache=none / never).</summary>
    None,
    /// <summary>File pages kept across opens (cache=always: FOPEN_KEEP_CACHE, long timeouts).</summary>
    Always,
    /// <summary>cache=always and FUSE_WRITEBACK_CACHE granted.</summary>
    Writeback,
}

/// <summary>A daemon the benchmark can start: a name for the table and the command line built from the
/// socket path, the shared directory and the caching a workload needs (a custom command is run as given).</summary>
public sealed class DaemonSpec
{
    public const string ReferencePath = "/usr/lib/qemu/virtiofsd";

    private readonly Func<string, string, DaemonCaching, (string File, IReadOnlyList<string> Args)> _command;

    private DaemonSpec(string name, string display, Func<string, string, DaemonCaching, (string, IReadOnlyList<string>)> command)
    {
        Name = name;
        Display = display;
        _command = command;
    }

    /// <summary>Short name used in the table ("vhostfsd", "reference", "custom1").</summary>
    public string Name { get; }

    /// <summary>The command line with {socket} and {dir} placeholders, for the report.</summary>
    public string Display { get; }

    public bool IsReference => Name == "reference";

    public (string File, IReadOnlyList<string> Args) Command(string socket, string dir, DaemonCaching caching = DaemonCaching.None) =>
        _command(socket, dir, caching);

    /// <summary>vhostfsd's arguments besides the socket, the directory and the caching: the same sandbox as
    /// the reference (chroot), so both serve every request from one process.</summary>
    private static readonly string[] VhostfsdArgs = ["--sandbox", "chroot", "--log-level", "warn"];

    /// <summary>The guest caches off (--cache never), or for the cached workloads --cache always (and --writeback).</summary>
    private static string[] CachingArgs(DaemonCaching caching) => caching switch
    {
        DaemonCaching.None => ["--cache", "never"],
        DaemonCaching.Writeback => ["--cache", "always", "--writeback"],
        _ => ["--cache", "always"],
    };

    private const string CachingNote = "--cache never (cached workloads: --cache always [--writeback])";

    /// <summary>vhostfsd as it ships, the native executable, with <see cref="VhostfsdArgs"/>.</summary>
    public static DaemonSpec Vhostfsd(string executable) =>
        new("vhostfsd", $"{executable} --socket-path {{socket}} --shared-dir {{dir}} {string.Join(' ', VhostfsdArgs)} {CachingNote}",
            (socket, dir, caching) => (executable, ["--socket-path", socket, "--shared-dir", dir, .. CachingArgs(caching), .. VhostfsdArgs]));

    /// <summary>The same daemon on the JIT (dotnet vhostfsd.dll, the debugging build), for comparing the two.</summary>
    public static DaemonSpec VhostfsdJit(string dll)
    {
        string dotnet = FindDotnet();
        return new DaemonSpec("vhostfsd-jit", $"{dotnet} {dll} --socket-path {{socket}} --shared-dir {{dir}} {string.Join(' ', VhostfsdArgs)} {CachingNote}",
            (socket, dir, caching) => (dotnet, [dll, "--socket-path", socket, "--shared-dir", dir, .. CachingArgs(caching), .. VhostfsdArgs]));
    }

    /// <summary>QEMU 7.2's C virtiofsd with cache=none (cache=always, and writeback, for the cached workloads; its
    /// default --thread-pool-size is 0: requests run inline on the queue thread).</summary>
    public static DaemonSpec Reference() =>
        new("reference",
            $"{ReferencePath} --socket-path={{socket}} -o source={{dir}} -o cache=none -o sandbox=chroot -o log_level=warn (cached workloads: -o cache=always [-o writeback])",
            (socket, dir, caching) => (ReferencePath, ["--socket-path=" + socket, "-o", "source=" + dir,
                "-o", caching == DaemonCaching.None ? "cache=none" : "cache=always", .. caching == DaemonCaching.Writeback ? ["-o", "writeback"] : Array.Empty<string>(),
                "-o", "sandbox=chroot", "-o", "log_level=warn"]));

    /// <summary>Any command with {socket} and {dir}, run through /bin/sh with exec (so the pid is the daemon's).</summary>
    public static DaemonSpec Custom(string name, string template)
    {
        if (!template.Contains("{socket}", StringComparison.Ordinal) || !template.Contains("{dir}", StringComparison.Ordinal))
        {
            throw new ArgumentException($"a daemon command needs {{socket}} and {{dir}}: {template}");
        }
        return new DaemonSpec(name, template, (socket, dir, _) =>
            ("/bin/sh", ["-c", "exec " + template.Replace("{socket}", ShellQuote(socket), StringComparison.Ordinal)
                .Replace("{dir}", ShellQuote(dir), StringComparison.Ordinal)]));
    }

    private static string ShellQuote(string s) => "'" + s.Replace("'", "'\\''", StringComparison.Ordinal) + "'";

    internal static string FindDotnet()
    {
        if (Environment.ProcessPath is string host && Path.GetFileNameWithoutExtension(host) == "dotnet")
        {
            return host;
        }
        foreach (string dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            string candidate = Path.Combine(dir, "dotnet");
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }
        return "dotnet";
    }

    /// <summary>The native vhostfsd (src/Vhostfsd/bin/CONFIG/native/vhostfsd, published by make build) above this
    /// program.</summary>
    public static string FindVhostfsd() => FindBuilt(Path.Combine("native", "vhostfsd"));

    /// <summary>The JIT build's vhostfsd.dll (src/Vhostfsd/bin/CONFIG/net10.0) above this program.</summary>
    public static string FindVhostfsdDll() => FindBuilt(Path.Combine("net10.0", "vhostfsd.dll"));

    private static string FindBuilt(string file)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
        {
            foreach (string config in new[] { "Release", "Debug" })
            {
                string candidate = Path.Combine(dir.FullName, "src", "Vhostfsd", "bin", config, file);
                if (File.Exists(candidate))
                {
                    return candidate;
                }
            }
        }
        throw new FileNotFoundException($"{file} was not found under src/Vhostfsd/bin/CONFIG; run 'make build' first (or pass --vhostfsd)");
    }
}

/// <summary>One running daemon: started on a fresh socket, with the time it took to listen, and the CPU and
/// memory of its process tree from /proc.</summary>
public sealed class DaemonUnderTest : IDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _output = new();
    private readonly string _runDir;
    private bool _disposed;

    private DaemonUnderTest(DaemonSpec spec, Process process, string runDir, string socket)
    {
        Spec = spec;
        _process = process;
        _runDir = runDir;
        SocketPath = socket;
    }

    public DaemonSpec Spec { get; }
    public string SocketPath { get; }
    public int Pid => _process.Id;

    /// <summary>From process start to the socket existing.</summary>
    public TimeSpan TimeToListen { get; private set; }

    public string Output
    {
        get
        {
            lock (_output)
            {
                return _output.ToString();
            }
        }
    }

    public static DaemonUnderTest Start(DaemonSpec spec, string sharedDir, TimeSpan timeout, DaemonCaching caching = DaemonCaching.None)
    {
        string runDir = Directory.CreateTempSubdirectory("vhostfs-bench-run-").FullName;
        string socket = Path.Combine(runDir, "vfs.sock");
        var (file, args) = spec.Command(socket, sharedDir, caching);
        var info = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string arg in args)
        {
            info.ArgumentList.Add(arg);
        }
        var process = new Process { StartInfo = info };
        var daemon = new DaemonUnderTest(spec, process, runDir, socket);
        process.OutputDataReceived += (_, e) => daemon.Append(e.Data);
        process.ErrorDataReceived += (_, e) => daemon.Append(e.Data);
        long start = Stopwatch.GetTimestamp();
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        while (!File.Exists(socket))
        {
            if (process.HasExited)
            {
                process.WaitForExit();
                string output = daemon.Output;
                daemon.Dispose();
                throw new InvalidOperationException($"{spec.Name} exited with {process.ExitCode} before creating its socket:\n{output}");
            }
            if (Stopwatch.GetElapsedTime(start) > timeout)
            {
                string output = daemon.Output;
                daemon.Dispose();
                throw new TimeoutException($"{spec.Name} did not create {socket} within {timeout.TotalSeconds} s:\n{output}");
            }
            Thread.Sleep(1);
        }
        daemon.TimeToListen = Stopwatch.GetElapsedTime(start);
        return daemon;
    }

    private void Append(string? line)
    {
        if (line == null)
        {
            return;
        }
        lock (_output)
        {
            if (_output.Length < 64 * 1024)
            {
                _output.AppendLine(line);
            }
        }
    }

    /// <summary>The daemon's processes, as the bench measures them.</summary>
    public ProcessTree Tree => new(Pid);

    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        try
        {
            if (!_process.HasExited)
            {
                // The session is over: a daemon exits on disconnect; anything left is killed with its children.
                if (!_process.WaitForExit(2000))
                {
                    foreach (int pid in ProcStats.Descendants(_process.Id))
                    {
                        Libc.Kill(pid, 9);
                    }
                    Libc.Kill(_process.Id, 9);
                    _process.WaitForExit(10_000);
                }
            }
        }
        catch (InvalidOperationException)
        {
            // Never started.
        }
        _process.Dispose();
        try
        {
            Directory.Delete(_runDir, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}

/// <summary>Reads /proc: CPU time from /proc/PID/stat (utime + stime, clock ticks), memory from
/// /proc/PID/status, and the process tree from the ppid field.</summary>
public static class ProcStats
{
    private const double ClockTicksPerSecond = 100; // sysconf(_SC_CLK_TCK) on Linux x86_64

    public static double TreeCpuSeconds(int pid)
    {
        double total = 0;
        foreach (int p in Tree(pid))
        {
            total += CpuSeconds(p);
        }
        return total;
    }

    /// <summary>CPU seconds of the tree's threads whose name starts with <paramref name="namePrefix"/>.</summary>
    public static double TreeThreadCpuSeconds(int pid, string namePrefix)
    {
        double total = 0;
        foreach (string task in TreeTasks(pid))
        {
            string? comm = TryRead(Path.Combine(task, "comm"));
            if (comm != null && comm.StartsWith(namePrefix, StringComparison.Ordinal))
            {
                total += CpuSecondsOfStat(Path.Combine(task, "stat"));
            }
        }
        return total;
    }

    public static double CpuSeconds(int pid) => CpuSecondsOfStat($"/proc/{pid}/stat");

    /// <summary>The machine's CPU time so far from the first line of /proc/stat, in clock ticks: all of
    /// it, and the part stolen by the hypervisor (a vCPU that was runnable while the host ran
    /// something else). (0, 0) when unreadable.</summary>
    public static (long Total, long Steal) HostCpuTicks()
    {
        string? stat = TryRead("/proc/stat");
        if (stat == null || !stat.StartsWith("cpu ", StringComparison.Ordinal))
        {
            return (0, 0);
        }
        // cpu user nice system idle iowait irq softirq steal guest guest_nice; guest time is already in user.
        string[] fields = stat[..stat.IndexOf('\n')].Split(' ', StringSplitOptions.RemoveEmptyEntries);
        long total = 0;
        for (int i = 1; i <= Math.Min(8, fields.Length - 1); i++)
        {
            total += long.Parse(fields[i], CultureInfo.InvariantCulture);
        }
        long steal = fields.Length > 8 ? long.Parse(fields[8], CultureInfo.InvariantCulture) : 0;
        return (total, steal);
    }

    /// <summary>Percentage of the machine's CPU time stolen between two <see cref="HostCpuTicks"/> readings.</summary>
    public static double StealPercent((long Total, long Steal) before, (long Total, long Steal) after) =>
        after.Total > before.Total ? 100.0 * (after.Steal - before.Steal) / (after.Total - before.Total) : 0;

    private static double CpuSecondsOfStat(string path)
    {
        string? stat = TryRead(path);
        if (stat == null)
        {
            return 0;
        }
        // The command name may hold spaces and parentheses: fields start after the last ')'.
        string[] fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        // fields[0] is field 3 (state); utime is field 14, stime field 15.
        long utime = long.Parse(fields[11], CultureInfo.InvariantCulture);
        long stime = long.Parse(fields[12], CultureInfo.InvariantCulture);
        return (utime + stime) / ClockTicksPerSecond;
    }

    /// <summary>The largest <paramref name="key"/> (VmRSS or VmHWM) among the tree's processes plus the USS of every
    /// other process of the tree.</summary>
    public static long TreeResidentBytes(int pid, string key)
    {
        long largest = 0;
        int largestPid = pid;
        var tree = Tree(pid);
        foreach (int p in tree)
        {
            long value = TreeStatusBytes(p, key, 1024, includeDescendants: false);
            if (value > largest)
            {
                largest = value;
                largestPid = p;
            }
        }
        long others = 0;
        foreach (int p in tree)
        {
            if (p != largestPid)
            {
                others += UssBytes(p);
            }
        }
        return largest + others;
    }

    public static long TreeUssBytes(int pid)
    {
        long total = 0;
        foreach (int p in Tree(pid))
        {
            total += UssBytes(p);
        }
        return total;
    }

    private static long UssBytes(int pid)
    {
        string? rollup = TryRead($"/proc/{pid}/smaps_rollup");
        if (rollup == null)
        {
            return 0;
        }
        long total = 0;
        foreach (string line in rollup.Split('\n'))
        {
            foreach (string key in new[] { "Private_Clean:", "Private_Dirty:" })
            {
                if (line.StartsWith(key, StringComparison.Ordinal))
                {
                    total += long.Parse(line[key.Length..].Trim().Split(' ')[0], CultureInfo.InvariantCulture) * 1024;
                }
            }
        }
        return total;
    }

    public static long TreeContextSwitches(int pid)
    {
        long total = 0;
        foreach (string task in TreeTasks(pid))
        {
            string? status = TryRead(Path.Combine(task, "status"));
            if (status == null)
            {
                continue;
            }
            foreach (string line in status.Split('\n'))
            {
                if (line.StartsWith("voluntary_ctxt_switches:", StringComparison.Ordinal))
                {
                    total += long.Parse(line["voluntary_ctxt_switches:".Length..].Trim(), CultureInfo.InvariantCulture);
                }
            }
        }
        return total;
    }

    /// <summary>/proc/PID/task/TID of every thread of the tree's processes (a process that is gone is skipped).</summary>
    private static List<string> TreeTasks(int pid)
    {
        var tasks = new List<string>();
        foreach (int p in Tree(pid))
        {
            try
            {
                tasks.AddRange(Directory.EnumerateDirectories($"/proc/{p}/task"));
            }
            catch (IOException)
            {
                // The process exited since Tree() listed it.
            }
        }
        return tasks;
    }

    /// <summary>Sum over the tree of a "Key: N kB" line of /proc/PID/status, in bytes (or in units of
    /// <paramref name="scale"/> for counts such as Threads).</summary>
    public static long TreeStatusBytes(int pid, string key, long scale = 1024, bool includeDescendants = true)
    {
        long total = 0;
        foreach (int p in includeDescendants ? Tree(pid) : [pid])
        {
            string? status = TryRead($"/proc/{p}/status");
            if (status == null)
            {
                continue;
            }
            foreach (string line in status.Split('\n'))
            {
                if (line.StartsWith(key, StringComparison.Ordinal))
                {
                    string number = line[key.Length..].Trim().Split(' ')[0];
                    total += long.Parse(number, CultureInfo.InvariantCulture) * scale;
                    break;
                }
            }
        }
        return total;
    }

    public static List<int> Tree(int pid)
    {
        var list = new List<int> { pid };
        list.AddRange(Descendants(pid));
        return list;
    }

    public static List<int> Descendants(int pid)
    {
        var parents = new Dictionary<int, List<int>>();
        foreach (string dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), NumberStyles.None, CultureInfo.InvariantCulture, out int p))
            {
                continue;
            }
            string? stat = TryRead($"/proc/{p}/stat");
            if (stat == null)
            {
                continue;
            }
            string[] fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
            int ppid = int.Parse(fields[1], CultureInfo.InvariantCulture);
            if (!parents.TryGetValue(ppid, out var children))
            {
                parents[ppid] = children = new List<int>();
            }
            children.Add(p);
        }
        var result = new List<int>();
        var stack = new Stack<int>();
        stack.Push(pid);
        while (stack.Count > 0)
        {
            if (parents.TryGetValue(stack.Pop(), out var children))
            {
                foreach (int child in children)
                {
                    result.Add(child);
                    stack.Push(child);
                }
            }
        }
        return result;
    }

    private static string? TryRead(string path)
    {
        try
        {
            return File.ReadAllText(path);
        }
        catch (IOException)
        {
            return null;
        }
        catch (UnauthorizedAccessException)
        {
            return null;
        }
    }
}
