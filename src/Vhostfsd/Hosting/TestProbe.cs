using System.Globalization;
using System.Runtime.CompilerServices;
using Serilog;
using Vhostfsd.Posix;

namespace Vhostfsd.Hosting;

/// <summary>A test hook, not a feature: when VHOSTFSD_TEST_PROBE is set (a ';'-separated list of
/// absolute paths), the daemon, after the sandbox and the capability drop and before it waits
/// for a connection, tries to open each path and logs whether it could, checks that
/// <see cref="DaemonSettings.ProcSelfFd"/> reopens an fd, and logs its pid, capabilities and fd
/// limit. The tests use it to show what the sandbox hides. It only reads; it is not in --help.</summary>
internal static unsafe class TestProbe
{
    public const string Environment = "VHOSTFSD_TEST_PROBE";

    /// <summary>Second test hook: when set to 1, the device takes the xattr paths of kernels before 6.13
    /// (no *xattrat calls) on any kernel, so the tests can run them inside each sandbox.</summary>
    public const string NoXattrAtEnvironment = "VHOSTFSD_TEST_NO_XATTRAT";

    public static bool NoXattrAtRequested => System.Environment.GetEnvironmentVariable(NoXattrAtEnvironment) == "1";

    public static void RunIfRequested(DaemonSettings settings, int lastCap, ILogger log)
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
