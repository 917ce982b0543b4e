using System.Globalization;
using System.Text;
using Vhostfsd.FusePassthrough;
using Vhostfsd.Posix;

namespace Vhostfsd.FuseDevice;

/// <summary>What the mount asks of the kernel besides the connection fd.</summary>
internal readonly record struct HostFuseMountOptions(bool AllowOther, bool DefaultPermissions, bool ReadOnly);

/// <summary>A FUSE file system mounted on a host directory: /dev/fuse opened and mount(2)ed by the
/// process that stays in the host's mount namespace and keeps CAP_SYS_ADMIN (the supervisor), which
/// also unmounts it. The serving process gets the session fd and needs neither.
/// <para>Mounted nosuid and nodev, as fusermount3 mounts for users: the share's set-id bits and
/// device nodes are kept and shown, but do not act through this mount.</para></summary>
internal sealed unsafe class HostFuseMount : IDisposable
{
    /// <summary>The file system type the mount shows in /proc/mounts ("fuse." + subtype).</summary>
    public const string FileSystemType = "fuse.vhostfsd";

    private readonly object _lock = new();
    private readonly string _device;
    private bool _mounted = true;

    private HostFuseMount(string mountPoint, SafeFd session, string device)
    {
        MountPoint = mountPoint;
        Session = session;
        _device = device;
    }

    /// <summary>The mount point, canonical (no symlinks, no "..").</summary>
    public string MountPoint { get; }

    /// <summary>The /dev/fuse fd the connection was made with; the serving process gets a copy.</summary>
    public SafeFd Session { get; }

    /// <summary>The data argument of mount(2) for a FUSE connection on <paramref name="fd"/>: the root's
    /// file type, the owner whose processes may use the mount (without allow_other), and the largest
    /// READ the kernel may send (what the reply buffers hold).</summary>
    public static string MountData(int fd, uint uid, uint gid, HostFuseMountOptions options)
    {
        var data = new StringBuilder().Append(CultureInfo.InvariantCulture, $"fd={fd},rootmode=40000,user_id={uid},group_id={gid},max_read={FuseServer.MaxWrite}");
        if (options.DefaultPermissions)
        {
            data.Append(",default_permissions");
        }
        if (options.AllowOther)
        {
            data.Append(",allow_other");
        }
        return data.ToString();
    }

    /// <summary>Opens /dev/fuse and mounts the file system on <paramref name="mountPoint"/> (canonical,
    /// see <see cref="Canonical"/>). <paramref name="source"/> is what /proc/mounts shows as the device.
    /// Throws <see cref="PosixException"/>. The kernel sends INIT at once; callers that touch the mount
    /// wait until a reader answers it.</summary>
    public static HostFuseMount Create(string source, string mountPoint, HostFuseMountOptions options)
    {
        SafeFd session = DevFuse.Open();
        try
        {
            string data = MountData(session.Fd, Libc.GetEuid(), Libc.GetEgid(), options);
            ulong flags = Libc.MS_NOSUID | Libc.MS_NODEV | (options.ReadOnly ? Libc.MS_RDONLY : 0);
            fixed (byte* sourceZ = Z(source))
            fixed (byte* target = Z(mountPoint))
            fixed (byte* type = Z(FileSystemType))
            fixed (byte* dataZ = Z(data))
            {
                // SAFETY: four NUL-terminated strings pinned for the call.
                if (Libc.Mount(sourceZ, target, type, flags, dataZ) < 0)
                {
                    PosixException.ThrowLast($"mount -t {FileSystemType} on {mountPoint}");
                }
            }
            string device = FindDevice(mountPoint) ?? "";
            return new HostFuseMount(mountPoint, session, device);
        }
        catch
        {
            session.Dispose();
            throw;
        }
    }

    /// <summary>Detaches the mount if it is still the one made here (lazily: callers inside it keep
    /// working until they leave, and the connection ends when the serving process closes its fds).
    /// True when this call unmounted it. Idempotent; safe from any thread.</summary>
    public bool Unmount()
    {
        lock (_lock)
        {
            if (!_mounted)
            {
                return false;
            }
            _mounted = false;
            // Gone already (fusermount3 -u, umount) or replaced by another mount: not ours to remove.
            if (FindDevice(MountPoint) is not string device || device != _device)
            {
                return false;
            }
            fixed (byte* target = Z(MountPoint))
            {
                // SAFETY: NUL-terminated and pinned.
                return Libc.Umount2(target, Libc.MNT_DETACH) == 0;
            }
        }
    }

    public void Dispose() => Session.Dispose();

    /// <summary>The path of the directory <paramref name="path"/> names, with every symlink and ".."
    /// resolved by the kernel (the /proc link of an O_PATH fd on it). Throws <see cref="PosixException"/>
    /// (ENOTDIR when it is not a directory).</summary>
    public static string Canonical(string path)
    {
        int fd;
        fixed (byte* p = Z(Path.GetFullPath(path)))
        {
            // SAFETY: NUL-terminated and pinned.
            fd = Libc.Open(p, Libc.O_PATH | Libc.O_DIRECTORY | Libc.O_CLOEXEC, 0);
        }
        using var handle = SafeFd.FromResult(fd, "open " + path);
        return new FileInfo($"/proc/self/fd/{fd}").LinkTarget ?? throw new PosixException("readlink /proc/self/fd/" + fd, Errno.ENOENT);
    }

    /// <summary>True when <paramref name="inner"/> is <paramref name="outer"/> or below it (both canonical).</summary>
    public static bool IsSameOrBelow(string inner, string outer) =>
        inner == outer || outer == "/" || inner.StartsWith(outer + "/", StringComparison.Ordinal);

    /// <summary>The "major:minor" of the topmost <see cref="FileSystemType"/> mount on
    /// <paramref name="mountPoint"/> in this process's /proc/self/mountinfo, or null.</summary>
    internal static string? FindDevice(string mountPoint)
    {
        string? found = null;
        foreach (string line in File.ReadLines("/proc/self/mountinfo"))
        {
            // ID PARENT MAJOR:MINOR ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTIONS
            string[] fields = line.Split(' ');
            int separator = fields.Length > 6 ? Array.IndexOf(fields, "-", 6) : -1;
            if (separator < 0 || separator + 1 >= fields.Length)
            {
                continue;
            }
            if (fields[separator + 1] == FileSystemType && Unescape(fields[4]) == mountPoint)
            {
                found = fields[2];
            }
        }
        return found;
    }

    /// <summary>mountinfo writes space, tab, newline and backslash in paths as \ooo octal escapes.</summary>
    internal static string Unescape(string field)
    {
        if (!field.Contains('\\', StringComparison.Ordinal))
        {
            return field;
        }
        var text = new StringBuilder(field.Length);
        for (int i = 0; i < field.Length; i++)
        {
            if (field[i] == '\\' && i + 3 < field.Length && IsOctal(field[i + 1], '3') && IsOctal(field[i + 2], '7') && IsOctal(field[i + 3], '7'))
            {
                text.Append((char)(((field[i + 1] - '0') << 6) | ((field[i + 2] - '0') << 3) | (field[i + 3] - '0')));
                i += 3;
            }
            else
            {
                text.Append(field[i]);
            }
        }
        return text.ToString();
    }

    private static bool IsOctal(char c, char highest) => c >= '0' && c <= highest;

    private static byte[] Z(string text) => Encoding.UTF8.GetBytes(text + "\0");
}
