using System.Text;
using Vhostfsd.Posix;

namespace Vhostfsd.Hardening.Support;

/// <summary>Host-side actions of the tests (root): bind mounts, remounts, atomic swaps.</summary>
public static unsafe class HostOps
{
    private static byte[] Z(string s) => Encoding.UTF8.GetBytes(s + "\0");

    public static void BindMount(string source, string target, bool readOnly = false)
    {
        fixed (byte* s = Z(source))
        fixed (byte* t = Z(target))
        {
            PosixException.Check(Libc.Mount(s, t, null, Libc.MS_BIND, null), $"bind {source} on {target}");
            if (readOnly)
            {
                PosixException.Check(Libc.Mount(null, t, null, Libc.MS_BIND | Libc.MS_REMOUNT | Libc.MS_RDONLY, null), "remount read-only " + target);
            }
        }
    }

    /// <summary>Remounts the tmpfs at <paramref name="target"/> read-only or read-write.</summary>
    public static int Remount(string target, bool readOnly)
    {
        fixed (byte* t = Z(target))
        {
            return Libc.Mount(null, t, null, Libc.MS_REMOUNT | (readOnly ? Libc.MS_RDONLY : 0), null) == 0 ? 0 : (int)Libc.LastErrno;
        }
    }

    public static void Unmount(string target)
    {
        fixed (byte* t = Z(target))
        {
            Libc.Umount2(t, 2 /* MNT_DETACH */);
        }
    }

    /// <summary>renameat2(RENAME_EXCHANGE): swaps two names atomically; false when it failed.</summary>
    public static bool Exchange(string a, string b)
    {
        fixed (byte* pa = Z(a))
        fixed (byte* pb = Z(b))
        {
            return Libc.RenameAt2(Libc.AT_FDCWD, pa, Libc.AT_FDCWD, pb, Libc.RENAME_EXCHANGE) == 0;
        }
    }

    public static void HardLink(string existing, string newPath)
    {
        fixed (byte* a = Z(existing))
        fixed (byte* b = Z(newPath))
        {
            PosixException.Check(Libc.LinkAt(Libc.AT_FDCWD, a, Libc.AT_FDCWD, b, 0), $"link {existing} {newPath}");
        }
    }

    public static (ulong Ino, ulong Dev) Inode(string path)
    {
        Statx st = Stat(path);
        return (st.Ino, st.Dev);
    }

    /// <summary>lgetxattr(2) as text; null when the attribute is absent.</summary>
    public static string? GetXattr(string path, string name)
    {
        byte[] buffer = new byte[256];
        fixed (byte* p = Z(path))
        fixed (byte* n = Z(name))
        fixed (byte* v = buffer)
        {
            nint length = Libc.Lgetxattr(p, n, v, (nuint)buffer.Length);
            return length < 0 ? null : System.Text.Encoding.UTF8.GetString(buffer, 0, (int)length);
        }
    }

    /// <summary>chmod(2), setuid/setgid/sticky bits included.</summary>
    public static void Chmod(string path, uint mode)
    {
        fixed (byte* p = Z(path))
        {
            PosixException.Check(Libc.FchmodAt(Libc.AT_FDCWD, p, mode, 0), "chmod " + path);
        }
    }

    /// <summary>statx of <paramref name="path"/> without following a final symlink.</summary>
    public static Statx Stat(string path)
    {
        Statx st;
        fixed (byte* p = Z(path))
        {
            PosixException.Check(Libc.StatxAt(Libc.AT_FDCWD, p, Libc.AT_SYMLINK_NOFOLLOW, Libc.STATX_BASIC_STATS, &st), "statx " + path);
        }
        return st;
    }
}
