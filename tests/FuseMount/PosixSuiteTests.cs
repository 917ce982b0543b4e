using System.IO.MemoryMappedFiles;
using System.Security.Cryptography;
using Vhostfsd.Posix;

namespace Vhostfsd.FuseMount.Tests;

/// <summary>One mount (xattrs on, POSIX locks forwarded) shared by the suite.</summary>
public sealed class XattrLockMount : IDisposable
{
    internal MountedShare Mounted { get; } = MountedShare.Start(["--xattr", "--posix-lock"]);

    public void Dispose() => Mounted.Dispose();
}

/// <summary>POSIX calls from this process (plain .NET and libc) on a vhostfsd --fuse-mount mount point,
/// checked through the mount and on the shared directory behind it: what the host kernel's FUSE client
/// makes of the server.</summary>
public sealed class PosixSuiteTests(XattrLockMount fixture) : IClassFixture<XattrLockMount>
{
    private readonly MountedShare _m = fixture.Mounted;

    /// <summary>A fresh name for each test, so the tests share the mount without meeting.</summary>
    private string Name(string stem) => stem + "-" + Guid.NewGuid().ToString("N")[..8];

    [Fact]
    public void Create_write_and_read_back_through_the_mount_and_on_the_share()
    {
        string name = Name("file");
        byte[] data = RandomNumberGenerator.GetBytes(3 * 1024 * 1024 + 17);
        File.WriteAllBytes(_m.InMount(name), data);
        Assert.Equal(data, File.ReadAllBytes(_m.InMount(name)));
        Assert.Equal(data, File.ReadAllBytes(_m.InShare(name)));

        using (var stream = new FileStream(_m.InMount(name), FileMode.Open, FileAccess.ReadWrite))
        {
            stream.Position = 1000;
            stream.Write("patched"u8);
        }
        "patched"u8.CopyTo(data.AsSpan(1000));
        Assert.Equal(data, File.ReadAllBytes(_m.InShare(name)));
    }

    [Fact]
    public void Rename_and_unlink()
    {
        string a = Name("a");
        string b = Name("b");
        File.WriteAllText(_m.InMount(a), "moved");
        File.Move(_m.InMount(a), _m.InMount(b));
        Assert.False(File.Exists(_m.InShare(a)));
        Assert.Equal("moved", File.ReadAllText(_m.InShare(b)));

        // Over an existing file: replaced.
        File.WriteAllText(_m.InMount(a), "replacement");
        File.Move(_m.InMount(a), _m.InMount(b), overwrite: true);
        Assert.Equal("replacement", File.ReadAllText(_m.InMount(b)));

        File.Delete(_m.InMount(b));
        Assert.False(File.Exists(_m.InMount(b)));
        Assert.False(File.Exists(_m.InShare(b)));
    }

    [Fact]
    public void Mkdir_and_rmdir()
    {
        string dir = Name("dir");
        Directory.CreateDirectory(_m.InMount(Path.Combine(dir, "a", "b")));
        Assert.True(Directory.Exists(_m.InShare(Path.Combine(dir, "a", "b"))));
        var notEmpty = Assert.ThrowsAny<IOException>(() => Directory.Delete(_m.InMount(Path.Combine(dir, "a"))));
        Assert.Contains("not empty", notEmpty.Message, StringComparison.OrdinalIgnoreCase);
        Directory.Delete(_m.InMount(Path.Combine(dir, "a", "b")));
        Directory.Delete(_m.InMount(Path.Combine(dir, "a")));
        Assert.False(Directory.Exists(_m.InShare(Path.Combine(dir, "a"))));
        Directory.Delete(_m.InMount(dir));
    }

    [Fact]
    public void Symlink_and_hard_link()
    {
        string target = Name("target");
        string symlink = Name("symlink");
        string hardLink = Name("hardlink");
        File.WriteAllText(_m.InMount(target), "linked");

        File.CreateSymbolicLink(_m.InMount(symlink), target);
        Assert.Equal(target, new FileInfo(_m.InMount(symlink)).LinkTarget);
        Assert.Equal(target, new FileInfo(_m.InShare(symlink)).LinkTarget);
        Assert.Equal("linked", File.ReadAllText(_m.InMount(symlink)));

        HostCalls.Link(_m.InMount(target), _m.InMount(hardLink));
        Assert.Equal(2u, HostCalls.Lstat(_m.InMount(target)).Nlink);
        Assert.Equal(HostCalls.Lstat(_m.InShare(target)).Ino, HostCalls.Lstat(_m.InShare(hardLink)).Ino);
        File.Delete(_m.InMount(target));
        Assert.Equal("linked", File.ReadAllText(_m.InMount(hardLink)));
        Assert.Equal(1u, HostCalls.Lstat(_m.InMount(hardLink)).Nlink);
    }

    [Fact]
    public void Chmod_and_chown()
    {
        string name = Name("owned");
        File.WriteAllText(_m.InMount(name), "x");
        File.SetUnixFileMode(_m.InMount(name), (UnixFileMode)0b111_101_001);
        Assert.Equal(0b111_101_001, HostCalls.Lstat(_m.InShare(name)).Mode & 0xFFF);
        Assert.Equal(0b111_101_001, HostCalls.Lstat(_m.InMount(name)).Mode & 0xFFF);

        HostCalls.Chown(_m.InMount(name), 1234, 5678);
        var onHost = HostCalls.Lstat(_m.InShare(name));
        Assert.Equal((1234u, 5678u), (onHost.Uid, onHost.Gid));
        var onMount = HostCalls.Lstat(_m.InMount(name));
        Assert.Equal((1234u, 5678u), (onMount.Uid, onMount.Gid));
    }

    [Fact]
    public void Truncate_shrinks_and_extends_with_zeros()
    {
        string name = Name("truncated");
        File.WriteAllText(_m.InMount(name), "abcdefghij");
        using (var stream = new FileStream(_m.InMount(name), FileMode.Open, FileAccess.Write))
        {
            stream.SetLength(3);
        }
        Assert.Equal("abc", File.ReadAllText(_m.InMount(name)));
        using (var stream = new FileStream(_m.InMount(name), FileMode.Open, FileAccess.Write))
        {
            stream.SetLength(1 << 20);
        }
        byte[] content = File.ReadAllBytes(_m.InShare(name));
        Assert.Equal(1 << 20, content.Length);
        Assert.True(content.AsSpan(3).IndexOfAnyExcept((byte)0) < 0);
    }

    [Fact]
    public void Xattrs_set_read_listed_and_removed()
    {
        string name = Name("xattr");
        File.WriteAllText(_m.InMount(name), "x");
        HostCalls.SetXattr(_m.InMount(name), "user.fuse-test", "value one");
        Assert.Equal("value one", HostCalls.GetXattr(_m.InMount(name), "user.fuse-test"));
        Assert.Equal("value one", HostCalls.GetXattr(_m.InShare(name), "user.fuse-test"));
        Assert.Contains("user.fuse-test", HostCalls.ListXattr(_m.InMount(name)));
        HostCalls.RemoveXattr(_m.InMount(name), "user.fuse-test");
        Assert.Null(HostCalls.GetXattr(_m.InMount(name), "user.fuse-test"));
        Assert.Null(HostCalls.GetXattr(_m.InShare(name), "user.fuse-test"));
    }

    [Fact]
    public void Readdir_of_a_big_directory_lists_every_entry_once()
    {
        string dir = Name("big");
        Directory.CreateDirectory(_m.InShare(dir));
        var expected = new HashSet<string>();
        for (int i = 0; i < 5000; i++)
        {
            string file = $"entry-with-a-longish-name-{i:D5}";
            File.WriteAllBytes(_m.InShare(Path.Combine(dir, file)), []);
            expected.Add(file);
        }
        var listed = Directory.EnumerateFileSystemEntries(_m.InMount(dir)).Select(Path.GetFileName).ToList();
        Assert.Equal(expected.Count, listed.Count);
        Assert.True(expected.SetEquals(listed!));
        // And with attributes (READDIRPLUS): every entry is a 0-byte file.
        Assert.All(new DirectoryInfo(_m.InMount(dir)).EnumerateFiles(), f => Assert.Equal(0, f.Length));
    }

    [Fact]
    public void Fsync_reaches_the_host()
    {
        string name = Name("synced");
        using (var stream = new FileStream(_m.InMount(name), FileMode.CreateNew, FileAccess.Write))
        {
            stream.Write(new byte[64 * 1024]);
            stream.Flush(flushToDisk: true);
            Assert.Equal(64 * 1024, new FileInfo(_m.InShare(name)).Length);
        }
        using (var directory = HostCalls.OpenDirectory(_m.MountPoint))
        {
            // fsync of the directory itself (FSYNCDIR).
            Assert.Equal(0, Libc.Fsync(directory.Fd));
        }
    }

    [Fact]
    public void Statfs_reports_the_host_file_system_behind_a_fuse_mount()
    {
        StatFs mount = HostCalls.Statfs(_m.MountPoint);
        StatFs host = HostCalls.Statfs(_m.Share);
        Assert.Equal(Libc.FUSE_SUPER_MAGIC, mount.Type);
        Assert.Equal(host.Blocks * (ulong)host.BlockSize, mount.Blocks * (ulong)mount.BlockSize);
        Assert.Equal(host.Files, mount.Files);
        Assert.Equal(host.NameLength, mount.NameLength);
    }

    [Fact]
    public void Mmap_reads_the_file()
    {
        string name = Name("mapped");
        byte[] data = RandomNumberGenerator.GetBytes(1 << 20);
        File.WriteAllBytes(_m.InShare(name), data);
        using var mapped = MemoryMappedFile.CreateFromFile(_m.InMount(name), FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
        using var view = mapped.CreateViewAccessor(0, data.Length, MemoryMappedFileAccess.Read);
        byte[] read = new byte[data.Length];
        view.ReadArray(0, read, 0, read.Length);
        Assert.Equal(data, read);
    }

    [Fact]
    public void Fcntl_locks_conflict_between_two_host_processes()
    {
        string name = Name("locked");
        File.WriteAllText(_m.InMount(name), "lock me");
        using var file = File.OpenHandle(_m.InMount(name), FileMode.Open, FileAccess.ReadWrite);
        Assert.True(HostCalls.TryLock(file, Libc.F_WRLCK));
        Assert.StartsWith("refused", LockHelper.Try(_m.InMount(name)));
        Assert.True(HostCalls.TryLock(file, Libc.F_UNLCK));
        Assert.Equal("locked", LockHelper.Try(_m.InMount(name)));
    }
}
