using System.Diagnostics;
using System.Globalization;
using System.Text;
using Xunit.Abstractions;

namespace Vhostfsd.E2E;

/// <summary>One configuration of the real-guest suite.</summary>
/// <param name="Name">Directory name of the run under .e2e-cache/runs.</param>
/// <param name="Daemon">The daemon serving the share.</param>
/// <param name="RequestQueues">num-request-queues of the QEMU device.</param>
/// <param name="Xattr">Start the daemon with xattr support and test xattrs in the guest.</param>
/// <param name="SocketActivation">Start the daemon the way a systemd socket unit does: the
/// listening socket comes in as fd 3 (systemd-socket-activate, --fd=3).</param>
public sealed record GuestRunOptions(string Name, DaemonKind Daemon, int RequestQueues, bool Xattr, bool SocketActivation = false);

/// <summary>A finished boot of the guest: scripts/e2e/run.sh's outputs, parsed.</summary>
public sealed class GuestRun
{
    /// <summary>How long QEMU may run (run.sh kills it after that).</summary>
    public const int GuestTimeoutSeconds = 300;

    /// <summary>How long the guest console may stay silent before run.sh gives up on it.
    /// The slowest step (1,000 files) takes 3-6 s, booting 10-30 s, on a loaded machine.</summary>
    public const int StallSeconds = 90;

    /// <summary>How long the whole script may take: the first run also downloads the kernel.</summary>
    private static readonly TimeSpan ScriptTimeout = TimeSpan.FromSeconds(GuestTimeoutSeconds + 240);

    public required GuestRunOptions Options { get; init; }
    public required string OutDirectory { get; init; }
    public required string ShareDirectory { get; init; }
    public required int ScriptStatus { get; init; }
    public required string ScriptOutput { get; init; }
    public required GuestConsole Console { get; init; }
    public required string DaemonLogText { get; init; }
    public required string QemuLogText { get; init; }
    public required IReadOnlyDictionary<string, string> Result { get; init; }

    /// <summary>Prepares a fresh share, boots the guest against the daemon and waits for it.</summary>
    public static GuestRun Execute(GuestRunOptions options, ITestOutputHelper output)
    {
        var dir = Path.Combine(RepositoryLayout.RunsDirectory, options.Name);
        if (Directory.Exists(dir))
        {
            Directory.Delete(dir, recursive: true);
        }
        var share = Path.Combine(dir, "share");
        var outDir = Path.Combine(dir, "out");
        Directory.CreateDirectory(share);
        Directory.CreateDirectory(outDir);
        HostShare.Prepare(share);

        var psi = new ProcessStartInfo("bash")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            WorkingDirectory = RepositoryLayout.Root,
        };
        psi.ArgumentList.Add(RepositoryLayout.RunScript);
        psi.ArgumentList.Add("--daemon");
        psi.ArgumentList.Add(options.Daemon == DaemonKind.Reference ? "reference" : "vhostfsd");
        psi.ArgumentList.Add("--share");
        psi.ArgumentList.Add(share);
        psi.ArgumentList.Add("--out");
        psi.ArgumentList.Add(outDir);
        psi.ArgumentList.Add("--queues");
        psi.ArgumentList.Add(options.RequestQueues.ToString(CultureInfo.InvariantCulture));
        psi.ArgumentList.Add("--timeout");
        psi.ArgumentList.Add(GuestTimeoutSeconds.ToString(CultureInfo.InvariantCulture));
        psi.ArgumentList.Add("--stall");
        psi.ArgumentList.Add(StallSeconds.ToString(CultureInfo.InvariantCulture));
        if (options.Xattr)
        {
            psi.ArgumentList.Add("--xattr");
        }
        if (options.SocketActivation)
        {
            psi.ArgumentList.Add("--socket-activation");
        }
        psi.Environment["CONFIG"] = RepositoryLayout.Configuration;
        var extra = DaemonLog.ExtraArguments(options.Daemon);
        var userExtra = Environment.GetEnvironmentVariable("E2E_DAEMON_ARGS");
        psi.Environment["E2E_DAEMON_ARGS"] = string.Join(' ', new[] { extra, userExtra ?? "" }).Trim();

        var text = new StringBuilder();
        var started = Stopwatch.StartNew();
        using (var p = new Process { StartInfo = psi })
        {
            p.OutputDataReceived += (_, e) => { if (e.Data is not null) { lock (text) { text.AppendLine(e.Data); } } };
            p.ErrorDataReceived += (_, e) => { if (e.Data is not null) { lock (text) { text.AppendLine(e.Data); } } };
            p.Start();
            p.StandardInput.Close();
            p.BeginOutputReadLine();
            p.BeginErrorReadLine();
            if (!p.WaitForExit(ScriptTimeout))
            {
                // run.sh's own timeout failed; take QEMU and the daemon down with it.
                p.Kill(entireProcessTree: true);
                p.WaitForExit();
                lock (text)
                {
                    text.AppendLine($"(harness: run.sh did not finish in {ScriptTimeout.TotalSeconds} s; killed it and its children)");
                }
            }
            p.WaitForExit(); // drains the output events
            var run = new GuestRun
            {
                Options = options,
                OutDirectory = outDir,
                ShareDirectory = share,
                ScriptStatus = p.HasExited ? p.ExitCode : -1,
                ScriptOutput = text.ToString(),
                Console = GuestConsole.Parse(ReadIfExists(Path.Combine(outDir, "serial.log"))),
                DaemonLogText = ReadIfExists(Path.Combine(outDir, "daemon.log")),
                QemuLogText = ReadIfExists(Path.Combine(outDir, "qemu.log")),
                Result = ParseResult(ReadIfExists(Path.Combine(outDir, "result"))),
            };
            output.WriteLine($"{options.Name}: run.sh exited {run.ScriptStatus} after {started.Elapsed.TotalSeconds:F1} s; " +
                $"guest booted after {run.ResultValue("boot_seconds")} s, finished after {run.ResultValue("done_seconds")} s; logs in {outDir}");
            return run;
        }
    }

    public string ResultValue(string key) => Result.TryGetValue(key, out var v) && v.Length > 0 ? v : "?";

    /// <summary>The logs of the run, for the test output when an assertion fails.</summary>
    public string Transcript()
    {
        var sb = new StringBuilder();
        sb.AppendLine($"=== {Options} in {OutDirectory}");
        sb.AppendLine("--- run.sh output").AppendLine(ScriptOutput.TrimEnd());
        sb.AppendLine("--- command").AppendLine(ReadIfExists(Path.Combine(OutDirectory, "command")).TrimEnd());
        sb.AppendLine("--- result").AppendLine(ReadIfExists(Path.Combine(OutDirectory, "result")).TrimEnd());
        sb.AppendLine("--- guest console (serial.log)").AppendLine(string.Join('\n', Console.Lines).TrimEnd());
        sb.AppendLine("--- daemon log").AppendLine(Tail(DaemonLogText, 200));
        sb.AppendLine("--- qemu.log").AppendLine(QemuLogText.TrimEnd());
        return sb.ToString();
    }

    private static string Tail(string text, int lines)
    {
        var all = text.TrimEnd().Split('\n');
        return all.Length <= lines
            ? string.Join('\n', all)
            : $"({all.Length - lines} earlier lines in daemon.log)\n" + string.Join('\n', all[^lines..]);
    }

    private static string ReadIfExists(string path) => File.Exists(path) ? File.ReadAllText(path) : "";

    private static Dictionary<string, string> ParseResult(string text)
    {
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var line in text.Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            var eq = line.IndexOf('=');
            if (eq > 0)
            {
                result[line[..eq]] = line[(eq + 1)..].Trim();
            }
        }
        return result;
    }
}
