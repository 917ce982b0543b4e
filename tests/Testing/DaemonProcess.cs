using System.Diagnostics;
using System.Text;
using Vhostfsd.GuestKernelShim;
using Vhostfsd.Posix;

namespace Vhostfsd.Testing;

/// <summary>A virtio-fs daemon process started for a test: a temporary socket, a shared directory (temporary
/// unless given), the process's output kept for diagnostics, and helpers that connect the guest shim to it.
/// Works for vhostfsd and for the reference C daemon /usr/lib/qemu/virtiofsd, so benchmarks and fuzzers can
/// drive either the same way.</summary>
public sealed class DaemonProcess : IDisposable
{
    /// <summary>The reference daemon of QEMU 7.2 (Debian package qemu-system-common).</summary>
    public const string ReferencePath = "/usr/lib/qemu/virtiofsd";

    private readonly Process _process;
    private readonly StringBuilder _output = new();
    private readonly bool _ownsSharedDir;
    private readonly string _runDir;
    private int _disposed;

    private DaemonProcess(Process process, string socketPath, string sharedDir, bool ownsSharedDir, string runDir, string description)
    {
        _process = process;
        SocketPath = socketPath;
        SharedDir = sharedDir;
        _ownsSharedDir = ownsSharedDir;
        _runDir = runDir;
        Description = description;
    }

    public string SocketPath { get; }

    public string SharedDir { get; }

    /// <summary>"vhostfsd" or "virtiofsd (reference)" with the command line.</summary>
    public string Description { get; }

    public int Pid => _process.Id;

    public bool HasExited => _process.HasExited;

    /// <summary>Everything the daemon wrote to stdout and stderr so far.</summary>
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

    /// <summary>True when the reference daemon is installed.</summary>
    public static bool ReferenceInstalled => File.Exists(ReferencePath);

    /// <summary>Starts /usr/lib/qemu/virtiofsd as the brief says: --socket-path=SOCK -o source=DIR -o cache=none
    /// -o sandbox=chroot (it must run as root), plus <paramref name="extraOptions"/> (e.g. "-o", "xattr").
    /// Throws with an explanation when the binary is missing.</summary>
    public static DaemonProcess StartReference(string? sharedDir = null, params string[] extraOptions)
    {
        if (!ReferenceInstalled)
        {
            throw new InvalidOperationException($"the reference daemon {ReferencePath} is not installed (apt-get install qemu-system-common; scripts/install-deps.sh does it)");
        }
        return Start("virtiofsd (reference)", ReferencePath, sharedDir, (socket, dir) =>
        {
            var args = new List<string> { "--socket-path=" + socket, "-o", "source=" + dir, "-o", "cache=none", "-o", "sandbox=chroot" };
            args.AddRange(extraOptions);
            return args;
        });
    }

    /// <summary>Starts vhostfsd (the native executable, <see cref="NativeExecutable"/>) with --socket-path and
    /// --shared-dir plus <paramref name="extraArgs"/>.</summary>
    public static DaemonProcess StartVhostfsd(string? sharedDir = null, params string[] extraArgs)
        => StartVhostfsdUnder([], sharedDir, extraArgs);

    /// <summary>Starts vhostfsd as <see cref="StartVhostfsd"/> does, through the command
    /// <paramref name="wrapper"/> (e.g. "setpriv", "--groups", "0", "--"), which must exec it.</summary>
    public static DaemonProcess StartVhostfsdUnder(string[] wrapper, string? sharedDir, params string[] extraArgs)
    {
        string executable = NativeExecutable.Find();
        string program = wrapper.Length > 0 ? wrapper[0] : executable;
        return Start("vhostfsd", program, sharedDir, (socket, dir) =>
        {
            var args = new List<string>(wrapper.Skip(1));
            if (wrapper.Length > 0)
            {
                args.Add(executable);
            }
            args.AddRange(["--socket-path", socket, "--shared-dir", dir]);
            args.AddRange(extraArgs);
            return args;
        });
    }

    /// <summary>Starts <paramref name="fileName"/> with the arguments <paramref name="arguments"/> builds from the
    /// socket path and the shared directory, and waits until the socket exists.</summary>
    public static DaemonProcess Start(string description, string fileName, string? sharedDir, Func<string, string, IEnumerable<string>> arguments,
        TimeSpan? startTimeout = null)
    {
        string runDir = Directory.CreateTempSubdirectory("vfs-run-").FullName;
        bool ownsDir = sharedDir == null;
        sharedDir ??= Directory.CreateTempSubdirectory("vfs-share-").FullName;
        string socket = Path.Combine(runDir, "vfs.sock");
        var info = new ProcessStartInfo(fileName)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (string arg in arguments(socket, sharedDir))
        {
            info.ArgumentList.Add(arg);
        }
        var process = new Process { StartInfo = info };
        var daemon = new DaemonProcess(process, socket, sharedDir, ownsDir, runDir, description + ": " + fileName + " " + string.Join(' ', info.ArgumentList));
        process.OutputDataReceived += (_, e) => daemon.Append(e.Data);
        process.ErrorDataReceived += (_, e) => daemon.Append(e.Data);
        process.Start();
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        var deadline = DateTime.UtcNow + (startTimeout ?? TimeSpan.FromSeconds(30));
        while (!File.Exists(socket))
        {
            if (process.HasExited)
            {
                process.WaitForExit();
                string output = daemon.Output;
                daemon.Dispose();
                throw new InvalidOperationException($"{daemon.Description} exited with {process.ExitCode} before creating its socket:\n{output}");
            }
            if (DateTime.UtcNow > deadline)
            {
                string output = daemon.Output;
                daemon.Dispose();
                throw new TimeoutException($"{daemon.Description} did not create {socket} in time:\n{output}");
            }
            Thread.Sleep(10);
        }
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
            _output.AppendLine(line);
        }
    }

    /// <summary>Connects the shim's virtio-fs device to the daemon (not registered by tag unless asked).</summary>
    public VirtioFsBackend Connect(VirtioFsBackendOptions? options = null)
    {
        options ??= new VirtioFsBackendOptions { Register = false };
        try
        {
            return VirtioFsBackend.Connect(SocketPath, options);
        }
        catch (Exception e)
        {
            throw new InvalidOperationException($"connecting to {Description} failed: {e.Message}\ndaemon output:\n{Output}", e);
        }
    }

    /// <summary>Connects a device and mounts it.</summary>
    public FuseFs Mount(MountOptions? mountOptions = null, FuseConnOptions? connOptions = null, VirtioFsBackendOptions? deviceOptions = null)
        => FuseFs.Mount(Connect(deviceOptions), mountOptions, connOptions);

    /// <summary>The process that serves the socket: the started process, or the deepest descendant it spawned
    /// (vhostfsd running as root serves from a spawned copy with a narrowed capability set).</summary>
    public int ServingPid
    {
        get
        {
            int pid = _process.Id;
            for (int depth = 0; depth < 4; depth++)
            {
                int child = FirstChild(pid);
                if (child <= 0)
                {
                    break;
                }
                pid = child;
            }
            return pid;
        }
    }

    private static int FirstChild(int pid)
    {
        try
        {
            foreach (string task in Directory.GetDirectories($"/proc/{pid}/task"))
            {
                string children = File.ReadAllText(Path.Combine(task, "children")).Trim();
                if (children.Length > 0 && int.TryParse(children.Split(' ')[0], out int child))
                {
                    return child;
                }
            }
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
        return 0;
    }

    /// <summary>Open fds of the serving process (what a passthrough daemon holds for the guest, plus its own).</summary>
    public int ServingFdCount => Directory.GetFiles($"/proc/{ServingPid}/fd").Length;

    /// <summary>Sends <paramref name="signal"/> to the serving process (SIGKILL = 9, SIGSTOP = 19, SIGCONT = 18).</summary>
    public void Signal(int signal)
    {
        if (!_process.HasExited && Libc.Kill(ServingPid, signal) < 0 && Libc.LastErrno != Errno.ESRCH)
        {
            PosixException.ThrowLast("kill");
        }
    }

    /// <summary>SIGSTOP to the serving process, returning once it is stopped (state T in /proc), so that
    /// requests sent afterwards are certain to stay in flight.</summary>
    public void Stop(TimeSpan? timeout = null)
    {
        int pid = ServingPid;
        Signal(19);
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(10));
        while (DateTime.UtcNow < deadline)
        {
            string stat;
            try
            {
                stat = File.ReadAllText($"/proc/{pid}/stat");
            }
            catch (IOException)
            {
                return;
            }
            // pid (comm) STATE ...: the comm may hold spaces, the state follows the last ')'.
            int close = stat.LastIndexOf(')');
            if (close > 0 && close + 2 < stat.Length && stat[close + 2] is 'T' or 't')
            {
                return;
            }
            Thread.Sleep(2);
        }
        throw new TimeoutException($"{Description}: process {pid} did not stop");
    }

    /// <summary>SIGKILL to the serving process and to the started one, then waits for it to go.</summary>
    public void Kill()
    {
        if (_process.HasExited)
        {
            return;
        }
        int serving = ServingPid;
        Libc.Kill(serving, 9);
        if (serving != _process.Id)
        {
            Libc.Kill(_process.Id, 9);
        }
        _process.WaitForExit(10_000);
    }

    /// <summary>Waits for the daemon to exit on its own; false on timeout. Once it has exited, also
    /// waits (bounded) for the end of its stdout and stderr, so that <see cref="Output"/> holds its
    /// last lines: Process.WaitForExit(timeout) returns before the async readers have drained them.</summary>
    public bool WaitForExit(TimeSpan timeout)
    {
        if (!_process.WaitForExit((int)timeout.TotalMilliseconds))
        {
            return false;
        }
        Task.Run(() => _process.WaitForExit()).Wait(TimeSpan.FromSeconds(5));
        return true;
    }

    public int ExitCode => _process.ExitCode;

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }
        try
        {
            if (!_process.HasExited)
            {
                Signal(18);
                Kill();
            }
        }
        catch (InvalidOperationException)
        {
            // Never started.
        }
        _process.Dispose();
        TryDelete(_runDir);
        if (_ownsSharedDir)
        {
            TryDelete(SharedDir);
        }
    }

    private static void TryDelete(string dir)
    {
        try
        {
            Directory.Delete(dir, recursive: true);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }
}
