using System.Diagnostics;
using System.Text;
using Vhostfsd.Posix;
using Vhostfsd.Testing;

namespace Vhostfsd.Tests;

/// <summary>Runs the real built vhostfsd (the native executable, <see cref="NativeExecutable"/>)
/// as a child process and collects its output line by line.</summary>
internal sealed class DaemonProcess : IDisposable
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    private readonly Process _process;
    private readonly List<string> _stderr = new();
    private readonly List<string> _stdout = new();
    private readonly object _sync = new();
    private bool _stderrClosed;
    private bool _stdoutClosed;

    private DaemonProcess(Process process)
    {
        _process = process;
    }

    public static string Executable => NativeExecutable.Find();

    public int Pid => _process.Id;

    public bool HasExited => _process.HasExited;

    /// <summary>Starts "vhostfsd ARGS" (or, with <paramref name="shellPrefix"/>, through
    /// bash -c "PREFIX exec vhostfsd ARGS"; bash because dash cannot redirect fds above 9)
    /// with SIGHUP, SIGINT and SIGTERM at their default disposition. <paramref name="runner"/>, when
    /// given, is a command that runs the daemon as its last arguments (setpriv to drop root).</summary>
    public static DaemonProcess Start(IEnumerable<string> args, IReadOnlyDictionary<string, string?>? environment = null, string? shellPrefix = null,
        IEnumerable<string>? runner = null)
    {
        var start = new ProcessStartInfo
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
            RedirectStandardInput = false,
            UseShellExecute = false,
        };
        // Through env(1), which resets the termination signals to their default action: an
        // ignored disposition survives exec, so a test run started under nohup, or as a
        // background job of a script (SIGINT ignored), would hand its ignores to the daemon, and
        // vhostfsd (like libfuse) leaves an inherited ignore alone.
        start.FileName = "/usr/bin/env";
        start.ArgumentList.Add("--default-signal=HUP,INT,TERM");
        foreach (string arg in runner ?? [])
        {
            start.ArgumentList.Add(arg);
        }
        if (shellPrefix == null)
        {
            start.ArgumentList.Add(Executable);
            foreach (string arg in args)
            {
                start.ArgumentList.Add(arg);
            }
        }
        else
        {
            start.ArgumentList.Add("/bin/bash");
            start.ArgumentList.Add("-c");
            var line = new StringBuilder(shellPrefix).Append(" exec ").Append(Quote(Executable));
            foreach (string arg in args)
            {
                line.Append(' ').Append(Quote(arg));
            }
            start.ArgumentList.Add(line.ToString());
        }
        start.Environment.Remove("RUST_LOG");
        start.Environment.Remove("LISTEN_PID");
        start.Environment.Remove("LISTEN_FDS");
        // Keep the runtime's diagnostics socket out of the way of sandbox tests.
        start.Environment["DOTNET_EnableDiagnostics"] = "0";
        if (environment != null)
        {
            foreach (var (key, value) in environment)
            {
                if (value == null)
                {
                    start.Environment.Remove(key);
                }
                else
                {
                    start.Environment[key] = value;
                }
            }
        }
        var process = new Process { StartInfo = start };
        var daemon = new DaemonProcess(process);
        process.ErrorDataReceived += (_, e) => daemon.Add(daemon._stderr, e.Data, stderr: true);
        process.OutputDataReceived += (_, e) => daemon.Add(daemon._stdout, e.Data, stderr: false);
        Assert.True(process.Start(), "could not start " + Executable);
        process.BeginErrorReadLine();
        process.BeginOutputReadLine();
        return daemon;
    }

    private static string Quote(string arg) => "'" + arg.Replace("'", "'\\''") + "'";

    /// <summary>Runs to completion and returns the exit code.</summary>
    public static (int Code, string Stdout, string Stderr) Run(IEnumerable<string> args, IReadOnlyDictionary<string, string?>? environment = null)
    {
        using var daemon = Start(args, environment);
        int code = daemon.WaitForExit();
        return (code, daemon.Stdout, daemon.Stderr);
    }

    private void Add(List<string> lines, string? line, bool stderr)
    {
        lock (_sync)
        {
            if (line == null)
            {
                if (stderr)
                {
                    _stderrClosed = true;
                }
                else
                {
                    _stdoutClosed = true;
                }
            }
            else
            {
                lines.Add(line);
            }
            Monitor.PulseAll(_sync);
        }
    }

    public string Stderr
    {
        get
        {
            lock (_sync)
            {
                return string.Join('\n', _stderr);
            }
        }
    }

    public string Stdout
    {
        get
        {
            lock (_sync)
            {
                return string.Join('\n', _stdout);
            }
        }
    }

    public List<string> StderrLines
    {
        get
        {
            lock (_sync)
            {
                return new List<string>(_stderr);
            }
        }
    }

    /// <summary>Waits until a stderr line contains <paramref name="text"/>; fails the test with
    /// everything logged so far if it does not come (or the process ends first).</summary>
    public string WaitForLine(string text, TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? Timeout);
        lock (_sync)
        {
            while (true)
            {
                foreach (string line in _stderr)
                {
                    if (line.Contains(text, StringComparison.Ordinal))
                    {
                        return line;
                    }
                }
                var left = deadline - DateTime.UtcNow;
                if (_stderrClosed || left <= TimeSpan.Zero)
                {
                    Assert.Fail($"no line containing \"{text}\" from vhostfsd; it wrote:\n{string.Join('\n', _stderr)}");
                }
                Monitor.Wait(_sync, left);
            }
        }
    }

    /// <summary>The pid of the process that serves, from the supervisor's debug line. That line may
    /// come after the serving process's own first lines, so it is waited for.</summary>
    public int ServingPid()
    {
        string line = WaitForLine("serving from process");
        var serving = System.Text.RegularExpressions.Regex.Match(line, @"serving from process (\d+)");
        Assert.True(serving.Success, line);
        return int.Parse(serving.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture);
    }

    /// <summary>Waits for the exit (and the end of its output) and returns the exit code.</summary>
    public int WaitForExit(TimeSpan? timeout = null)
    {
        if (!_process.WaitForExit(timeout ?? Timeout))
        {
            _process.Kill(entireProcessTree: true);
            Assert.Fail("vhostfsd did not exit in time; it wrote:\n" + Stderr);
        }
        _process.WaitForExit();
        lock (_sync)
        {
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(5);
            while (!(_stderrClosed && _stdoutClosed) && DateTime.UtcNow < deadline)
            {
                Monitor.Wait(_sync, TimeSpan.FromMilliseconds(100));
            }
        }
        return _process.ExitCode;
    }

    public void Signal(int signal) => Assert.Equal(0, Libc.Kill(_process.Id, signal));

    public void Dispose()
    {
        try
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
                _process.WaitForExit();
            }
        }
        catch (InvalidOperationException)
        {
            // Never started.
        }
        _process.Dispose();
    }
}

/// <summary>A temporary directory with a share inside, removed afterwards. Paths are kept short
/// because a UNIX socket path holds at most 107 bytes.</summary>
internal sealed class TempTree : IDisposable
{
    public TempTree()
    {
        Root = Path.Combine("/tmp", "vfsd-" + Guid.NewGuid().ToString("N")[..10]);
        Share = Path.Combine(Root, "share");
        Directory.CreateDirectory(Share);
        File.WriteAllText(Path.Combine(Share, "inside.txt"), "inside\n");
        File.WriteAllText(Path.Combine(Root, "outside.txt"), "outside\n");
    }

    public string Root { get; }
    public string Share { get; }
    public string Socket => Path.Combine(Root, "vfs.sock");
    public string PidFile => Socket + ".pid";
    public string Outside => Path.Combine(Root, "outside.txt");

    public void Dispose()
    {
        try
        {
            Directory.Delete(Root, recursive: true);
        }
        catch (IOException)
        {
            // A test that failed may leave a mount or a busy file; /tmp is cleaned eventually.
        }
    }
}
