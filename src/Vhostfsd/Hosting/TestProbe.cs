using System.Globalization;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Vhostfsd.Logging;
using Vhostfsd.Posix;

namespace Vhostfsd.Hosting;

/// <summary>A test hook, not a feature: when VHOSTFSD_TEST_PROBE is set (a ';'-separated list of
/// absolute paths), the daemon, after the sandbox and the capability drop and before it waits
/// for a connection, tries to open each path and logs whether it could, checks that
/// <see cref="DaemonSettings.ProcSelfFd"/> reopens an fd, and logs its pid, capabilities and fd
/// limit. The tests use it to show what the sandbox hides. It only reads; it is not in --help.
///
/// A second hook, VHOSTFSD_TEST_SYSCALL=NR, makes the serving process, once its system-call
/// filter is in force, make system call number NR without arguments and log what came back:
/// before it waits for a connection, or with "NR:SIGUSR1" on every SIGUSR1 instead, while it
/// serves. The tests use it to show what each --seccomp mode does to a call outside the
/// allow-list. Neither hook is in --help.</summary>
internal static unsafe class TestProbe
{
    public const string Environment = "VHOSTFSD_TEST_PROBE";
    public const string SyscallEnvironment = "VHOSTFSD_TEST_SYSCALL";

    private const string OnSignalSuffix = ":SIGUSR1";

    /// <summary>Kept for the life of the process: the SIGUSR1 handler of the syscall hook.</summary>
    private static PosixSignalRegistration? s_onSignal;

    public static void MakeSystemCallIfRequested(Logger log)
    {
        string? request = System.Environment.GetEnvironmentVariable(SyscallEnvironment);
        if (request == null)
        {
            return;
        }
        bool onSignal = request.EndsWith(OnSignalSuffix, StringComparison.Ordinal);
        string number = onSignal ? request[..^OnSignalSuffix.Length] : request;
        if (!long.TryParse(number, NumberStyles.None, CultureInfo.InvariantCulture, out long call))
        {
            log.Warning("test-probe: {Variable}={Value} is not a system call number", SyscallEnvironment, request);
            return;
        }
        if (!onSignal)
        {
            MakeSystemCall(call, log);
            return;
        }
        s_onSignal = PosixSignalRegistration.Create((PosixSignal)Libc.SIGUSR1, context =>
        {
            context.Cancel = true;
            MakeSystemCall(call, log);
        });
        log.Information("test-probe: system call {Number} on SIGUSR1", call);
    }

    private static void MakeSystemCall(long call, Logger log)
    {
        log.Information("test-probe: making system call {Number}", call);
        long result = Libc.RawSyscall(call);
        if (result < 0)
        {
            log.Information("test-probe: system call {Number} failed ({Errno})", call, Libc.LastErrno.ToString());
        }
        else
        {
            log.Information("test-probe: system call {Number} returned {Result}", call, result);
        }
    }

    /// <summary>Second test hook: when set to 1, the device takes the xattr paths of kernels before 6.13
    /// (no *xattrat calls) on any kernel, so the tests can run them inside each sandbox.</summary>
    public const string NoXattrAtEnvironment = "VHOSTFSD_TEST_NO_XATTRAT";

    /// <summary>Third test hook, for --fuse-mount: "off" copies READ and WRITE data (no splice pipes);
    /// "fail" makes every splice of data take its fallback: a READ reply the pipes could not
    /// assemble (its data copied back into the reply buffer), a WRITE whose data could not be
    /// spliced into the file (read into memory and written as before).</summary>
    public const string SpliceEnvironment = "VHOSTFSD_TEST_SPLICE";
    public const string SpliceOff = "off";
    public const string SpliceFail = "fail";

    public static string? SpliceRequest => System.Environment.GetEnvironmentVariable(SpliceEnvironment);

    public static bool NoXattrAtRequested => System.Environment.GetEnvironmentVariable(NoXattrAtEnvironment) == "1";

    public static void RunIfRequested(DaemonSettings settings, int lastCap, Logger log)
    {
        string? request = System.Environment.GetEnvironmentVariable(Environment);
        if (request == null)
        {
            return;
        }
        foreach (string path in request.Split(';', StringSplitOptions.RemoveEmptyEntries))
        {
            int fd;
            fixed (byte* p = Sandbox.Z(path))
            {
                fd = Libc.Open(p, Libc.O_PATH | Libc.O_CLOEXEC, 0);
            }
            if (fd >= 0)
            {
                Libc.Close(fd);
                log.Information("test-probe: path {Path} reachable", path);
            }
            else
            {
                log.Information("test-probe: path {Path} unreachable ({Errno})", path, Libc.LastErrno.ToString());
            }
        }

        // Reopen the shared root through the /proc/self/fd handle, as the device reopens O_PATH fds.
        string reopen;
        int root;
        fixed (byte* p = Sandbox.Z(settings.SharedRoot))
        {
            root = Libc.Open(p, Libc.O_PATH | Libc.O_DIRECTORY | Libc.O_CLOEXEC, 0);
        }
        if (root < 0 || settings.ProcSelfFd == null)
        {
            reopen = "failed (cannot open the shared root: " + Libc.LastErrno + ")";
        }
        else
        {
            int reopened;
            fixed (byte* name = Sandbox.Z(root.ToString(CultureInfo.InvariantCulture)))
            {
                reopened = Libc.OpenAt(settings.ProcSelfFd.Fd, name, Libc.O_RDONLY | Libc.O_DIRECTORY | Libc.O_CLOEXEC, 0);
            }
            reopen = reopened >= 0 ? "ok" : "failed (" + Libc.LastErrno + ")";
            if (reopened >= 0)
            {
                Libc.Close(reopened);
            }
            Libc.Close(root);
        }
        log.Information("test-probe: reopen through ProcSelfFd {Result}", reopen);

        // Runtime services that open files on first use (see Preload) must still work.
        string services = CheckRuntimeServices();
        log.Information("test-probe: runtime services {Result}", services);
        log.Information("test-probe: pid {Pid} euid {Euid} effective-caps 0x{Effective} bounding-caps 0x{Bounding} rlimit-nofile {Limit} shared-root {Root}",
            System.Environment.ProcessId, Libc.GetEuid(),
            Capabilities.EffectiveOfCurrentThread().ToString("x", CultureInfo.InvariantCulture),
            Capabilities.BoundingOfCurrentThread(lastCap).ToString("x", CultureInfo.InvariantCulture),
            ResourceLimits.CurrentNofile(), settings.SharedRoot);
    }

    /// <summary>Uses what <see cref="Preload"/> started, and System.Diagnostics.Activity, which it
    /// leaves to first use (the daemon never reads it; its ids come from the random source
    /// started there). A method of its own, so that only the probe runs Activity's initializer.</summary>
    [MethodImpl(MethodImplOptions.NoInlining)]
    private static string CheckRuntimeServices()
    {
        try
        {
            _ = Guid.NewGuid();
            _ = System.Diagnostics.Activity.Current;
            return "ok (time zone " + TimeZoneInfo.Local.Id + ")";
        }
        catch (Exception e)
        {
            return "failed (" + e.GetType().Name + ": " + e.Message + ")";
        }
    }
}
