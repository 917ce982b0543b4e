using System.Text.RegularExpressions;

namespace Vhostfsd.E2E;

/// <summary>What the guest reported on its serial console: the E2E-* markers printed by
/// scripts/e2e/guest/init and suite.sh, and any kernel crash text.</summary>
public sealed partial class GuestConsole
{
    /// <summary>The console, one line per entry, without CR and terminal escape sequences.</summary>
    public IReadOnlyList<string> Lines { get; }

    public bool Booted { get; private set; }

    /// <summary>Step name to its status word ("OK" or "SKIP"), for steps that did not fail.</summary>
    public IReadOnlyDictionary<string, string> Steps => _steps;

    /// <summary>"E2E-FAIL name why" lines, as "name why".</summary>
    public IReadOnlyList<string> Failures => _failures;

    /// <summary>The status the guest script finished with, or null when E2E-DONE never came.</summary>
    public int? DoneStatus { get; private set; }

    /// <summary>"E2E-MD5 file sum" lines: file name to md5 hex.</summary>
    public IReadOnlyDictionary<string, string> Md5 => _md5;

    /// <summary>"E2E-INFO key value" lines.</summary>
    public IReadOnlyDictionary<string, string> Info => _info;

    /// <summary>Guest kernel log lines that mention fuse or virtio, with their priority (0 emerg .. 7 debug).</summary>
    public IReadOnlyList<(int Priority, string Text)> KernelLog => _kernelLog;

    /// <summary>Console lines that show the guest kernel crashed or hit a bug.</summary>
    public IReadOnlyList<string> KernelCrashLines => _crashes;

    private readonly Dictionary<string, string> _steps = new(StringComparer.Ordinal);
    private readonly List<string> _failures = [];
    private readonly Dictionary<string, string> _md5 = new(StringComparer.Ordinal);
    private readonly Dictionary<string, string> _info = new(StringComparer.Ordinal);
    private readonly List<(int, string)> _kernelLog = [];
    private readonly List<string> _crashes = [];

    private GuestConsole(List<string> lines)
    {
        Lines = lines;
        foreach (var line in lines)
        {
            Classify(line);
        }
    }

    public static GuestConsole Parse(string serialLog)
    {
        var lines = new List<string>();
        foreach (var raw in serialLog.Split('\n'))
        {
            lines.Add(TerminalEscape().Replace(raw, "").TrimEnd('\r'));
        }
        return new GuestConsole(lines);
    }

    /// <summary>Kernel log lines at warning level or worse (priority 0..4) about fuse/virtio.</summary>
    public IEnumerable<string> KernelErrors()
    {
        foreach (var (priority, text) in _kernelLog)
        {
            if (priority <= 4)
            {
                yield return $"<{priority}> {text}";
            }
        }
    }

    private void Classify(string line)
    {
        if (CrashText().IsMatch(line))
        {
            _crashes.Add(line);
        }
        var m = Marker().Match(line);
        if (!m.Success)
        {
            return;
        }
        var rest = m.Groups["rest"].Value.Trim();
        switch (m.Groups["kind"].Value)
        {
            case "BOOT":
                Booted = true;
                break;
            case "STEP":
                {
                    var parts = rest.Split(' ', 3, StringSplitOptions.RemoveEmptyEntries);
                    if (parts.Length >= 2)
                    {
                        _steps[parts[0]] = parts[1];
                    }
                    break;
                }
            case "FAIL":
                _failures.Add(rest);
                break;
            case "DONE":
                {
                    var done = DoneStatusText().Match(rest);
                    if (done.Success)
                    {
                        DoneStatus = int.Parse(done.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
                    }
                    break;
                }
            case "MD5":
                {
                    var parts = rest.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                    if (parts.Length == 2)
                    {
                        _md5[parts[0]] = parts[1];
                    }
                    break;
                }
            case "INFO":
                {
                    var parts = rest.Split(' ', 2, StringSplitOptions.RemoveEmptyEntries);
                    if (parts.Length == 2)
                    {
                        _info[parts[0]] = parts[1];
                    }
                    break;
                }
            case "DMESG":
                {
                    var parts = rest.Split(' ', 2);
                    if (parts.Length == 2 && int.TryParse(parts[0], out var priority))
                    {
                        _kernelLog.Add((priority, parts[1]));
                    }
                    break;
                }
        }
    }

    // CSI sequences (ESC [ ... letter) and the two-byte ESC c reset SeaBIOS prints.
    [GeneratedRegex(@"\x1b(\[[0-9;?]*[A-Za-z]|c)")]
    private static partial Regex TerminalEscape();

    [GeneratedRegex(@"E2E-(?<kind>BOOT|STEP|FAIL|DONE|MD5|INFO|DMESG)\b(?<rest>.*)$")]
    private static partial Regex Marker();

    [GeneratedRegex(@"^rc=(-?\d+)")]
    private static partial Regex DoneStatusText();

    [GeneratedRegex(@"Kernel panic|BUG:|Oops|general protection fault|WARNING: CPU:|Call Trace:")]
    private static partial Regex CrashText();
}
