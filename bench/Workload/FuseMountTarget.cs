using System.Diagnostics;
using System.Text;
using Vhostfsd.Posix;

namespace Vhostfsd.Bench;

/// <summary>vhostfsd --fuse-mount serving the dataset on a host mount point: the workloads' native code
/// (plain system calls) runs on the mount, so the host kernel's own FUSE client drives the daemon.
/// The daemon runs with --cache never, as the daemon cells do, so every operation reaches it (reads and
/// writes as direct I/O of the caller's size).</summary>
public sealed unsafe class FuseMountUnderTest : IDisposable
{
    /// <summary>The target's name in the table.</summary>
    public const string Name = "fuse-mount";

    private static readonly string[] FixedArgs = ["--cache", "never", "--sandbox", "chroot", "--log-level", "warn"];

    private readonly Process _process;
    private readonly StringBuilder _output = new();
    private readonly string _mountDir;
    private bool _disposed;

    private FuseMountUnderTest(Process process, string mountDir)
    {
        _process = process;
        _mountDir = mountDir;
    }

    /// <summary>The command line, with {dir} and {mnt} placeholders, for the report.</summary>
    public static string Display(string executable) =>
        $"{(executable.EndsWith(".dll", StringComparison.Ordinal) ? "dotnet " : "")}{executable} --shared-dir {{dir}} --fuse-mount {{mnt}} {string.Join(' ', FixedArgs)}";

    public string MountPoint => Path.Combine(_mountDir, "mnt");
    public int Pid => _process.Id;

    /// <summary>From process start to the mount appearing in /proc/self/mountinfo.</summary>
    public TimeSpan TimeToMount { get; private set; }

    /// <summary>From process start to the first stat of the mount's root answered (INIT done).</summary>
    public TimeSpan TimeToReady { get; private set; }

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

    /// <param name="executable">The native vhostfsd, or a JIT build's vhostfsd.dll (run through dotnet).</param>
    public static FuseMountUnderTest Start(string executable, string sharedDir, TimeSpan timeout)
    {
        string mountDir = Directory.CreateTempSubdirectory("vhostfs-bench-mnt-").FullName;
        Directory.CreateDirectory(Path.Combine(mountDir, "mnt"));
        bool dll = executable.EndsWith(".dll", StringComparison.Ordinal);
        var info = new ProcessStartInfo(dll ? DaemonSpec.FindDotnet() : executable)
        {
            RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false,
        };
        foreach (string arg in (string[])[.. (dll ? [executable] : Array.Empty<string>()), "--shared-dir", sharedDir, "--fuse-mount", Path.Combine(mountDir, "mnt"), .. FixedArgs])
        {
            info.ArgumentList.Add(arg);
        }
        var process = new Process { StartInfo = info };
        var daemon = new FuseMountUnderTest(process, mountDir);
        process.OutputDataReceived += (_, e) => daemon.Append(e.Data);
        process.ErrorDataReceived += (_, e) => daemon.Append(e.Data);
        long start = Stopwatch.GetTimestamp();
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        while (!daemon.IsMounted())
        {
            if (process.HasExited || Stopwatch.GetElapsedTime(start) > timeout)
            {
                string output = daemon.Output;
                daemon.Dispose();
                throw new BenchFailure($"{Name} did not mount within {timeout.TotalSeconds} s:\n{output}");
            }
            Thread.Sleep(1);
        }
        daemon.TimeToMount = Stopwatch.GetElapsedTime(start);
        // Blocks until the daemon answered INIT.
        Directory.GetLastWriteTimeUtc(daemon.MountPoint);
        daemon.TimeToReady = Stopwatch.GetElapsedTime(start);
        return daemon;
    }

    private bool IsMounted()
    {
        foreach (string line in File.ReadLines("/proc/self/mountinfo"))
        {
            string[] fields = line.Split(' ');
            if (fields.Length > 4 && fields[4] == MountPoint && line.Contains(" - fuse.vhostfsd ", StringComparison.Ordinal))
            {
                return true;
            }
        }
        return false;
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

    /// <summary>SIGTERM (the daemon unmounts and exits), then cleanup of whatever is left.</summary>
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
                Libc.Kill(_process.Id, Libc.SIGTERM);
                if (!_process.WaitForExit(10_000))
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
        if (IsMounted())
        {
            fixed (byte* target = Encoding.UTF8.GetBytes(MountPoint + "\0"))
            {
                // SAFETY: NUL-terminated and pinned.
                Libc.Umount2(target, Libc.MNT_DETACH);
            }
        }
        if (!IsMounted())
        {
            try
            {
                Directory.Delete(_mountDir, recursive: true);
            }
            catch (IOException)
            {
            }
        }
    }
}
