using Vhostfsd.Cli;
using Vhostfsd.Logging;
using Vhostfsd.Posix;

namespace Vhostfsd.Hosting;

/// <summary>The daemon's supplementary groups, dropped at start-up when it runs as root, in every
/// sandbox mode. Started from a root login, sudo or `setpriv --groups 0`, the process holds group 0
/// (or others); every file operation done for the guest would carry them, and a guest user could
/// then create setgid files of those groups or use their group permissions on the host
/// (CVE-2022-0358 in the C virtiofsd). The FUSE server also clears the groups of each thread that
/// acts for the guest, so this is the first of two layers. Unprivileged, the daemon cannot drop its
/// groups (setgroups needs CAP_SETGID), but it then never acts for another user either.</summary>
internal static unsafe class SupplementaryGroups
{
    /// <summary>Empties the supplementary group list of every thread (glibc's setgroups), when root.</summary>
    public static void DropAll(Logger log)
    {
        if (Libc.GetEuid() != 0)
        {
            return;
        }
        int count = Libc.GetGroups(0, null);
        if (count == 0)
        {
            return;
        }
        if (Libc.SetGroupsProcess(0, null) < 0)
        {
            throw new StartupException("cannot drop the supplementary groups: " + PosixException.Describe(Libc.LastErrno));
        }
        if (Libc.GetGroups(0, null) != 0)
        {
            throw new StartupException("the supplementary groups are still set after setgroups(0)");
        }
        log.Debug("Dropped {Count} supplementary groups", count);
    }
}
