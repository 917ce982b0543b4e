using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Xunit;

namespace Vhostfsd.FusePassthrough.Tests;

/// <summary>POSIX locks as OFD locks per lock owner, flock, and SETLKW that waits without blocking the server.</summary>
public class LockTests
{
    private const ulong Root = FuseConstants.RootId;

    /// <summary>A share that forwards both kinds of lock (--posix-lock --flock).</summary>
    internal static ShareFixture Locking() =>
        new(makeOptions: s => new PassthroughOptions { SharedDir = s, PosixLocks = true, FlockLocks = true });

    private static (ShareFixture F, ulong Node, ulong Fh) OpenFile()
    {
        var f = Locking();
        File.WriteAllText(f.HostPath("f"), new string('x', 1000));
        FuseEntryOut e = f.Client.LookupOk(Root, "f");
        ulong fh = f.Client.Open(e.NodeId, Libc.O_RDWR).Ok().Read<FuseOpenOut>().Fh;
        return (f, e.NodeId, fh);
    }

    [Fact]
    public void LockOwnersConflictAndGetlkReportsTheHolder()
    {
        var (f, node, fh) = OpenFile();
        using (f)
        {
            Assert.True(FuseConstants.JoinInitFlags(f.Init.Flags, f.Init.Flags2).HasFlag(FuseInitFlags.PosixLocks));
            Assert.Equal(0, f.Client.Lock(FuseOpcode.Setlk, node, fh, owner: 1, Libc.F_WRLCK, 0, 99).Error);
            Assert.Equal(Errno.EAGAIN, f.Client.Lock(FuseOpcode.Setlk, node, fh, owner: 2, Libc.F_WRLCK, 50, 60).Errno);
            Assert.Equal(0, f.Client.Lock(FuseOpcode.Setlk, node, fh, owner: 2, Libc.F_WRLCK, 100, 200).Error);
            var lk = f.Client.Lock(FuseOpcode.Getlk, node, fh, owner: 2, Libc.F_RDLCK, 0, 10).Ok().Read<FuseLkOut>().Lk;
            Assert.Equal((uint)Libc.F_WRLCK, lk.Type);
            Assert.Equal((0UL, 99UL), (lk.Start, lk.End));
            // Owner 1 sees its own lock as no conflict.
            Assert.Equal((uint)Libc.F_UNLCK, f.Client.Lock(FuseOpcode.Getlk, node, fh, owner: 1, Libc.F_WRLCK, 0, 10).Ok().Read<FuseLkOut>().Lk.Type);
            Assert.Equal(0, f.Client.Lock(FuseOpcode.Setlk, node, fh, owner: 1, Libc.F_UNLCK, 0, 99).Error);
            Assert.Equal(0, f.Client.Lock(FuseOpcode.Setlk, node, fh, owner: 2, Libc.F_WRLCK, 50, 60).Error);
            // FLUSH of owner 2 (its close()) drops its locks.
            f.Client.Flush(node, fh, 2).Ok();
            Assert.Equal(0, f.Client.Lock(FuseOpcode.Setlk, node, fh, owner: 3, Libc.F_WRLCK, 0, long.MaxValue).Error);
            // An unlock by an owner that never locked is fine; bad ranges and types are not.
            Assert.Equal(0, f.Client.Lock(FuseOpcode.Setlk, node, fh, owner: 9, Libc.F_UNLCK).Error);
            Assert.Equal(Errno.EINVAL, f.Client.Lock(FuseOpcode.Setlk, node, fh, owner: 9, Libc.F_WRLCK, 10, 5).Errno);
            Assert.Equal(Errno.EINVAL, f.Client.Lock(FuseOpcode.Setlk, node, fh, owner: 9, 7).Errno);
        }
    }

    [Fact]
    public unsafe void GuestLocksConflictWithHostLocks()
    {
        var (f, node, fh) = OpenFile();
        using (f)
        {
            using var host = new FileStream(f.HostPath("f"), FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite);
            int hostFd = (int)host.SafeFileHandle.DangerousGetHandle();
            // A classic process-owned POSIX lock taken by a host program.
            var lk = new FileLock { Type = Libc.F_WRLCK, Whence = Libc.SEEK_SET, Start = 0, Length = 10 };
            Assert.Equal(0, Libc.FcntlLock(hostFd, Libc.F_SETLK, &lk));
            Assert.Equal(Errno.EAGAIN, f.Client.Lock(FuseOpcode.Setlk, node, fh, owner: 1, Libc.F_WRLCK, 0, 5).Errno);
            lk.Type = Libc.F_UNLCK;
            Assert.Equal(0, Libc.FcntlLock(hostFd, Libc.F_SETLK, &lk));
            Assert.Equal(0, f.Client.Lock(FuseOpcode.Setlk, node, fh, owner: 1, Libc.F_WRLCK, 0, 5).Error);
        }
    }

    [Fact]
    public void SetlkwWaitsForTheHolderWithoutBlockingOtherRequests()
    {
        var (f, node, fh) = OpenFile();
        using (f)
        {
            f.Client.Lock(FuseOpcode.Setlk, node, fh, owner: 1, Libc.F_WRLCK).Ok();
            var waiter = new FuseTestClient(f.Server);
            var task = Task.Factory.StartNew(() => waiter.Lock(FuseOpcode.Setlkw, node, fh, owner: 2, Libc.F_WRLCK), TaskCreationOptions.LongRunning);
            Thread.Sleep(150);
            Assert.False(task.IsCompleted);
            // Other requests go on meanwhile.
            Assert.Equal(0, f.Client.Getattr(node).Error);
            f.Client.Lock(FuseOpcode.Setlk, node, fh, owner: 1, Libc.F_UNLCK).Ok();
            Assert.True(task.Wait(TimeSpan.FromSeconds(10)));
            Assert.Equal(0, task.Result.Error);
            Assert.Equal(Errno.EAGAIN, f.Client.Lock(FuseOpcode.Setlk, node, fh, owner: 1, Libc.F_RDLCK).Errno);
        }
    }

    [Fact]
    public void SetlkwEndsWithEintrWhenInterruptedOrReset()
    {
        var (f, node, fh) = OpenFile();
        using (f)
        {
            f.Client.Lock(FuseOpcode.Setlk, node, fh, owner: 1, Libc.F_WRLCK).Ok();
            var waiter = new FuseTestClient(f.Server);
            var task = Task.Factory.StartNew(() => waiter.Lock(FuseOpcode.Setlkw, node, fh, owner: 2, Libc.F_WRLCK), TaskCreationOptions.LongRunning);
            SpinWait.SpinUntil(() => waiter.LastUnique == 1, 5000);
            Thread.Sleep(50);
            f.Client.Send(FuseOpcode.Interrupt, 0, new FuseArgs().Add(new FuseInterruptIn { Unique = waiter.LastUnique }));
            Assert.True(task.Wait(TimeSpan.FromSeconds(10)));
            Assert.Equal(Errno.EINTR, task.Result.Errno);

            var second = Task.Factory.StartNew(() => waiter.Lock(FuseOpcode.Setlkw, node, fh, owner: 3, Libc.F_WRLCK), TaskCreationOptions.LongRunning);
            Thread.Sleep(100);
            Assert.False(second.IsCompleted);
            f.Server.Reset();
            Assert.True(second.Wait(TimeSpan.FromSeconds(10)));
            Assert.NotEqual(0, second.Result.Error);
        }
    }

    [Fact]
    public unsafe void FlockLocksAreHeldPerOpenFile()
    {
        var (f, node, fh1) = OpenFile();
        using (f)
        {
            ulong fh2 = f.Client.Open(node, Libc.O_RDWR).Ok().Read<FuseOpenOut>().Fh;
            Assert.Equal(0, f.Client.Lock(FuseOpcode.Setlk, node, fh1, owner: 1, Libc.F_WRLCK, flock: true).Error);
            Assert.Equal(Errno.EAGAIN, f.Client.Lock(FuseOpcode.Setlk, node, fh2, owner: 2, Libc.F_RDLCK, flock: true).Errno);
            // flock on the host sees it too.
            fixed (byte* path = System.Text.Encoding.UTF8.GetBytes(f.HostPath("f") + "\0"))
            {
                int hostFd = Libc.OpenAt(Libc.AT_FDCWD, path, Libc.O_RDONLY | Libc.O_CLOEXEC, 0);
                Assert.True(hostFd >= 0);
                Assert.Equal(-1, Libc.Flock(hostFd, Libc.LOCK_SH | Libc.LOCK_NB));
                Assert.Equal(Errno.EAGAIN, Libc.LastErrno);
                Libc.Close(hostFd);
            }
            f.Client.Release(node, fh1, releaseFlags: (uint)FuseReleaseFlags.FlockUnlock).Ok();
            Assert.Equal(0, f.Client.Lock(FuseOpcode.Setlk, node, fh2, owner: 2, Libc.F_RDLCK, flock: true).Error);
        }
    }
}

public class LockOwnerTests
{
    /// <summary>POSIX: a process's close() of any fd of a file drops all its locks on that file, even
    /// those taken through another open file. The guest sends FLUSH(owner) on the other handle.</summary>
    [Fact]
    public void FlushThroughAnotherHandleDropsTheOwnersLocks()
    {
        using var f = LockTests.Locking();
        File.WriteAllText(f.HostPath("f"), "data");
        FuseEntryOut e = f.Client.LookupOk(FuseConstants.RootId, "f");
        ulong fh1 = f.Client.Open(e.NodeId, Libc.O_RDWR).Ok().Read<FuseOpenOut>().Fh;
        ulong fh2 = f.Client.Open(e.NodeId, Libc.O_RDONLY).Ok().Read<FuseOpenOut>().Fh;
        f.Client.Lock(FuseOpcode.Setlk, e.NodeId, fh1, owner: 7, Libc.F_WRLCK).Ok();
        // The same owner through its read-only handle: shares the lock description (no self-conflict),
        // and a write lock needs a writable handle.
        Assert.Equal(0, f.Client.Lock(FuseOpcode.Setlk, e.NodeId, fh2, owner: 7, Libc.F_RDLCK).Error);
        Assert.Equal(Errno.EBADF, f.Client.Lock(FuseOpcode.Setlk, e.NodeId, fh2, owner: 7, Libc.F_WRLCK).Errno);
        Assert.Equal(Errno.EAGAIN, f.Client.Lock(FuseOpcode.Setlk, e.NodeId, fh1, owner: 8, Libc.F_WRLCK).Errno);
        f.Client.Flush(e.NodeId, fh2, 7).Ok();
        Assert.Equal(0, f.Client.Lock(FuseOpcode.Setlk, e.NodeId, fh1, owner: 8, Libc.F_WRLCK).Error);
    }

    /// <summary>Owner 2 waits in SETLKW on a file owner 1 holds; a FLUSH of owner 2 (its close() of
    /// another fd of the file) closes owner 2's description; another file opened right then takes its
    /// number. The retry must not lock that other file and report success: it goes on waiting on the
    /// file it was asked for, and gets the lock once owner 1 lets go.</summary>
    [Fact]
    public void AFlushUnderAWaitingSetlkwNeverLocksAnotherFile()
    {
        using var f = LockTests.Locking();
        File.WriteAllText(f.HostPath("f"), "data");
        File.WriteAllText(f.HostPath("g"), "other");
        FuseEntryOut e = f.Client.LookupOk(FuseConstants.RootId, "f");
        FuseEntryOut g = f.Client.LookupOk(FuseConstants.RootId, "g");
        ulong fh = f.Client.Open(e.NodeId, Libc.O_RDWR).Ok().Read<FuseOpenOut>().Fh;
        f.Client.Lock(FuseOpcode.Setlk, e.NodeId, fh, owner: 1, Libc.F_WRLCK).Ok();
        var waiter = new FuseTestClient(f.Server);
        var task = Task.Factory.StartNew(() => waiter.Lock(FuseOpcode.Setlkw, e.NodeId, fh, owner: 2, Libc.F_WRLCK), TaskCreationOptions.LongRunning);
        Thread.Sleep(100);
        Assert.False(task.IsCompleted);
        f.Client.Flush(e.NodeId, fh, 2).Ok();
        // Descriptors opened now take the lowest free numbers: the one the FLUSH just closed.
        var others = new List<ulong>();
        for (int i = 0; i < 4; i++)
        {
            others.Add(f.Client.Open(g.NodeId, Libc.O_RDWR).Ok().Read<FuseOpenOut>().Fh);
        }
        Thread.Sleep(300);
        Assert.False(task.IsCompleted, "SETLKW reported a lock on a file that owner 1 still holds");
        f.Client.Lock(FuseOpcode.Setlk, e.NodeId, fh, owner: 1, Libc.F_UNLCK).Ok();
        Assert.True(task.Wait(TimeSpan.FromSeconds(10)));
        Assert.Equal(0, task.Result.Error);
        // Owner 2 really holds the lock on f now.
        Assert.Equal(Errno.EAGAIN, f.Client.Lock(FuseOpcode.Setlk, e.NodeId, fh, owner: 3, Libc.F_RDLCK).Errno);
    }

    /// <summary>Locking through a read-only handle gives the daemon no writer on the file: a guest may
    /// exec a program it has locked for reading (a writer would make the exec fail with ETXTBSY), and
    /// a --readonly share never opens anything for writing.</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ReadLocksThroughAReadOnlyHandleOpenNothingForWriting(bool readOnlyShare)
    {
        using var f = new ShareFixture(makeOptions: s => new PassthroughOptions { SharedDir = s, PosixLocks = true, ReadOnly = readOnlyShare });
        File.Copy("/bin/true", f.HostPath("tool"));
        ShareFixture.Chmod(f.HostPath("tool"), 0x1ED);
        FuseEntryOut e = f.Client.LookupOk(FuseConstants.RootId, "tool");
        ulong fh = f.Client.Open(e.NodeId, Libc.O_RDONLY).Ok().Read<FuseOpenOut>().Fh;
        f.Client.Lock(FuseOpcode.Setlk, e.NodeId, fh, owner: 5, Libc.F_RDLCK).Ok();
        Assert.Empty(WritersOf(f.HostPath("tool")));
        using var run = System.Diagnostics.Process.Start(f.HostPath("tool"));
        run.WaitForExit();
        Assert.Equal(0, run.ExitCode);
    }

    /// <summary>An owner that locked through a read-only handle and then asks for a write lock through a
    /// writable one gets it (its description moves to a read-write one) and its read lock does not
    /// conflict with it.</summary>
    [Fact]
    public void AnOwnerUpgradesFromAReadOnlyToAWritableHandle()
    {
        using var f = LockTests.Locking();
        File.WriteAllText(f.HostPath("f"), new string('x', 100));
        FuseEntryOut e = f.Client.LookupOk(FuseConstants.RootId, "f");
        ulong ro = f.Client.Open(e.NodeId, Libc.O_RDONLY).Ok().Read<FuseOpenOut>().Fh;
        ulong rw = f.Client.Open(e.NodeId, Libc.O_RDWR).Ok().Read<FuseOpenOut>().Fh;
        f.Client.Lock(FuseOpcode.Setlk, e.NodeId, ro, owner: 1, Libc.F_RDLCK, 0, 49).Ok();
        Assert.Single(WritersOf(f.HostPath("f"))); // the guest's own writable handle only
        Assert.Equal(0, f.Client.Lock(FuseOpcode.Setlk, e.NodeId, rw, owner: 1, Libc.F_WRLCK, 0, 99).Error);
        Assert.Equal(Errno.EAGAIN, f.Client.Lock(FuseOpcode.Setlk, e.NodeId, ro, owner: 2, Libc.F_RDLCK, 10, 20).Errno);
        Assert.Equal(Errno.EAGAIN, f.Client.Lock(FuseOpcode.Setlk, e.NodeId, ro, owner: 2, Libc.F_RDLCK, 60, 70).Errno);
        f.Client.Lock(FuseOpcode.Setlk, e.NodeId, rw, owner: 1, Libc.F_UNLCK).Ok();
        Assert.Equal(0, f.Client.Lock(FuseOpcode.Setlk, e.NodeId, ro, owner: 2, Libc.F_RDLCK, 0, 99).Error);
    }

    [Fact]
    public void LocksAreKeptInTheGuestUnlessForwardingWasAsked()
    {
        using var f = new ShareFixture();
        FuseInitFlags granted = FuseConstants.JoinInitFlags(f.Init.Flags, f.Init.Flags2);
        Assert.False(granted.HasFlag(FuseInitFlags.PosixLocks));
        Assert.False(granted.HasFlag(FuseInitFlags.FlockLocks));
        File.WriteAllText(f.HostPath("f"), "data");
        FuseEntryOut e = f.Client.LookupOk(FuseConstants.RootId, "f");
        ulong fh = f.Client.Open(e.NodeId, Libc.O_RDWR).Ok().Read<FuseOpenOut>().Fh;
        Assert.Equal(Errno.ENOSYS, f.Client.Lock(FuseOpcode.Setlk, e.NodeId, fh, owner: 1, Libc.F_WRLCK).Errno);
        Assert.Equal(Errno.ENOSYS, f.Client.Lock(FuseOpcode.Setlk, e.NodeId, fh, owner: 1, Libc.F_WRLCK, flock: true).Errno);
    }

    /// <summary>This process's descriptors open for writing on <paramref name="path"/> (from /proc/self/fdinfo).</summary>
    private static List<string> WritersOf(string path)
    {
        var writers = new List<string>();
        foreach (string fd in Directory.GetFiles("/proc/self/fd"))
        {
            string? target = null;
            try
            {
                target = new FileInfo(fd).LinkTarget;
            }
            catch (IOException)
            {
            }
            if (target != path)
            {
                continue;
            }
            try
            {
                string flagsLine = File.ReadAllLines("/proc/self/fdinfo/" + Path.GetFileName(fd)).First(l => l.StartsWith("flags:", StringComparison.Ordinal));
                int flags = Convert.ToInt32(flagsLine["flags:".Length..].Trim(), 8);
                if ((flags & Libc.O_ACCMODE) != Libc.O_RDONLY)
                {
                    writers.Add(fd);
                }
            }
            catch (IOException)
            {
            }
        }
        return writers;
    }
}
