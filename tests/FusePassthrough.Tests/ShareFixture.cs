using System.Runtime.InteropServices;
using System.Text;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Vhostfsd.Testing;

namespace Vhostfsd.FusePassthrough.Tests;

/// <summary>A temporary host tree: <c>share/</c> (exported) and <c>outside/</c> (a sibling the guest
/// must never reach), a FuseServer on the share and a client that has done INIT.</summary>
public sealed class ShareFixture : IDisposable
{
    public ShareFixture(PassthroughOptions? options = null, FuseInitFlags? initFlags = null, Func<string, PassthroughOptions>? makeOptions = null, bool init = true, string? baseDirectory = null)
    {
        Base = Path.Combine(baseDirectory ?? Path.GetTempPath(), "vhostfsd-fuse-" + Guid.NewGuid().ToString("N"));
        Share = Path.Combine(Base, "share");
        Outside = Path.Combine(Base, "outside");
        Directory.CreateDirectory(Share);
        Directory.CreateDirectory(Outside);
        File.WriteAllText(Path.Combine(Outside, "secret"), "outside the share");
        var opts = makeOptions?.Invoke(Share) ?? options ?? new PassthroughOptions { SharedDir = Share };
        Server = new FuseServer(opts, Log.Add);
        Client = new FuseTestClient(Server);
        if (init)
        {
            Init = initFlags is null ? Client.Init() : Client.Init(initFlags.Value);
        }
    }

    public string Base { get; }
    public string Share { get; }
    public string Outside { get; }
    public FuseServer Server { get; }
    public FuseTestClient Client { get; }
    public FuseInitOut Init { get; }
    public List<string> Log { get; } = new();

    public string HostPath(string relative) => Path.Combine(Share, relative);

    /// <summary>Snapshot of everything under outside/: path → content (files) or "dir".</summary>
    public Dictionary<string, string> OutsideSnapshot()
    {
        var map = new Dictionary<string, string>();
        foreach (string path in Directory.EnumerateFileSystemEntries(Outside, "*", SearchOption.AllDirectories))
        {
            map[path] = Directory.Exists(path) ? "dir" : File.ReadAllText(path);
        }
        return map;
    }

    public void Dispose()
    {
        Server.Dispose();
        try
        {
            Directory.Delete(Base, recursive: true);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }

    public static unsafe Statx HostStat(string path)
    {
        Statx st;
        byte[] p = Encoding.UTF8.GetBytes(path + "\0");
        fixed (byte* pp = p)
        {
            if (Libc.StatxAt(Libc.AT_FDCWD, pp, Libc.AT_SYMLINK_NOFOLLOW, Libc.STATX_BASIC_STATS | Libc.STATX_MNT_ID, &st) < 0)
            {
                throw new PosixException("statx " + path, Libc.LastErrno);
            }
        }
        return st;
    }

    public static unsafe void Chmod(string path, uint mode)
    {
        byte[] p = Encoding.UTF8.GetBytes(path + "\0");
        fixed (byte* pp = p)
        {
            PosixException.Check(Libc.FchmodAt(Libc.AT_FDCWD, pp, mode, 0), "chmod " + path);
        }
    }

    public static unsafe void Chown(string path, uint uid, uint gid)
    {
        byte[] p = Encoding.UTF8.GetBytes(path + "\0");
        fixed (byte* pp = p)
        {
            PosixException.Check(Libc.FchownAt(Libc.AT_FDCWD, pp, uid, gid, Libc.AT_SYMLINK_NOFOLLOW), "chown " + path);
        }
    }

    /// <summary>Open descriptors of this process.</summary>
    public static int OpenFdCount() => Directory.GetFiles("/proc/self/fd").Length;

    /// <summary>The process's fd count once it is back at <paramref name="expected"/>, or after 2 s: the
    /// test classes run in parallel in one process, and another test's fd open for a moment is not a
    /// leak of this one, while a leaked fd stays.</summary>
    public static int OpenFdCountSettled(int expected)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(2);
        int count;
        while ((count = OpenFdCount()) != expected && DateTime.UtcNow < deadline)
        {
            Thread.Sleep(20);
        }
        return count;
    }
}
