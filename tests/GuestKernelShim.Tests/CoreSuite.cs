using System.Text;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Xunit;

namespace Vhostfsd.GuestKernelShim.Tests;

/// <summary>A mounted daemon for the core suite: the shim's file system and the host directory it shares.</summary>
public interface ICoreTarget : IDisposable
{
    FuseFs Fs { get; }
    string HostDir { get; }
}

/// <summary>The core suite of issue 4 (mount, lookup, getattr, readdir of 1,000 entries, create/write/read/
/// unlink, rename, statfs, unmount), run against each daemon the shim can drive: every daemon must answer
/// the shim as it answers a Linux guest.</summary>
public abstract class CoreSuite
{
    protected abstract ICoreTarget Start();

    [Fact]
    public void MountNegotiatesAndRootIsADirectory()
    {
        using var t = Start();
        Assert.True(t.Fs.Conn.IsInitialized);
        Assert.True(t.Fs.Conn.Minor >= 31, $"minor {t.Fs.Conn.Minor}");
        Assert.Equal(t.Fs.Conn.RequestedFlags & t.Fs.Conn.GrantedFlags, t.Fs.Conn.NegotiatedFlags);
        Assert.Equal(Errno.OK, t.Fs.GetAttr(t.Fs.Root, out var attr, force: true));
        Assert.True(ModeBits.IsDirectory(attr.Mode));
        Assert.Equal(Errno.OK, t.Fs.Statx(t.Fs.Root, out var stx));
        Assert.True(ModeBits.IsDirectory(stx.Mode));
    }

    [Fact]
    public void LookupAndGetattrMatchTheHost()
    {
        using var t = Start();
        Directory.CreateDirectory(Path.Combine(t.HostDir, "dir"));
        File.WriteAllBytes(Path.Combine(t.HostDir, "dir", "file"), new byte[1234]);
        Assert.Equal(Errno.OK, t.Fs.Walk("dir/file", out var node));
        Assert.Equal(Errno.OK, t.Fs.GetAttr(node, out var attr, force: true));
        Assert.True(ModeBits.IsRegular(attr.Mode));
        Assert.Equal(1234ul, attr.FileSize);
        var hostIno = HostStat.Ino(Path.Combine(t.HostDir, "dir", "file"));
        Assert.Equal(hostIno, attr.Ino);
        Assert.Equal(Errno.ENOENT, t.Fs.Walk("dir/missing", out _));
        Assert.Equal(Errno.ENOTDIR, t.Fs.Walk("dir/file/below", out _));
    }

    [Fact]
    public void ReaddirOfAThousandEntriesSeesEachOnce()
    {
        using var t = Start();
        var dir = Path.Combine(t.HostDir, "many");
        Directory.CreateDirectory(dir);
        var expected = new HashSet<string>();
        for (int i = 0; i < 1000; i++)
        {
            string name = $"entry-{i:D4}-{new string('x', i % 37)}";
            File.WriteAllText(Path.Combine(dir, name), "");
            expected.Add(name);
        }
        Assert.Equal(Errno.OK, t.Fs.Walk("many", out var node));
        foreach (bool plus in new[] { false, true })
        {
            if (plus && !t.Fs.Conn.Has(FuseProtocol.FuseInitFlags.DoReaddirplus))
            {
                continue;
            }
            var entries = new List<FuseDirEntry>();
            Assert.Equal(Errno.OK, t.Fs.ReadDirectoryAll(node, entries, plus));
            var names = entries.Select(e => e.Name).Where(n => n != "." && n != "..").ToList();
            Assert.Equal(names.Count, names.Distinct().Count());
            Assert.True(expected.SetEquals(names), $"plus={plus}: {names.Count} names");
            if (plus)
            {
                Assert.All(entries.Where(e => e.Name is not "." and not ".."), e => Assert.NotNull(e.Node));
            }
        }
    }

    [Fact]
    public void CreateWriteReadUnlink()
    {
        using var t = Start();
        var data = new byte[300_000];
        new Random(7).NextBytes(data);
        Assert.Equal(Errno.OK, t.Fs.Create(t.Fs.Root, "new", Libc.O_RDWR | Libc.O_CREAT | Libc.O_EXCL, 0x1A4, out var node, out var file));
        Assert.Equal(Errno.OK, t.Fs.Write(file!, data, 0, out int written));
        Assert.Equal(data.Length, written);
        var back = new byte[data.Length + 100];
        Assert.Equal(Errno.OK, t.Fs.Read(file!, back, 0, out int read));
        Assert.Equal(data.Length, read);
        Assert.True(data.AsSpan().SequenceEqual(back.AsSpan(0, read)));
        Assert.Equal(Errno.OK, t.Fs.Release(file!));
        Assert.Equal(data, File.ReadAllBytes(Path.Combine(t.HostDir, "new")));
        Assert.Equal(Errno.EEXIST, t.Fs.Create(t.Fs.Root, "new", Libc.O_RDWR | Libc.O_CREAT | Libc.O_EXCL, 0x1A4, out _, out _));
        Assert.Equal(Errno.OK, t.Fs.Unlink(t.Fs.Root, "new"));
        Assert.False(File.Exists(Path.Combine(t.HostDir, "new")));
        Assert.Equal(Errno.ENOENT, t.Fs.Lookup(t.Fs.Root, "new", out _));
    }

    [Fact]
    public void RenameMovesTheName()
    {
        using var t = Start();
        File.WriteAllText(Path.Combine(t.HostDir, "from"), "payload");
        Directory.CreateDirectory(Path.Combine(t.HostDir, "sub"));
        Assert.Equal(Errno.OK, t.Fs.Walk("sub", out var sub));
        Assert.Equal(Errno.OK, t.Fs.Rename(t.Fs.Root, "from", sub, "to"));
        Assert.False(File.Exists(Path.Combine(t.HostDir, "from")));
        Assert.Equal("payload", File.ReadAllText(Path.Combine(t.HostDir, "sub", "to")));
        Assert.Equal(Errno.ENOENT, t.Fs.Lookup(t.Fs.Root, "from", out _));
        Assert.Equal(Errno.OK, t.Fs.Walk("sub/to", out var moved));
        Assert.Equal(Errno.OK, t.Fs.Open(moved, Libc.O_RDONLY, out var f));
        var buffer = new byte[64];
        Assert.Equal(Errno.OK, t.Fs.Read(f!, buffer, 0, out int n));
        Assert.Equal("payload", Encoding.ASCII.GetString(buffer, 0, n));
        t.Fs.Release(f!);
    }

    [Fact]
    public void StatfsReportsTheHostFileSystem()
    {
        using var t = Start();
        Assert.Equal(Errno.OK, t.Fs.StatFs(t.Fs.Root, out var st));
        Assert.True(st.Blocks > 0);
        Assert.True(st.Bsize > 0);
        Assert.True(st.NameLen >= 255);
    }

    [Fact]
    public void UnmountSendsDestroyAndEndsTheConnection()
    {
        using var t = Start();
        Assert.Equal(Errno.OK, t.Fs.GetAttr(t.Fs.Root, out _, force: true));
        t.Fs.Unmount();
        Assert.True(t.Fs.Conn.IsDisconnected);
        Assert.Equal(Errno.ENOTCONN, t.Fs.GetAttr(t.Fs.Root, out _, force: true));
    }
}

/// <summary>The core suite against FusePassthrough over the in-process channel.</summary>
public sealed class InProcessCoreTests : CoreSuite
{
    private sealed class Target : ICoreTarget
    {
        private readonly ShimInProcessMount _mount = new();
        public FuseFs Fs => _mount.Fs;
        public string HostDir => _mount.Dir;
        public void Dispose() => _mount.Dispose();
    }

    protected override ICoreTarget Start() => new Target();
}

/// <summary>Host-side stat for comparisons.</summary>
public static unsafe class HostStat
{
    public static Statx Of(string path)
    {
        var bytes = Encoding.UTF8.GetBytes(path + "\0");
        Statx st;
        fixed (byte* p = bytes)
        {
            // SAFETY: p is a NUL-terminated path; st is a local of the size statx writes.
            PosixException.Check(Libc.StatxAt(Libc.AT_FDCWD, p, Libc.AT_SYMLINK_NOFOLLOW, 0xFFF, &st), "statx " + path);
        }
        return st;
    }

    public static ulong Ino(string path) => Of(path).Ino;

    public static void Chmod(string path, uint mode)
    {
        var bytes = Encoding.UTF8.GetBytes(path + "\0");
        fixed (byte* p = bytes)
        {
            // SAFETY: p is a NUL-terminated path.
            PosixException.Check(Libc.FchmodAt(Libc.AT_FDCWD, p, mode, 0), "chmod " + path);
        }
    }
}
