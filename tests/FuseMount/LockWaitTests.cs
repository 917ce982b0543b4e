using System.Diagnostics;

namespace Vhostfsd.FuseMount.Tests;

/// <summary>A SETLKW runs on the reader that read it for as long as the lock is held; the daemon must
/// keep serving everything else meanwhile.</summary>
public sealed class LockWaitTests
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(30);

    [Fact]
    public void Waiting_SETLKW_requests_do_not_stall_other_requests()
    {
        using var m = MountedShare.Start(["--posix-lock"]);
        string locked = m.InMount("locked");
        File.WriteAllText(locked, "x");

        // This process holds no file on the mount while it starts the others: a child's exec closes
        // its copies, and every close is a FLUSH that needs a reader.
        var holder = LockHelper.StartHolding(locked);
        var waiters = new List<Process>();
        bool served = false;
        try
        {
            Assert.Equal("held", LockHelper.NextLine(holder, Patience));
            // More waiters than the readers the daemon starts with (one per CPU): were lock waits
            // left to those readers alone, they would hold every one of them.
            int count = Environment.ProcessorCount + 2;
            for (int i = 0; i < count; i++)
            {
                waiters.Add(LockHelper.StartWaiting(locked));
                // It opens the file first: that request, too, needs a free reader.
                Assert.True(LockHelper.NextLine(waiters[i], Patience) == "waiting", $"waiter {i + 1} could not open the file: every reader is taken");
            }
            Thread.Sleep(500);
            Assert.All(waiters, w => Assert.False(w.HasExited, "a waiter got the lock while it was held"));

            var others = Task.Run(() => Parallel.For(0, 4, worker =>
            {
                for (int i = 0; i < 50; i++)
                {
                    string path = m.InMount($"other-{worker}-{i}");
                    File.WriteAllText(path, "meanwhile");
                    Assert.Equal("meanwhile", File.ReadAllText(path));
                    Assert.True(Directory.Exists(m.MountPoint));
                    File.Delete(path);
                }
            }));
            Assert.True(others.Wait(Patience), "other requests stalled behind the waiting SETLKWs");
            Assert.All(waiters, w => Assert.False(w.HasExited, "a waiter got the lock while it was held"));
            served = true;

            // The holder exits, and each waiter gets the lock in turn and releases it by exiting.
            holder.StandardInput.WriteLine();
            foreach (var waiter in waiters)
            {
                Assert.Equal("locked", LockHelper.NextLine(waiter, Patience));
                Assert.True(waiter.WaitForExit(Patience));
            }
        }
        finally
        {
            if (!served)
            {
                // With every reader stuck, not even the unlock, or the INTERRUPT that killing a waiter
                // sends, would be read: only ending the connection frees the callers (ENOTCONN).
                m.Stop();
            }
            foreach (var process in waiters.Append(holder))
            {
                if (!process.HasExited)
                {
                    process.Kill();
                }
                process.Dispose();
            }
        }
        Assert.Contains("Started spare FUSE reader", m.Daemon.Stderr);
    }
}
