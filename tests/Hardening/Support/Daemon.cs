using System.Globalization;
using System.Text.RegularExpressions;
using Vhostfsd.GuestKernelShim;
using Vhostfsd.Testing;

namespace Vhostfsd.Hardening.Support;

/// <summary>What the tests observe of a running daemon from the outside (/proc/PID), and the
/// fd lists it logs at debug level before and after its session.</summary>
public static partial class Observe
{
    /// <summary>The process serving the session: the daemon itself, or in the namespace sandbox the
    /// child it spawned (pid 1 of its namespace).</summary>
    public static int ServingPid(DaemonProcess daemon)
    {
        // A child spawned by another thread is listed under that thread's task.
        foreach (string task in Directory.GetDirectories($"/proc/{daemon.Pid}/task"))
        {
            string children = Path.Combine(task, "children");
            if (!File.Exists(children))
            {
                continue;
            }
            foreach (string pid in File.ReadAllText(children).Split(' ', StringSplitOptions.RemoveEmptyEntries))
            {
                if (File.Exists($"/proc/{pid}/cmdline") && File.ReadAllText($"/proc/{pid}/cmdline").Contains("vhostfsd", StringComparison.Ordinal))
                {
                    return int.Parse(pid, CultureInfo.InvariantCulture);
                }
            }
        }
        return daemon.Pid;
    }

    /// <summary>Open fds of <paramref name="pid"/> (-1 when it is gone).</summary>
    public static int FdCount(int pid)
    {
        try
        {
            return Directory.GetFiles($"/proc/{pid}/fd").Length;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return -1;
        }
    }

    /// <summary>Resident set size in KiB (-1 when the process is gone).</summary>
    public static long RssKb(int pid)
    {
        try
        {
            foreach (string line in File.ReadLines($"/proc/{pid}/status"))
            {
                if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
                {
                    return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture);
                }
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
        return -1;
    }

    [GeneratedRegex(@"open fds (before|after) the session: (\d+) \[(.*) \]")]
    private static partial Regex FdReportLine();

    [GeneratedRegex(@"(\d+)=(.*?)(?= \d+=|$)")]
    private static partial Regex FdEntry();

    /// <summary>The fd lists the daemon logged (needs --log-level=debug): fd number -> target.</summary>
    public static (Dictionary<int, string>? Before, Dictionary<int, string>? After) FdReports(string output)
    {
        Dictionary<int, string>? before = null, after = null;
        foreach (Match m in FdReportLine().Matches(output))
        {
            var fds = new Dictionary<int, string>();
            // Targets may hold spaces ("/memfd:x (deleted)"): an entry runs up to the next " N=".
            foreach (Match item in FdEntry().Matches(m.Groups[3].Value))
            {
                fds[int.Parse(item.Groups[1].Value, CultureInfo.InvariantCulture)] = item.Groups[2].Value;
            }
            if (m.Groups[1].Value == "before")
            {
                before = fds;
            }
            else
            {
                after = fds;
            }
        }
        return (before, after);
    }

    /// <summary>Null when every fd open after the session was already open before it (same target);
    /// otherwise the leftovers.</summary>
    public static string? SessionLeftovers(DaemonProcess daemon)
    {
        // The output is read asynchronously: give the last lines a moment to arrive after the exit.
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(5);
        while (!daemon.Output.Contains("open fds after the session", StringComparison.Ordinal) && DateTime.UtcNow < deadline)
        {
            Thread.Sleep(20);
        }
        var (before, after) = FdReports(daemon.Output);
        if (before == null || after == null)
        {
            return "the daemon did not log its fd lists (run it with --log-level=debug):\n" + Tail(daemon.Output);
        }
        var extra = new List<string>();
        foreach (var (fd, target) in after)
        {
            // Assemblies the runtime loads on first use keep an fd on their file: the runtime's, not the session's.
            if ((!before.TryGetValue(fd, out string? was) || was != target) && !target.EndsWith(".dll", StringComparison.Ordinal))
            {
                extra.Add($"{fd}={target}");
            }
        }
        return extra.Count == 0 ? null : $"fds left after the session: {string.Join(", ", extra)} (before: {before.Count}, after: {after.Count})";
    }

    public static string Tail(string output, int lines = 40)
    {
        var all = output.Split('\n');
        return string.Join('\n', all[Math.Max(0, all.Length - lines)..]);
    }

    /// <summary>Connects the shim with <paramref name="queues"/> request queues and mounts.</summary>
    public static FuseFs Mount(DaemonProcess daemon, int queues = 1, ulong memory = 256UL << 20)
        => daemon.Mount(deviceOptions: new VirtioFsBackendOptions { Register = false, NumRequestQueues = queues, MemorySize = memory });
}
