using System.Text;
using Vhostfsd.Posix;

namespace Vhostfsd.Fuzz.Oracles;

/// <summary>A private tmpfs for one run (root only): the share and its sentinel live on it, so a
/// fuzzed FALLOCATE or WRITE at 2^62 hits a small ENOSPC instead of the machine's disk, and it is
/// mounted nodev so that no device node a guest creates can reach a host device.</summary>
public sealed unsafe class ScratchMount : IDisposable
{
    private ScratchMount(string path)
    {
        Path = path;
    }

    public string Path { get; }

    /// <summary>Creates the directory <paramref name="name"/> on the mount (a share) and returns its path.</summary>
    public string CreateDirectory(string name) => Directory.CreateDirectory(System.IO.Path.Combine(Path, name)).FullName;

    /// <summary>Mounts a tmpfs of <paramref name="megabytes"/> MiB on a fresh temporary directory.
    /// Throws with an explanation when not root.</summary>
    public static ScratchMount Create(int megabytes, bool nodev = true, string prefix = "vhostfsd-fuzz-")
    {
        if (Libc.GetEuid() != 0)
        {
            throw new InvalidOperationException("this test mounts a private tmpfs and must run as root (as CI and make test do)");
        }
        string path = Directory.CreateTempSubdirectory(prefix).FullName;
        ulong flags = 0x2 /* MS_NOSUID */ | (nodev ? 0x4UL /* MS_NODEV */ : 0);
        fixed (byte* source = Z("vhostfsd-fuzz"))
        fixed (byte* target = Z(path))
        fixed (byte* type = Z("tmpfs"))
        fixed (byte* data = Z($"size={megabytes}m,mode=0755"))
        {
            if (Libc.Mount(source, target, type, flags, data) != 0)
            {
                var errno = Libc.LastErrno;
                Directory.Delete(path);
                throw new PosixException("mount tmpfs on " + path, errno);
            }
        }
        return new ScratchMount(path);
    }

    private static byte[] Z(string s) => Encoding.UTF8.GetBytes(s + "\0");

    public void Dispose()
    {
        fixed (byte* target = Z(Path))
        {
            Libc.Umount2(target, 2 /* MNT_DETACH */);
        }
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
