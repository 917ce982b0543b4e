using System.Globalization;
using Vhostfsd.Cli;
using Vhostfsd.Logging;
using Vhostfsd.Posix;

namespace Vhostfsd.Hosting;

/// <summary>RLIMIT_NOFILE handling, as virtiofsd does it: the daemon holds an fd for every inode
/// the guest knows, so the default soft limit (often 1024) is far too low.</summary>
internal static unsafe class ResourceLimits
{
    /// <summary>The target when --rlimit-nofile is not given.</summary>
    public const ulong DefaultNofile = 1_000_000;

    /// <summary>Applies --rlimit-nofile (null: the default rule; 0: leave unchanged) and returns
    /// the soft limit in force afterwards. Must run before the sandbox hides /proc.</summary>
    public static ulong SetUpNofile(ulong? requested, Logger log)
    {
        RLimit current;
        PosixException.Check(Libc.GetRLimit(Libc.RLIMIT_NOFILE, &current), "getrlimit(RLIMIT_NOFILE)");
        if (requested == 0)
        {
            return current.Current;
        }
        ulong max = ReadNrOpen();
        ulong target;
        if (requested is ulong explicitLimit)
        {
            if (explicitLimit > max)
            {
                throw new StartupException($"--rlimit-nofile={explicitLimit} is above the kernel's fs.nr_open ({max})");
            }
            target = explicitLimit;
        }
        else
        {
            if (current.Current >= DefaultNofile)
            {
                return current.Current;
            }
            target = Math.Min(DefaultNofile, max);
        }

        var wanted = new RLimit { Current = target, Maximum = target };
        if (Libc.SetRLimit(Libc.RLIMIT_NOFILE, &wanted) == 0)
        {
            log.Debug("RLIMIT_NOFILE set to {Limit}", target);
            return target;
        }
        var errno = Libc.LastErrno;
        if (requested != null)
        {
            throw new StartupException($"cannot set RLIMIT_NOFILE to {target}: {PosixException.Describe(errno)}");
        }
        // Unprivileged: settle for the hard limit.
        var hard = new RLimit { Current = current.Maximum, Maximum = current.Maximum };
        if (Libc.SetRLimit(Libc.RLIMIT_NOFILE, &hard) < 0)
        {
            throw new StartupException($"cannot raise RLIMIT_NOFILE to its hard limit {current.Maximum}: {PosixException.Describe(Libc.LastErrno)}");
        }
        log.Warning("Could not raise RLIMIT_NOFILE to {Target} ({Error}); using the hard limit {Limit}", target, PosixException.Describe(errno), current.Maximum);
        return current.Maximum;
    }

    /// <summary>The soft RLIMIT_NOFILE now.</summary>
    public static ulong CurrentNofile()
    {
        RLimit current;
        return Libc.GetRLimit(Libc.RLIMIT_NOFILE, &current) == 0 ? current.Current : 0;
    }

    private static ulong ReadNrOpen()
    {
        try
        {
            return ulong.Parse(File.ReadAllText("/proc/sys/fs/nr_open").Trim(), CultureInfo.InvariantCulture);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException)
        {
            // The kernel default.
            return 1_048_576;
        }
    }
}
