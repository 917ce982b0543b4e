using System.Text;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Xunit;

namespace Vhostfsd.GuestKernelShim.Tests;

/// <summary>A daemon serving a host directory, mounted with the shim, for the operations suite.</summary>
public interface IOperationsTarget : ICoreTarget
{
    /// <summary>What the daemon holds for the guest (nodes + handles, or open fds): must return to its
    /// starting value once the guest forgot and closed everything.</summary>
    long DaemonHoldings();
}

/// <summary>Every FuseFs operation through a real passthrough daemon, checked against the host directory.</summary>
public abstract class OperationsSuite
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);

    /// <summary>A target with xattr support on and the default cache policy.</summary>
    protected abstract IOperationsTarget Start();

    private static string Host(IOperationsTarget t, string relative) => Path.Combine(t.HostDir, relative);

    [Fact]
    public void MkdirAndRmdir()
    {
        using var t = Start();
        var fs = t.Fs;
        Assert.Equal(Errno.OK, fs.Mkdir(fs.Root, "d", 0x1E8 /* 0750 */, out var d, new FuseCaller(0, 0, umask: 0)));
        Assert.True(d!.IsDirectory);
        Assert.True(Directory.Exists(Host(t, "d")));
        Assert.Equal(0x1E8, HostStat.Of(Host(t, "d")).Mode & 0xFFF);
        Assert.Equal(Errno.EEXIST, fs.Mkdir(fs.Root, "d", 0x1ED, out _));
        Assert.Equal(Errno.OK, fs.Mkdir(d, "inner", 0x1ED, out _));
        Assert.Equal(Errno.ENOTEMPTY, fs.Rmdir(fs.Root, "d"));
        Assert.Equal(Errno.OK, fs.Rmdir(d, "inner"));
        Assert.Equal(Errno.OK, fs.Rmdir(fs.Root, "d"));
        Assert.False(Directory.Exists(Host(t, "d")));
        Assert.Equal(Errno.ENOENT, fs.Lookup(fs.Root, "d", out _));
    }

    [Fact]
    public void MknodSymlinkReadlinkAndLink()
    {
        using var t = Start();
        var fs = t.Fs;
        Assert.Equal(Errno.OK, fs.Mknod(fs.Root, "fifo", ModeBits.Fifo | 0x1A4, 0, out var fifo));
        Assert.Equal(ModeBits.Fifo, HostStat.Of(Host(t, "fifo")).Mode & ModeBits.TypeMask);
        Assert.Equal(ModeBits.Fifo, fifo!.Attr.Mode & ModeBits.TypeMask);

        Assert.Equal(Errno.OK, fs.Symlink(fs.Root, "link", "some/where", out var link));
        Assert.True(link!.IsSymlink);
        Assert.Equal("some/where", new FileInfo(Host(t, "link")).LinkTarget);
        Assert.Equal(Errno.OK, fs.ReadLink(link, out string target));
        Assert.Equal("some/where", target);

        File.WriteAllText(Host(t, "file"), "x");
        Assert.Equal(Errno.OK, fs.Walk("file", out var file));
        Assert.Equal(Errno.OK, fs.Link(file, fs.Root, "hard", out var hard));
        Assert.Equal(file.NodeId, hard!.NodeId);
        Assert.Equal(Errno.OK, fs.GetAttr(hard, out var attr, force: true));
        Assert.Equal(2u, attr.Nlink);
        Assert.Equal(HostStat.Ino(Host(t, "file")), HostStat.Ino(Host(t, "hard")));
        Assert.Equal(Errno.EEXIST, fs.Link(file, fs.Root, "hard", out _));
    }

    [Fact]
    public void RenameNoReplaceAndExchange()
    {
        using var t = Start();
        var fs = t.Fs;
        File.WriteAllText(Host(t, "a"), "A");
        File.WriteAllText(Host(t, "b"), "B");
        Assert.Equal(Errno.EEXIST, fs.Rename(fs.Root, "a", fs.Root, "b", FuseFs.RenameNoReplace));
        Assert.Equal(Errno.OK, fs.Rename(fs.Root, "a", fs.Root, "b", FuseFs.RenameExchange));
        Assert.Equal("B", File.ReadAllText(Host(t, "a")));
        Assert.Equal("A", File.ReadAllText(Host(t, "b")));
        Assert.Equal(Errno.OK, fs.Rename(fs.Root, "a", fs.Root, "c", FuseFs.RenameNoReplace));
        Assert.Equal("B", File.ReadAllText(Host(t, "c")));
        Assert.False(File.Exists(Host(t, "a")));
    }

    [Fact]
    public void SetattrTruncatesChmodsChownsAndSetsTimes()
    {
        using var t = Start();
        var fs = t.Fs;
        File.WriteAllBytes(Host(t, "f"), new byte[1000]);
        Assert.Equal(Errno.OK, fs.Walk("f", out var f));
        Assert.Equal(Errno.OK, fs.Truncate(f, 10));
        Assert.Equal(10, new FileInfo(Host(t, "f")).Length);
        Assert.Equal(Errno.OK, fs.Chmod(f, 0x180));
        Assert.Equal(0x180, HostStat.Of(Host(t, "f")).Mode & 0xFFF);
        Assert.Equal(Errno.OK, fs.Chown(f, 1234, 5678));
        var st = HostStat.Of(Host(t, "f"));
        Assert.Equal((1234u, 5678u), (st.Uid, st.Gid));
        var change = new SetAttrChange { Atime = (1_000_000, 5), Mtime = (2_000_000, 7) };
        Assert.Equal(Errno.OK, fs.SetAttr(f, change, out var attr));
        Assert.Equal(2_000_000ul, attr.Mtime);
        st = HostStat.Of(Host(t, "f"));
        Assert.Equal(1_000_000, st.Atime.Sec);
        Assert.Equal(2_000_000, st.Mtime.Sec);
        // ftruncate through an open handle.
        Assert.Equal(Errno.OK, fs.Open(f, Libc.O_RDWR, out var file));
        Assert.Equal(Errno.OK, fs.Truncate(f, 3, file: file));
        Assert.Equal(3, new FileInfo(Host(t, "f")).Length);
        fs.Release(file!);
    }

    [Fact]
    public void ExtendedAttributes()
    {
        using var t = Start();
        var fs = t.Fs;
        File.WriteAllText(Host(t, "f"), "");
        Assert.Equal(Errno.OK, fs.Walk("f", out var f));
        Assert.Equal(Errno.OK, fs.SetXattr(f, "user.color", "blue"u8));
        Assert.Equal(Errno.EEXIST, fs.SetXattr(f, "user.color", "red"u8, FuseFs.XattrCreate));
        Assert.Equal(Errno.OK, fs.GetXattr(f, "user.color", Span<byte>.Empty, out int size));
        Assert.Equal(4, size);
        var value = new byte[16];
        Assert.Equal(Errno.OK, fs.GetXattr(f, "user.color", value, out size));
        Assert.Equal("blue", Encoding.ASCII.GetString(value, 0, size));
        Assert.Equal(Errno.ERANGE, fs.GetXattr(f, "user.color", new byte[2], out _));
        var list = new byte[256];
        Assert.Equal(Errno.OK, fs.ListXattr(f, list, out size));
        Assert.Contains("user.color", Encoding.ASCII.GetString(list, 0, size).Split('\0'));
        Assert.Equal(Errno.OK, fs.RemoveXattr(f, "user.color"));
        Assert.Equal(Errno.ENODATA, fs.GetXattr(f, "user.color", value, out _));
        Assert.Equal(Errno.ERANGE, fs.SetXattr(f, "user." + new string('x', 300), "v"u8));
    }

    [Fact]
    public void FallocateLseekAndCopyFileRange()
    {
        using var t = Start();
        var fs = t.Fs;
        Assert.Equal(Errno.OK, fs.Create(fs.Root, "sparse", Libc.O_RDWR | Libc.O_CREAT, 0x1A4, out var node, out var file));
        // Data at 1 MiB only: a hole before it.
        var data = new byte[4096];
        new Random(1).NextBytes(data);
        Assert.Equal(Errno.OK, fs.Write(file!, data, 1 << 20, out _));
        Assert.Equal(Errno.OK, fs.Lseek(file!, 0, FuseFs.SeekData, out long dataAt));
        Assert.Equal(1 << 20, dataAt);
        Assert.Equal(Errno.OK, fs.Lseek(file!, 0, FuseFs.SeekHole, out long holeAt));
        Assert.Equal(0, holeAt);
        Assert.Equal(Errno.OK, fs.Lseek(file!, 0, FuseFs.SeekEnd, out long end));
        Assert.Equal((1 << 20) + 4096, end);
        Assert.Equal(Errno.OK, fs.Fallocate(file!, 0, 0, 3 << 20));
        Assert.Equal(3 << 20, new FileInfo(Host(t, "sparse")).Length);
        Assert.Equal(Errno.OK, fs.Create(fs.Root, "copy", Libc.O_RDWR | Libc.O_CREAT, 0x1A4, out _, out var copy));
        Assert.Equal(Errno.OK, fs.CopyFileRange(file!, 1 << 20, copy!, 0, 4096, out long copied));
        Assert.Equal(4096, copied);
        Assert.Equal(data, File.ReadAllBytes(Host(t, "copy")));
        Assert.Equal(Errno.OK, fs.Fsync(file!));
        Assert.Equal(Errno.OK, fs.Fsync(file!, dataOnly: true));
        Assert.Equal(Errno.OK, fs.SyncFs());
        fs.Release(file!);
        fs.Release(copy!);
    }

    [Fact]
    public void OpenWithTruncateEmptiesTheFile()
    {
        using var t = Start();
        var fs = t.Fs;
        File.WriteAllText(Host(t, "f"), "content");
        Assert.Equal(Errno.OK, fs.Walk("f", out var f));
        Assert.Equal(Errno.OK, fs.Open(f, Libc.O_WRONLY | Libc.O_TRUNC, out var file));
        Assert.Equal(0, new FileInfo(Host(t, "f")).Length);
        Assert.Equal(Errno.OK, fs.GetAttr(f, out var attr));
        Assert.Equal(0ul, attr.FileSize);
        fs.Release(file!);
    }

    [Fact]
    public void FilesAreCreatedAsTheCallingUser()
    {
        using var t = Start();
        var fs = t.Fs;
        Directory.CreateDirectory(Host(t, "open"));
        HostStat.Chmod(t.HostDir, 0x1ED);
        HostStat.Chmod(Host(t, "open"), 0x1FF);
        var user = new FuseCaller(1000, 1000, umask: 0);
        Assert.Equal(Errno.OK, fs.Walk("open", out var dir, user));
        Assert.Equal(Errno.OK, fs.Create(dir, "mine", Libc.O_WRONLY | Libc.O_CREAT | Libc.O_EXCL, 0x1A4, out _, out var file, user));
        fs.Release(file!);
        Assert.Equal(Errno.OK, fs.Mkdir(dir, "mydir", 0x1ED, out _, user));
        var st = HostStat.Of(Host(t, "open/mine"));
        Assert.Equal((1000u, 1000u), (st.Uid, st.Gid));
        st = HostStat.Of(Host(t, "open/mydir"));
        Assert.Equal((1000u, 1000u), (st.Uid, st.Gid));
        // A root-owned 0755 directory refuses the user (the shim checks, as default_permissions).
        Assert.Equal(Errno.EACCES, fs.Create(fs.Root, "nope", Libc.O_WRONLY | Libc.O_CREAT, 0x1A4, out _, out _, user));
    }

    [Fact]
    public void PosixLocksConflictBetweenProcesses()
    {
        using var t = Start();
        var fs = t.Fs;
        File.WriteAllText(Host(t, "f"), "0123456789");
        var p1 = new FuseCaller(0, 0, 1001);
        var p2 = new FuseCaller(0, 0, 1002);
        Assert.Equal(Errno.OK, fs.Walk("f", out var f));
        Assert.Equal(Errno.OK, fs.Open(f, Libc.O_RDWR, out var f1, p1));
        Assert.Equal(Errno.OK, fs.Open(f, Libc.O_RDWR, out var f2, p2));
        Assert.Equal(Errno.OK, fs.SetLock(f1!, new FileLockRange(FileLockRange.WriteLock, 0, 4), wait: false, p1));
        Assert.Equal(Errno.EAGAIN, fs.SetLock(f2!, new FileLockRange(FileLockRange.WriteLock, 2, 3), wait: false, p2));
        Assert.Equal(Errno.OK, fs.SetLock(f2!, new FileLockRange(FileLockRange.WriteLock, 5, 9), wait: false, p2));
        Assert.Equal(Errno.OK, fs.SetLock(f1!, new FileLockRange(FileLockRange.Unlock, 0, 4), wait: false, p1));
        Assert.Equal(Errno.OK, fs.SetLock(f2!, new FileLockRange(FileLockRange.WriteLock, 2, 3), wait: false, p2));
        fs.Release(f1!, p1);
        fs.Release(f2!, p2);
    }

    [Fact]
    public void ForgettingEverythingReturnsTheDaemonToWhereItStarted()
    {
        using var t = Start();
        var fs = t.Fs;
        Directory.CreateDirectory(Host(t, "tree"));
        for (int i = 0; i < 50; i++)
        {
            File.WriteAllText(Host(t, $"tree/f{i}"), "x");
        }
        Assert.True(fs.Conn.Quiesce(Timeout));
        long before = t.DaemonHoldings();
        Assert.Equal(Errno.OK, fs.Walk("tree", out var tree));
        var entries = new List<FuseDirEntry>();
        Assert.Equal(Errno.OK, fs.ReadDirectoryAll(tree, entries));
        for (int i = 0; i < 50; i++)
        {
            Assert.Equal(Errno.OK, fs.Walk($"tree/f{i}", out _));
        }
        Assert.Equal(Errno.OK, fs.Open(tree, Libc.O_RDONLY, out var dirHandle));
        Assert.True(fs.TotalLookups >= 51);
        Assert.True(t.DaemonHoldings() > before);
        fs.Release(dirHandle!);
        fs.DropCaches();
        Assert.True(fs.Conn.Quiesce(Timeout));
        Assert.Equal(0, fs.TotalLookups);
        Assert.True(SpinWait.SpinUntil(() => t.DaemonHoldings() == before, Timeout), $"daemon holds {t.DaemonHoldings()}, started with {before}");
    }
}

/// <summary>The operations suite against FusePassthrough over the in-process channel.</summary>
public sealed class InProcessOperationsTests : OperationsSuite
{
    private sealed class Target : IOperationsTarget
    {
        private readonly ShimInProcessMount _mount = new(dir => new FusePassthrough.PassthroughOptions { SharedDir = dir, Xattr = true });
        public FuseFs Fs => _mount.Fs;
        public string HostDir => _mount.Dir;
        public long DaemonHoldings() => _mount.Server.Server.NodeCount + _mount.Server.Server.HandleCount;
        public void Dispose() => _mount.Dispose();
    }

    protected override IOperationsTarget Start() => new Target();
}
