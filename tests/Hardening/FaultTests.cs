using System.Diagnostics;
using Vhostfsd.Fuzz.Oracles;
using Vhostfsd.FuseProtocol;
using Vhostfsd.GuestKernelShim;
using Vhostfsd.Hardening.Support;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Vhostfsd.VhostUser;
using Vhostfsd.Virtqueue;
using Xunit;
using Xunit.Abstractions;

namespace Vhostfsd.Hardening;

/// <summary>Faults: the VMM going away at bad moments, the share changing under the guest, fd and
/// space exhaustion. Expected everywhere: errno replies, no crash, recovery when the condition
/// clears, and a clean exit with no descriptor left from the session.</summary>
[Trait("Category", "Hardening")]
public sealed class FaultTests : IDisposable
{
    private readonly ITestOutputHelper _output;
    private readonly ScratchMount _mount;
    private readonly string _share;

    public FaultTests(ITestOutputHelper output)
    {
        _output = output;
        _mount = ScratchMount.Create(32, prefix: "vhostfsd-fault-");
        _share = _mount.CreateDirectory("share");
    }

    public void Dispose() => _mount.Dispose();

    private DaemonProcess Start(params string[] args)
    {
        var all = new List<string> { "--sandbox=none", "--log-level=debug", "--posix-lock", "--flock" };
        all.AddRange(args);
        return DaemonProcess.StartVhostfsd(_share, all.ToArray());
    }

    /// <summary>The daemon exits on its own with <paramref name="code"/>, and its session left no fd.</summary>
    private void AssertCleanExit(DaemonProcess daemon, int code, TimeSpan within)
    {
        var clock = Stopwatch.StartNew();
        Assert.True(daemon.WaitForExit(within), $"the daemon did not exit within {within.TotalSeconds} s:\n" + Observe.Tail(daemon.Output));
        _output.WriteLine($"exited with {daemon.ExitCode} after {clock.ElapsedMilliseconds} ms");
        Assert.True(daemon.ExitCode == code, $"exit code {daemon.ExitCode}, expected {code}:\n" + Observe.Tail(daemon.Output));
        Assert.Null(Observe.SessionLeftovers(daemon));
        Assert.DoesNotContain("internal error", daemon.Output);
        Assert.DoesNotContain("Unhandled exception", daemon.Output);
    }

    /// <summary>A file "locked" write-locked through one handle (owner 1) and a SETLKW for the same range through
    /// a second handle (owner 2) on its own thread, checked to be parked in the daemon (a pool thread retries it).</summary>
    private sealed class ParkedLockWait
    {
        public required ulong NodeId { get; init; }
        public required ulong HolderFh { get; init; }
        public required Thread Waiter { get; init; }
        /// <summary>The SETLKW's answer; read it after <see cref="Waiter"/> was joined (null before it ended).</summary>
        public Errno? Result { get; private set; }

        public static ParkedLockWait Start(RawFuse raw)
        {
            Assert.Equal(Errno.OK, raw.Create(FuseConstants.RootId, "locked", Libc.O_RDWR, 0x1A4, out var entry, out ulong holder));
            Assert.Equal(Errno.OK, raw.Open(entry.NodeId, Libc.O_RDWR, out ulong waiterFh));
            Assert.Equal(Errno.OK, raw.Lock(entry.NodeId, holder, owner: 1, Libc.F_WRLCK, wait: false));
            ParkedLockWait? wait = null;
            var thread = new Thread(() => wait!.Result = raw.Lock(entry.NodeId, waiterFh, owner: 2, Libc.F_WRLCK, wait: true)) { IsBackground = true };
            wait = new ParkedLockWait { NodeId = entry.NodeId, HolderFh = holder, Waiter = thread };
            thread.Start();
            Assert.False(thread.Join(500), "SETLKW returned although the lock is held");
            return wait;
        }
    }

    // With the default pool (one thread), a SETLKW parked in the daemon must not keep the lock
    // holder's FSYNC (or FLUSH) waiting behind it: the holder would never get to unlock.
    [Fact]
    public void TheLockHoldersFsyncIsServedWhileAnotherCallerWaitsForTheLock()
    {
        using var daemon = Start();
        var fs = Observe.Mount(daemon, queues: 2);
        var raw = new RawFuse(fs.Conn);
        var wait = ParkedLockWait.Start(raw);
        Errno synced = Errno.EIO;
        var sync = new Thread(() => synced = raw.Fsync(wait.NodeId, wait.HolderFh)) { IsBackground = true };
        sync.Start();
        Assert.True(sync.Join(TimeSpan.FromSeconds(10)), "the lock holder's FSYNC waited behind the SETLKW");
        Assert.Equal(Errno.OK, synced);
        Assert.Equal(Errno.OK, raw.Lock(wait.NodeId, wait.HolderFh, owner: 1, Libc.F_UNLCK, wait: false));
        Assert.True(wait.Waiter.Join(TimeSpan.FromSeconds(10)), "SETLKW did not return after the unlock");
        Assert.Equal(Errno.OK, wait.Result);
        fs.Dispose();
    }

    // A big READ with more requests waiting may be handed to the pool (so that two copies run at
    // once); it must never queue behind a SETLKW parked on the pool's only thread, or the READs would
    // wait for an unlock that comes from this test only after they are done.
    [Fact]
    public void BigReadsAreServedWhileThePoolsOnlyThreadWaitsForALock()
    {
        using var daemon = Start();
        var fs = Observe.Mount(daemon, queues: 1);
        var raw = new RawFuse(fs.Conn);
        Assert.Equal(Errno.OK, fs.Create(fs.Root, "big", Libc.O_RDWR, 0x1A4, out _, out var file));
        var data = new byte[1 << 20];
        Random.Shared.NextBytes(data);
        Assert.Equal(Errno.OK, fs.Write(file!, data, 0, out _));
        var wait = ParkedLockWait.Start(raw);

        int matched = 0;
        var readers = new Thread[8];
        for (int i = 0; i < readers.Length; i++)
        {
            readers[i] = new Thread(() =>
            {
                var buffer = new byte[data.Length];
                for (int round = 0; round < 20; round++)
                {
                    if (fs.Read(file!, buffer, 0, out int n) != Errno.OK || n != data.Length || !buffer.AsSpan().SequenceEqual(data))
                    {
                        return;
                    }
                }
                Interlocked.Increment(ref matched);
            }) { IsBackground = true };
            readers[i].Start();
        }
        foreach (var reader in readers)
        {
            Assert.True(reader.Join(TimeSpan.FromSeconds(30)), "a big READ waited behind the parked SETLKW");
        }
        Assert.Equal(readers.Length, matched);
        Assert.True(wait.Waiter.IsAlive, "the SETLKW returned although the lock is still held");

        Assert.Equal(Errno.OK, raw.Lock(wait.NodeId, wait.HolderFh, owner: 1, Libc.F_UNLCK, wait: false));
        Assert.True(wait.Waiter.Join(TimeSpan.FromSeconds(10)), "SETLKW did not return after the unlock");
        Assert.Equal(Errno.OK, wait.Result);
        fs.Dispose();
    }

    [Fact]
    public void VmmDisconnectingMidRequestEndsTheDaemonCleanly()
    {
        using var daemon = Start("--thread-pool-size=2");
        var fs = Observe.Mount(daemon, queues: 2);
        Assert.Equal(Errno.OK, fs.Create(fs.Root, "big", Libc.O_RDWR, 0x1A4, out _, out var file));
        var data = new byte[1 << 20];
        Random.Shared.NextBytes(data);
        long done = 0;
        var workers = new Thread[4];
        for (int i = 0; i < workers.Length; i++)
        {
            int id = i;
            workers[i] = new Thread(() =>
            {
                var buffer = new byte[1 << 20];
                while (fs.IsMounted)
                {
                    var rc = id % 2 == 0 ? fs.Write(file!, data, 0, out _) : fs.Read(file!, buffer, 0, out _);
                    if (rc != Errno.OK)
                    {
                        return;
                    }
                    Interlocked.Increment(ref done);
                }
            }) { IsBackground = true };
            workers[i].Start();
        }
        while (Interlocked.Read(ref done) < 20)
        {
            Thread.Sleep(5);
        }
        Abrupt.Disconnect(fs);
        foreach (var worker in workers)
        {
            Assert.True(worker.Join(TimeSpan.FromSeconds(20)), "a guest caller hung after the disconnect");
        }
        AssertCleanExit(daemon, 0, TimeSpan.FromSeconds(20));
        fs.Dispose();
    }

    [Fact]
    public void VmmDisconnectingMidHandshakeEndsTheDaemonCleanly()
    {
        // Between messages (after the memory table, before any ring): a normal end of session, exit 0.
        using (var daemon = Start())
        using (var guest = new VhostUserTestGuest(queueCount: 2, queueSize: 64))
        {
            using (var frontend = VhostUserFrontend.Connect(daemon.SocketPath, TimeSpan.FromSeconds(20)))
            {
                frontend.GetFeatures();
                frontend.SetOwner();
                frontend.SetMemTable([guest.MemoryRegions[0]]);
                frontend.SetVringNum(1, 64);
            }
            AssertCleanExit(daemon, 0, TimeSpan.FromSeconds(20));
        }
        // Inside a message (half a header, with a memory fd attached): a protocol error, one line, exit 1.
        using (var daemon = Start())
        using (var guest = new VhostUserTestGuest(queueCount: 2, queueSize: 64))
        {
            using (var frontend = VhostUserFrontend.Connect(daemon.SocketPath, TimeSpan.FromSeconds(20)))
            {
                frontend.GetFeatures();
                frontend.Channel.Socket.Send(new byte[] { 5, 0, 0, 0, 1 }, [guest.MemoryRegions[0].Fd]);
            }
            AssertCleanExit(daemon, 1, TimeSpan.FromSeconds(20));
            Assert.Contains("closing the connection", daemon.Output);
        }
    }

    [Fact]
    public void VmmDisconnectingWhileASetlkwWaitsEndsTheDaemonCleanly()
    {
        using var daemon = Start("--thread-pool-size=2");
        var fs = Observe.Mount(daemon, queues: 2);
        var wait = ParkedLockWait.Start(new RawFuse(fs.Conn));
        Abrupt.Disconnect(fs);
        Assert.True(wait.Waiter.Join(TimeSpan.FromSeconds(20)), "the waiting guest caller never returned");
        Assert.NotEqual(Errno.OK, wait.Result);
        AssertCleanExit(daemon, 0, TimeSpan.FromSeconds(20));
        fs.Dispose();
    }

    [Fact]
    public void ShareRemovedOrMadeReadOnlyUnderTheGuestGivesErrnoRepliesAndNoCrash()
    {
        using var daemon = Start();
        using var fs = Observe.Mount(daemon);
        var raw = new RawFuse(fs.Conn);
        Assert.Equal(Errno.OK, raw.Create(FuseConstants.RootId, "in-use", Libc.O_RDWR, 0x1A4, out var inUse, out ulong fh));
        Assert.Equal(Errno.OK, raw.Write(inUse.NodeId, fh, 0, "before"u8, out _));
        Assert.Equal(Errno.OK, raw.Release(inUse.NodeId, fh));
        Assert.Equal(Errno.OK, raw.Open(inUse.NodeId, Libc.O_RDONLY, out ulong readFh));

        // Read-only: new files and writes fail with EROFS; what is open for reading still reads.
        Assert.Equal(0, HostOps.Remount(_mount.Path, readOnly: true));
        Assert.Equal(Errno.EROFS, raw.Create(FuseConstants.RootId, "new", Libc.O_RDWR, 0x1A4, out _, out _));
        Assert.Equal(Errno.EROFS, raw.Open(inUse.NodeId, Libc.O_RDWR, out _));
        var buffer = new byte[16];
        Assert.Equal(Errno.OK, raw.Read(inUse.NodeId, readFh, 0, buffer, out int read));
        Assert.Equal("before", System.Text.Encoding.ASCII.GetString(buffer, 0, read));
        // Writable again: the guest carries on.
        Assert.Equal(0, HostOps.Remount(_mount.Path, readOnly: false));
        Assert.Equal(Errno.OK, raw.Create(FuseConstants.RootId, "new", Libc.O_RDWR, 0x1A4, out var created, out ulong newFh));
        Assert.Equal(Errno.OK, raw.Release(created.NodeId, newFh));

        // A file in use removed on the host: its open handle still reads, a new lookup finds nothing.
        File.Delete(Path.Combine(_share, "in-use"));
        Assert.Equal(Errno.OK, raw.Read(inUse.NodeId, readFh, 0, buffer, out read));
        Assert.Equal(6, read);
        Assert.Equal(Errno.ENOENT, raw.Lookup(FuseConstants.RootId, "in-use", out _));
        Assert.Equal(Errno.OK, raw.Getattr(inUse.NodeId, out var attr));
        Assert.Equal(0u, attr.Attr.Nlink);

        // The shared directory itself removed: errno replies (the directory has no entries and takes none).
        Directory.Delete(_share, recursive: true);
        Assert.Equal(Errno.ENOENT, raw.Lookup(FuseConstants.RootId, "new", out _));
        var rc = raw.Create(FuseConstants.RootId, "after", Libc.O_RDWR, 0x1A4, out _, out _);
        Assert.True(rc is Errno.ENOENT or Errno.ESTALE, $"CREATE in the removed share answered {rc}");
        Assert.Equal(Errno.OK, raw.Read(inUse.NodeId, readFh, 0, buffer, out read));
        Assert.False(daemon.HasExited, daemon.Output);
        // Recreating the directory does not bring the old share back: the daemon holds the removed one.
        Directory.CreateDirectory(_share);
        Assert.Equal(Errno.ENOENT, raw.Lookup(FuseConstants.RootId, "new", out _));
        fs.Dispose();
        AssertCleanExit(daemon, 0, TimeSpan.FromSeconds(20));
    }

    [Fact]
    public void OutOfFdsGivesErrnoRepliesAndServesAgainWhenFdsComeBack()
    {
        for (int i = 0; i < 200; i++)
        {
            File.WriteAllText(Path.Combine(_share, $"f{i}"), "x");
        }
        // 1. The guest's budget: --rlimit-nofile 720 leaves 720 - 640 (the daemon's reserve) = 80 guest fds
        // (nodes held as O_PATH fds, open files); past it every request that needs one more gets ENFILE.
        using (var daemon = Start("--rlimit-nofile=720", "--inode-file-handles=never"))
        using (var fs = Observe.Mount(daemon))
        {
            var raw = new RawFuse(fs.Conn);
            var nodes = new List<ulong>();
            var open = new List<(ulong Node, ulong Fh)>();
            Errno last = Errno.OK;
            for (int i = 0; i < 200 && last == Errno.OK; i++)
            {
                last = raw.Lookup(FuseConstants.RootId, $"f{i}", out var e);
                if (last == Errno.OK)
                {
                    nodes.Add(e.NodeId);
                    last = raw.Open(e.NodeId, Libc.O_RDONLY, out ulong fh);
                    if (last == Errno.OK)
                    {
                        open.Add((e.NodeId, fh));
                    }
                }
            }
            _output.WriteLine($"budget: {nodes.Count} nodes and {open.Count} open files, then {last}");
            Assert.Equal(Errno.ENFILE, last);
            Assert.InRange(nodes.Count + open.Count, 64, 80);
            Assert.False(daemon.HasExited);
            foreach (var (node, fh) in open)
            {
                Assert.Equal(Errno.OK, raw.Release(node, fh));
            }
            foreach (ulong node in nodes)
            {
                raw.Forget(node, 1);
            }
            // Served again once the guest let go.
            Errno again = Errno.ENFILE;
            for (int i = 0; i < 100 && again == Errno.ENFILE; i++)
            {
                again = raw.Lookup(FuseConstants.RootId, "f199", out var e);
                if (again == Errno.OK)
                {
                    Assert.Equal(Errno.OK, raw.Open(e.NodeId, Libc.O_RDONLY, out ulong fh));
                    raw.Release(e.NodeId, fh);
                }
                else
                {
                    Thread.Sleep(20);
                }
            }
            Assert.Equal(Errno.OK, again);
            fs.Dispose();
            AssertCleanExit(daemon, 0, TimeSpan.FromSeconds(20));
        }

        // 2. The process itself out of fds (prlimit lowers the running daemon's limit under its use).
        using (var daemon = Start())
        using (var fs = Observe.Mount(daemon))
        {
            var raw = new RawFuse(fs.Conn);
            int pid = Observe.ServingPid(daemon);
            // RLIMIT_NOFILE bounds fd numbers: at the lowest free number, the next descriptor is refused.
            var used = Directory.GetFiles($"/proc/{pid}/fd").Select(f => int.Parse(Path.GetFileName(f), System.Globalization.CultureInfo.InvariantCulture)).ToHashSet();
            int lowestFree = 0;
            while (used.Contains(lowestFree))
            {
                lowestFree++;
            }
            int inUse = lowestFree;
            int countBefore = used.Count;
            Prlimit(pid, inUse);
            var open = new List<(ulong Node, ulong Fh)>();
            Errno last = Errno.OK;
            for (int i = 0; i < 50 && last == Errno.OK; i++)
            {
                last = raw.Lookup(FuseConstants.RootId, $"f{i}", out var e);
                if (last == Errno.OK)
                {
                    last = raw.Open(e.NodeId, Libc.O_RDONLY, out ulong fh);
                    if (last == Errno.OK)
                    {
                        open.Add((e.NodeId, fh));
                    }
                }
            }
            _output.WriteLine($"process limit {inUse}: {open.Count} files open, then {last}; pid {pid} (daemon {daemon.Pid}) fds {countBefore} before, {Observe.FdCount(pid)} after; " + File.ReadLines($"/proc/{pid}/limits").First(l => l.StartsWith("Max open files", StringComparison.Ordinal)));
            Assert.True(last is Errno.EMFILE or Errno.ENFILE, $"expected EMFILE/ENFILE, got {last}");
            Prlimit(pid, HardNofile(pid));
            foreach (var (node, fh) in open)
            {
                Assert.Equal(Errno.OK, raw.Release(node, fh));
            }
            Assert.Equal(Errno.OK, raw.Lookup(FuseConstants.RootId, "f199", out var later));
            Assert.Equal(Errno.OK, raw.Open(later.NodeId, Libc.O_RDONLY, out ulong laterFh));
            raw.Release(later.NodeId, laterFh);
            Assert.Equal(Errno.OK, fs.Create(fs.Root, "created-after", Libc.O_RDWR, 0x1A4, out _, out var f));
            fs.Release(f!);
            fs.Dispose();
            AssertCleanExit(daemon, 0, TimeSpan.FromSeconds(20));
        }
    }

    /// <summary>Sets the soft RLIMIT_NOFILE of a running process (the hard limit stays: raising it needs CAP_SYS_RESOURCE).</summary>
    private static void Prlimit(int pid, int soft)
    {
        using var p = Process.Start("prlimit", ["--pid", pid.ToString(System.Globalization.CultureInfo.InvariantCulture), $"--nofile={soft}:"]);
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, "prlimit failed (util-linux is needed)");
    }

    private static int HardNofile(int pid)
    {
        foreach (string line in File.ReadLines($"/proc/{pid}/limits"))
        {
            if (line.StartsWith("Max open files", StringComparison.Ordinal))
            {
                var parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                return int.Parse(parts[4], System.Globalization.CultureInfo.InvariantCulture);
            }
        }
        throw new InvalidOperationException("no open-files limit in /proc/PID/limits");
    }

    [Fact]
    public void FullFileSystemGivesEnospcAndServesAgainWhenSpaceComesBack()
    {
        using var small = ScratchMount.Create(4, prefix: "vhostfsd-enospc-");
        using var daemon = DaemonProcess.StartVhostfsd(small.Path, "--sandbox=none", "--log-level=debug");
        using var fs = Observe.Mount(daemon);
        var raw = new RawFuse(fs.Conn);
        Assert.Equal(Errno.OK, raw.Create(FuseConstants.RootId, "filler", Libc.O_RDWR, 0x1A4, out var filler, out ulong fh));
        var chunk = new byte[256 << 10];
        Random.Shared.NextBytes(chunk);
        Errno rc = Errno.OK;
        ulong offset = 0;
        for (int i = 0; i < 64 && rc == Errno.OK; i++)
        {
            rc = raw.Write(filler.NodeId, fh, offset, chunk, out int written);
            offset += (ulong)written;
            if (rc == Errno.OK && written < chunk.Length)
            {
                rc = raw.Write(filler.NodeId, fh, offset, chunk, out written);
            }
        }
        _output.WriteLine($"wrote {offset} bytes, then {rc}");
        Assert.Equal(Errno.ENOSPC, rc);
        Assert.Equal(Errno.ENOSPC, raw.Create(FuseConstants.RootId, "more", Libc.O_RDWR, 0x1A4, out _, out _) is Errno.ENOSPC or Errno.OK ? Errno.ENOSPC : Errno.EIO);
        // Space back: truncate the filler.
        Assert.Equal(Errno.OK, fs.Walk("filler", out var node));
        Assert.Equal(Errno.OK, fs.Truncate(node, 0));
        Assert.Equal(Errno.OK, raw.Write(filler.NodeId, fh, 0, chunk, out int after));
        Assert.Equal(chunk.Length, after);
        raw.Release(filler.NodeId, fh);
        fs.Dispose();
        AssertCleanExit(daemon, 0, TimeSpan.FromSeconds(20));
    }
}
