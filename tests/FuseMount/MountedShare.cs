using System.Text;
using Vhostfsd.Posix;
using Vhostfsd.Tests;

namespace Vhostfsd.FuseMount.Tests;

/// <summary>vhostfsd --fuse-mount running on a fresh share and mount point under /tmp: started,
/// waited for until it answered the kernel's INIT, and stopped (SIGTERM) when disposed. A mount
/// left behind by a failed test is detached, and the tree is removed only once nothing is mounted
/// on it (a recursive delete would otherwise walk through the mount).</summary>
internal sealed unsafe class MountedShare : IDisposable
{
    private MountedShare(string root, DaemonProcess daemon)
    {
        Root = root;
        Daemon = daemon;
    }

    public string Root { get; }
    public string Share => Path.Combine(Root, "share");
    public string MountPoint => Path.Combine(Root, "mnt");
    public DaemonProcess Daemon { get; }

    /// <summary>Creates the tree, lets <paramref name="prepare"/> fill the share, starts the daemon
    /// with <paramref name="extra"/> arguments and waits until the mount is served.</summary>
    public static MountedShare Start(string[] extra, Action<string>? prepare = null, IReadOnlyDictionary<string, string?>? environment = null)
    {
        string root = Path.Combine("/tmp", "vfm-" + Guid.NewGuid().ToString("N")[..10]);
        Directory.CreateDirectory(Path.Combine(root, "share"));
        Directory.CreateDirectory(Path.Combine(root, "mnt"));
        prepare?.Invoke(Path.Combine(root, "share"));
        var daemon = DaemonProcess.Start(["--shared-dir", Path.Combine(root, "share"), "--fuse-mount", Path.Combine(root, "mnt"), "--log-level", "debug", .. extra], environment);
        var share = new MountedShare(root, daemon);
        try
        {
            daemon.WaitForLine("FUSE INIT:");
        }
        catch
        {
            share.Dispose();
            throw;
        }
        return share;
    }

    public string InShare(string relative) => Path.Combine(Share, relative);

    public string InMount(string relative) => Path.Combine(MountPoint, relative);

    /// <summary>True while /proc/self/mountinfo shows a fuse.vhostfsd mount on the mount point.</summary>
    public bool IsMounted => IsFuseMount(MountPoint);

    public static bool IsFuseMount(string mountPoint)
    {
        foreach (string line in File.ReadLines("/proc/self/mountinfo"))
        {
            string[] fields = line.Split(' ');
            if (fields.Length > 4 && fields[4] == mountPoint && line.Contains(" - fuse.vhostfsd ", StringComparison.Ordinal))
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>SIGTERM, then the exit code.</summary>
    public int Stop()
    {
        Daemon.Signal(Libc.SIGTERM);
        return Daemon.WaitForExit();
    }

    public void Dispose()
    {
        if (!Daemon.HasExited)
        {
            try
            {
                Stop();
            }
            catch (Exception)
            {
                // Disposing after a failure: whatever is left is cleaned up below.
            }
        }
        Daemon.Dispose();
        if (IsMounted)
        {
            fixed (byte* target = Encoding.UTF8.GetBytes(MountPoint + "\0"))
            {
                Libc.Umount2(target, Libc.MNT_DETACH);
            }
        }
        if (!IsMounted)
        {
            try
            {
                Directory.Delete(Root, recursive: true);
            }
            catch (IOException)
            {
                // A busy file of a failed test; /tmp is cleaned eventually.
            }
        }
    }
}
