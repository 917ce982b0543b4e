using System.Globalization;
using System.Text;
using System.Text.Json;

namespace Vhostfsd.Bench;

/// <summary>The medians of one (directory kind, workload, daemon, callers, queues) over the repetitions.</summary>
public sealed record SummaryRow(string DirKind, string Workload, string Unit, string Daemon, int Callers, int Queues, int Samples,
    double Rate, double P50Us, double P99Us, double CpuSeconds, double CpuUsPerUnit, double DriverCpuUsPerUnit, double SleepsPerStep, long PeakRssBytes,
    double? VsBaseline, double? VsNative, string? Note);

/// <summary>Turns cell results into the table (Markdown, so it can go into the README as printed) and JSON.</summary>
public static class Report
{
    public static string FormatRate(double rate) => rate switch
    {
        >= 100 => rate.ToString("N0", CultureInfo.InvariantCulture),
        >= 10 => rate.ToString("F1", CultureInfo.InvariantCulture),
        _ => rate.ToString("F2", CultureInfo.InvariantCulture),
    };

    public static double Median(IEnumerable<double> values)
    {
        var sorted = values.Where(v => !double.IsNaN(v)).OrderBy(v => v).ToArray();
        if (sorted.Length == 0)
        {
            return double.NaN;
        }
        int mid = sorted.Length / 2;
        return sorted.Length % 2 == 1 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
    }

    /// <summary>The daemon other daemons are compared with: the reference when it ran, else the second daemon.</summary>
    public static string? Baseline(IReadOnlyList<DaemonSpec> daemons) =>
        daemons.FirstOrDefault(d => d.IsReference)?.Name ?? (daemons.Count > 1 ? daemons[1].Name : null);

    public static List<SummaryRow> Summarize(IReadOnlyList<CellResult> results, IReadOnlyList<DaemonSpec> daemons, IReadOnlyList<string> workloadOrder)
    {
        string? baseline = Baseline(daemons);
        var daemonOrder = daemons.Select(d => d.Name).Append(FuseMountUnderTest.Name).Append("native").ToList();
        var groups = results
            .GroupBy(r => (r.DirKind, r.Workload, r.Daemon, r.Callers, r.QueuesUsed))
            .Select(g =>
            {
                var cells = g.ToList();
                double rate = Median(cells.Select(c => c.Rate));
                return new SummaryRow(g.Key.DirKind, g.Key.Workload, cells[0].Unit, g.Key.Daemon, g.Key.Callers, g.Key.QueuesUsed, cells.Count,
                    rate, Median(cells.Select(c => c.P50Us)), Median(cells.Select(c => c.P99Us)),
                    Median(cells.Select(c => c.CpuSeconds)),
                    Median(cells.Select(c => c.CpuSeconds * 1e6 / Math.Max(1e-9, c.Rate * c.ElapsedSeconds))),
                    Median(cells.Select(c => c.DriverCpuSeconds * 1e6 / Math.Max(1e-9, c.Rate * c.ElapsedSeconds))),
                    Median(cells.Select(c => c.SleepsPerStep)),
                    cells.Max(c => c.PeakRssBytes), null, null, cells.Select(c => c.Note).FirstOrDefault(n => n != null));
            })
            .ToList();
        var rows = new List<SummaryRow>();
        foreach (var row in groups)
        {
            double? vsBaseline = null;
            // The host FUSE mount is compared with native only: its client is the host kernel, not the shim.
            if (baseline != null && row.Daemon != baseline && row.Daemon is not ("native" or FuseMountUnderTest.Name))
            {
                var candidates = groups.Where(b => b.DirKind == row.DirKind && b.Workload == row.Workload && b.Callers == row.Callers && b.Daemon == baseline).ToList();
                var match = candidates.FirstOrDefault(b => b.Queues == row.Queues) ?? candidates.OrderByDescending(b => b.Queues).FirstOrDefault();
                if (match != null && match.Rate > 0)
                {
                    vsBaseline = row.Rate / match.Rate;
                }
            }
            double? vsNative = null;
            if (row.Daemon != "native")
            {
                var native = groups.FirstOrDefault(n => n.DirKind == row.DirKind && n.Workload == row.Workload && n.Callers == row.Callers && n.Daemon == "native");
                if (native != null && native.Rate > 0)
                {
                    vsNative = row.Rate / native.Rate;
                }
            }
            rows.Add(row with { VsBaseline = vsBaseline, VsNative = vsNative });
        }
        return rows
            .OrderBy(r => r.DirKind)
            .ThenBy(r => IndexOr(workloadOrder, r.Workload))
            .ThenBy(r => r.Callers)
            .ThenBy(r => IndexOr(daemonOrder, r.Daemon))
            .ThenBy(r => r.Queues)
            .ToList();
    }

    private static int IndexOr(IReadOnlyList<string> list, string value)
    {
        for (int i = 0; i < list.Count; i++)
        {
            if (list[i] == value)
            {
                return i;
            }
        }
        return int.MaxValue;
    }

    public static string Table(IReadOnlyList<SummaryRow> rows, string? baseline)
    {
        var sb = new StringBuilder();
        string vs = baseline == null ? "vs other" : $"vs {baseline}";
        foreach (var kind in rows.Select(r => r.DirKind).Distinct())
        {
            sb.AppendLine($"Directory: {kind}");
            sb.AppendLine();
            sb.AppendLine($"| workload | daemon | callers | queues | rate | unit | p50 µs | p99 µs | daemon CPU s | CPU µs/unit | driver CPU µs/unit | sleeps/op | peak RSS MiB | {vs} | vs native |");
            sb.AppendLine("|---|---|--:|--:|--:|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
            foreach (var r in rows.Where(r => r.DirKind == kind))
            {
                bool native = r.Daemon == "native";
                string unitName = r.Unit.Replace("/s", "", StringComparison.Ordinal);
                sb.Append("| ").Append(r.Workload)
                    .Append(" | ").Append(r.Daemon)
                    .Append(" | ").Append(r.Callers)
                    .Append(" | ").Append(native || r.Queues == 0 ? "-" : r.Queues.ToString(CultureInfo.InvariantCulture))
                    .Append(" | ").Append(FormatRate(r.Rate))
                    .Append(" | ").Append(r.Unit)
                    .Append(" | ").Append(r.P50Us.ToString("F1", CultureInfo.InvariantCulture))
                    .Append(" | ").Append(r.P99Us.ToString("F1", CultureInfo.InvariantCulture))
                    .Append(" | ").Append(native ? "-" : r.CpuSeconds.ToString("F2", CultureInfo.InvariantCulture))
                    .Append(" | ").Append(native ? "-" : r.CpuUsPerUnit.ToString("F1", CultureInfo.InvariantCulture) + "/" + TrimUnit(unitName))
                    .Append(" | ").Append(r.DriverCpuUsPerUnit.ToString("F1", CultureInfo.InvariantCulture) + "/" + TrimUnit(unitName))
                    .Append(" | ").Append(native ? "-" : r.SleepsPerStep.ToString("F2", CultureInfo.InvariantCulture))
                    .Append(" | ").Append(native ? "-" : (r.PeakRssBytes / 1048576.0).ToString("F0", CultureInfo.InvariantCulture))
                    .Append(" | ").Append(r.VsBaseline is double b ? b.ToString("F2", CultureInfo.InvariantCulture) + "×" : "-")
                    .Append(" | ").Append(r.VsNative is double n ? n.ToString("P0", CultureInfo.InvariantCulture).Replace(" ", "", StringComparison.Ordinal) : "-")
                    .AppendLine(r.Note != null ? $" {r.Note} |" : " |");
            }
            sb.AppendLine();
        }
        return sb.ToString();
    }

    private static string TrimUnit(string unit) => unit switch
    {
        "ops" => "op",
        "entries" => "entry",
        _ => unit,
    };

    /// <summary>Start-up and idle figures per daemon (medians over its cells): time from exec to the socket existing
    /// and to INIT answered, resident (RSS, shared pages counted in every process) and private (USS) memory of its
    /// process tree when connected and idle, and its threads.</summary>
    public static string StartupTable(IReadOnlyList<CellResult> results)
    {
        var sb = new StringBuilder();
        sb.AppendLine("| daemon | start → socket ms | start → INIT answered ms | idle RSS MiB | idle USS MiB | processes' threads | cells |");
        sb.AppendLine("|---|--:|--:|--:|--:|--:|--:|");
        foreach (var g in results.Where(r => r.Daemon != "native").GroupBy(r => r.Daemon))
        {
            sb.Append("| ").Append(g.Key)
                .Append(" | ").Append(Median(g.Select(c => c.ListenMs)).ToString("F0", CultureInfo.InvariantCulture))
                .Append(" | ").Append(Median(g.Select(c => c.ReadyMs)).ToString("F0", CultureInfo.InvariantCulture))
                .Append(" | ").Append(Median(g.Select(c => c.IdleRssBytes / 1048576.0)).ToString("F1", CultureInfo.InvariantCulture))
                .Append(" | ").Append(Median(g.Select(c => c.IdleUssBytes / 1048576.0)).ToString("F1", CultureInfo.InvariantCulture))
                .Append(" | ").Append(Median(g.Select(c => (double)c.DaemonThreads)).ToString("F0", CultureInfo.InvariantCulture))
                .Append(" | ").Append(g.Count())
                .AppendLine(" |");
        }
        return sb.ToString();
    }

    public static void WriteJson(string path, BenchSettings settings, string machine, IReadOnlyList<(string DirKind, string Start, string End)> loads,
        IReadOnlyList<CellResult> cells, IReadOnlyList<SummaryRow> rows, string commandLine)
    {
        using var stream = path == "-" ? Console.OpenStandardOutput() : File.Create(path);
        using var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true });
        json.WriteStartObject();
        json.WriteString("command", commandLine);
        json.WriteString("machine", machine);
        json.WriteStartArray("daemons");
        foreach (var d in settings.Daemons)
        {
            json.WriteStartObject();
            json.WriteString("name", d.Name);
            json.WriteString("command", d.Display);
            json.WriteEndObject();
        }
        json.WriteEndArray();
        json.WriteNumber("repeat", settings.Repeat);
        json.WriteNumber("durationSeconds", settings.Budget.Duration.TotalSeconds);
        json.WriteNumber("warmupSeconds", settings.Budget.Warmup.TotalSeconds);
        json.WriteNumber("ops", settings.Budget.Ops);
        json.WriteStartArray("load");
        foreach (var (kind, start, end) in loads)
        {
            json.WriteStartObject();
            json.WriteString("dirKind", kind);
            json.WriteString("start", start);
            json.WriteString("end", end);
            json.WriteEndObject();
        }
        json.WriteEndArray();
        json.WriteStartArray("summary");
        foreach (var r in rows)
        {
            json.WriteStartObject();
            json.WriteString("dirKind", r.DirKind);
            json.WriteString("workload", r.Workload);
            json.WriteString("daemon", r.Daemon);
            json.WriteNumber("callers", r.Callers);
            json.WriteNumber("queues", r.Queues);
            json.WriteNumber("samples", r.Samples);
            json.WriteNumber("rate", Round(r.Rate));
            json.WriteString("unit", r.Unit);
            json.WriteNumber("p50Us", Round(r.P50Us));
            json.WriteNumber("p99Us", Round(r.P99Us));
            WriteNumberOrNull(json, "daemonCpuSeconds", r.CpuSeconds);
            WriteNumberOrNull(json, "cpuUsPerUnit", r.CpuUsPerUnit);
            WriteNumberOrNull(json, "driverCpuUsPerUnit", r.DriverCpuUsPerUnit);
            WriteNumberOrNull(json, "sleepsPerOp", r.SleepsPerStep);
            json.WriteNumber("peakRssBytes", r.PeakRssBytes);
            WriteNumberOrNull(json, "vsBaseline", r.VsBaseline ?? double.NaN);
            WriteNumberOrNull(json, "vsNative", r.VsNative ?? double.NaN);
            if (r.Note != null)
            {
                json.WriteString("note", r.Note);
            }
            json.WriteEndObject();
        }
        json.WriteEndArray();
        json.WriteStartArray("cells");
        foreach (var c in cells)
        {
            json.WriteStartObject();
            json.WriteString("dirKind", c.DirKind);
            json.WriteString("workload", c.Workload);
            json.WriteString("daemon", c.Daemon);
            json.WriteNumber("callers", c.Callers);
            json.WriteNumber("queuesAsked", c.QueuesAsked);
            json.WriteNumber("queuesUsed", c.QueuesUsed);
            json.WriteNumber("repetition", c.Repetition);
            json.WriteNumber("rate", Round(c.Rate));
            json.WriteNumber("p50Us", Round(c.P50Us));
            json.WriteNumber("p99Us", Round(c.P99Us));
            json.WriteNumber("steps", c.Steps);
            json.WriteNumber("elapsedSeconds", Round(c.ElapsedSeconds));
            json.WriteNumber("warmupSeconds", Round(c.WarmupSeconds));
            WriteNumberOrNull(json, "daemonCpuSeconds", c.CpuSeconds);
            WriteNumberOrNull(json, "driverCpuSeconds", c.DriverCpuSeconds);
            WriteNumberOrNull(json, "sleepsPerOp", c.SleepsPerStep);
            json.WriteNumber("stealPercent", Round(c.StealPercent));
            json.WriteNumber("peakRssBytes", c.PeakRssBytes);
            json.WriteNumber("listenMs", Round(c.ListenMs));
            json.WriteNumber("idleRssBytes", c.IdleRssBytes);
            json.WriteNumber("idleUssBytes", c.IdleUssBytes);
            json.WriteNumber("readyMs", Round(c.ReadyMs));
            json.WriteNumber("daemonThreads", c.DaemonThreads);
            json.WriteEndObject();
        }
        json.WriteEndArray();
        json.WriteEndObject();
    }

    private static double Round(double value) => Math.Round(value, 3);

    private static void WriteNumberOrNull(Utf8JsonWriter json, string name, double value)
    {
        if (double.IsNaN(value) || double.IsInfinity(value))
        {
            json.WriteNull(name);
        }
        else
        {
            json.WriteNumber(name, Round(value));
        }
    }
}
