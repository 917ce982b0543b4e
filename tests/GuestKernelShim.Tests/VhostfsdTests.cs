using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Xunit;

namespace Vhostfsd.GuestKernelShim.Tests;

/// <summary>vhostfsd started as a process for the suites: the shim mounts it over its real socket.</summary>
internal sealed class VhostfsdTarget : IOperationsTarget
{
    private readonly DaemonProcess _daemon;

    public VhostfsdTarget(params string[] args)
    {
        _daemon = DaemonProcess.StartVhostfsd(null, args);
        try
        {
            Fs = _daemon.Mount();
        }
        catch
        {
            _daemon.Dispose();
            throw;
        }
    }

    public DaemonProcess Daemon => _daemon;
    public FuseFs Fs { get; }
    public string HostDir => _daemon.SharedDir;

    /// <summary>The daemon's open fds: one per node or handle the guest holds, plus a fixed set.</summary>
    public long DaemonHoldings() => _daemon.ServingFdCount;

    public void Dispose()
    {
        Fs.Dispose();
        _daemon.Dispose();
    }
}

/// <summary>The core suite against vhostfsd.</summary>
public sealed class VhostfsdCoreTests : CoreSuite
{
    protected override ICoreTarget Start() => new VhostfsdTarget("--sandbox", "none", "--cache", "auto", "--inode-file-handles", "never");
}

/// <summary>The operations suite against vhostfsd (xattr on).</summary>
public sealed class VhostfsdOperationsTests : OperationsSuite
{
    protected override IOperationsTarget Start() => new VhostfsdTarget("--sandbox", "none", "--xattr", "--inode-file-handles", "never");
}

/// <summary>The transport against vhostfsd: config space with --tag, and a daemon killed mid-request.</summary>
public sealed class VhostfsdTransportTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);

    [Fact]
    public void TagComesFromTheConfigSpace()
    {
        using var daemon = DaemonProcess.StartVhostfsd(null, "--sandbox", "none", "--tag", "vfs-conf");
        using var fs = daemon.Mount();
        var backend = (VirtioFsBackend)fs.Conn.Transport;
        Assert.True(backend.ConfigOffered);
        Assert.Equal("vfs-conf", backend.Tag);
        Assert.True(backend.NumRequestQueues >= 1);
        Assert.Equal(Errno.OK, fs.GetAttr(fs.Root, out _, force: true));
    }

    [Fact]
    public void KillingTheDaemonMidRequestEndsEverythingWithEnotconn()
    {
        using var daemon = DaemonProcess.StartVhostfsd(null, "--sandbox", "none");
        using var fs = daemon.Mount();
        var backend = (VirtioFsBackend)fs.Conn.Transport;
        Assert.Equal(Errno.OK, fs.GetAttr(fs.Root, out _, force: true));
        daemon.Stop(); // SIGSTOP: requests pile up in the ring
        var results = new Errno[4];
        var threads = Enumerable.Range(0, results.Length).Select(i => new Thread(() => results[i] = fs.GetAttr(fs.Root, out _, force: true))).ToArray();
        foreach (var t in threads)
        {
            t.Start();
        }
        Assert.True(SpinWait.SpinUntil(() => backend.InFlightOn(1) == results.Length, Timeout));
        daemon.Kill();
        foreach (var t in threads)
        {
            Assert.True(t.Join(Timeout), "a request hangs after the daemon was killed");
        }
        Assert.All(results, r => Assert.Equal(Errno.ENOTCONN, r));
        Assert.True(backend.DaemonGone);
        Assert.Equal(Errno.ENOTCONN, fs.GetAttr(fs.Root, out _, force: true));
    }

    [Fact]
    public void UnmountingAStoppedDaemonDoesNotHang()
    {
        using var daemon = DaemonProcess.StartVhostfsd(null, "--sandbox", "none");
        using var fs = daemon.Mount(connOptions: new FuseConnOptions { DrainTimeout = TimeSpan.FromSeconds(1) });
        Assert.Equal(Errno.OK, fs.GetAttr(fs.Root, out _, force: true));
        daemon.Stop();
        var sw = System.Diagnostics.Stopwatch.StartNew();
        fs.Unmount();
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(15), $"unmount took {sw.Elapsed}");
        Assert.True(fs.Conn.IsDisconnected);
        Assert.Equal(Errno.ENOTCONN, fs.GetAttr(fs.Root, out _, force: true));
    }

    [Fact]
    public void InitGrantsOnlyWhatWasAsked()
    {
        using var daemon = DaemonProcess.StartVhostfsd(null, "--sandbox", "none");
        using var fs = daemon.Mount(connOptions: new FuseConnOptions { RequestedFlags = FuseInitFlags.AsyncRead | FuseInitFlags.BigWrites | FuseInitFlags.InitExt });
        Assert.Equal(FuseInitFlags.None, fs.Conn.NegotiatedFlags & ~(FuseInitFlags.AsyncRead | FuseInitFlags.BigWrites | FuseInitFlags.InitExt));
        Assert.Equal(FuseConn.DefaultMaxPages, fs.Conn.MaxPages);
        Assert.Equal(Errno.OK, fs.GetAttr(fs.Root, out _, force: true));
    }

    [Fact]
    public void ACancelledBlockingLockIsInterrupted()
    {
        using var t = new VhostfsdTarget("--sandbox", "none", "--posix-lock");
        var fs = t.Fs;
        Assert.True(fs.Conn.Has(FuseInitFlags.PosixLocks), "vhostfsd grants POSIX_LOCKS with --posix-lock");
        File.WriteAllText(Path.Combine(t.HostDir, "f"), "data");
        var p1 = new FuseCaller(0, 0, 3001);
        var p2 = new FuseCaller(0, 0, 3002);
        Assert.Equal(Errno.OK, fs.Walk("f", out var node));
        Assert.Equal(Errno.OK, fs.Open(node, Libc.O_RDWR, out var f1, p1));
        Assert.Equal(Errno.OK, fs.Open(node, Libc.O_RDWR, out var f2, p2));
        Assert.Equal(Errno.OK, fs.SetLock(f1!, new FileLockRange(FileLockRange.WriteLock, 0, 3), wait: false, p1));
        using var cts = new CancellationTokenSource();
        Errno result = Errno.OK;
        var waiter = new Thread(() => result = fs.SetLock(f2!, new FileLockRange(FileLockRange.WriteLock, 0, 3), wait: true, p2, cts.Token));
        waiter.Start();
        Assert.False(waiter.Join(300), "SETLKW returned while the lock is held");
        cts.Cancel();
        Assert.True(waiter.Join(Timeout), "the interrupted SETLKW never ended");
        Assert.Equal(Errno.EINTR, result);
        Assert.Equal(1, fs.Conn.InterruptsSent);
        // The daemon still serves, and the lock can be taken once released.
        Assert.Equal(Errno.OK, fs.SetLock(f1!, new FileLockRange(FileLockRange.Unlock, 0, 3), wait: false, p1));
        Assert.Equal(Errno.OK, fs.SetLock(f2!, new FileLockRange(FileLockRange.WriteLock, 0, 3), wait: false, p2));
        fs.Release(f1!, p1);
        fs.Release(f2!, p2);
    }

    [Fact]
    public void AHostMountInsideTheShareBecomesASubmount()
    {
        using var daemon = DaemonProcess.StartVhostfsd(null, "--sandbox", "none", "--announce-submounts");
        string mountPoint = Path.Combine(daemon.SharedDir, "sub");
        Directory.CreateDirectory(mountPoint);
        RunHost("mount", "-t", "tmpfs", "shimtest", mountPoint);
        try
        {
            File.WriteAllText(Path.Combine(mountPoint, "inside"), "x");
            using var fs = daemon.Mount();
            Assert.True(fs.Conn.Has(FuseInitFlags.Submounts));
            Assert.Equal(Errno.OK, fs.Walk("sub", out var point));
            Assert.True(point.IsSubmountPoint);
            Assert.Equal(Errno.OK, fs.Walk("sub/inside", out var inside));
            Assert.True(inside.Mount.IsSubmount);
            Assert.NotEqual(fs.RootMount.DeviceId, inside.Mount.DeviceId);
            Assert.Equal(Errno.OK, fs.SyncFs(inside.Mount));
            Assert.Equal(Errno.OK, fs.SyncFs());
            fs.Unmount();
        }
        finally
        {
            RunHost("umount", "-l", mountPoint);
        }
    }

    [Fact]
    public void SixteenThreadsOfLargeAndSmallIo()
    {
        using var t = new VhostfsdTarget("--sandbox", "none");
        var fs = t.Fs;
        Assert.Equal(1 << 20, fs.Conn.MaxWriteSize);
        int failures = 0;
        var threads = Enumerable.Range(0, 16).Select(i => new Thread(() =>
        {
            var data = new byte[(1 << 20) + 4096 * (i + 1)];
            new Random(i).NextBytes(data);
            var back = new byte[data.Length];
            string name = $"t{i}";
            if (fs.Create(fs.Root, name, Libc.O_RDWR | Libc.O_CREAT | Libc.O_EXCL, 0x1A4, out var node, out var file) != Errno.OK
                || fs.Write(file!, data, 0, out int w) != Errno.OK || w != data.Length
                || fs.Read(file!, back, 0, out int r) != Errno.OK || r != data.Length || !data.AsSpan().SequenceEqual(back))
            {
                Interlocked.Increment(ref failures);
            }
            for (int k = 0; k < 50; k++)
            {
                if (fs.GetAttr(node!, out _, force: true) != Errno.OK)
                {
                    Interlocked.Increment(ref failures);
                }
            }
            fs.Release(file!);
            if (fs.Unlink(fs.Root, name) != Errno.OK)
            {
                Interlocked.Increment(ref failures);
            }
        })).ToArray();
        foreach (var thread in threads)
        {
            thread.Start();
        }
        foreach (var thread in threads)
        {
            Assert.True(thread.Join(TimeSpan.FromSeconds(120)));
        }
        Assert.Equal(0, failures);
        Assert.Empty(Directory.GetFiles(t.HostDir));
        Assert.True(fs.Conn.Quiesce(Timeout));
        Assert.True(ShimWait.HeapReturned((VirtioFsBackend)fs.Conn.Transport), "blocks of the request heap are still in use");
    }

    private static void RunHost(string file, params string[] args)
    {
        var info = new System.Diagnostics.ProcessStartInfo(file) { RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args)
        {
            info.ArgumentList.Add(a);
        }
        using var p = System.Diagnostics.Process.Start(info)!;
        string err = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"{file} {string.Join(' ', args)}: {err}");
    }
}

/// <summary>The page-cache suite against vhostfsd.</summary>
public sealed class VhostfsdPageCacheTests : PageCacheSuite
{
    protected override DaemonProcess StartDaemon(DaemonCache cache, bool writeback, string? sharedDir = null, bool killprivV2 = false)
    {
        var args = new List<string> { "--sandbox", "none", "--inode-file-handles", "never", "--cache", cache switch
        {
            DaemonCache.None => "never",
            DaemonCache.Auto => "auto",
            _ => "always",
        } };
        if (writeback)
        {
            args.Add("--writeback");
        }
        if (killprivV2)
        {
            args.Add("--killpriv-v2");
        }
        return DaemonProcess.StartVhostfsd(sharedDir, args.ToArray());
    }
}
