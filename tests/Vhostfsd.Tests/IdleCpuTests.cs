using Vhostfsd.GuestKernelShim;
using Vhostfsd.Posix;
using ShimDaemon = Vhostfsd.Testing.DaemonProcess;

namespace Vhostfsd.Tests;

/// <summary>A queue's thread polls its ring between requests (--poll-max-us): once the guest stops
/// sending, it must go back to sleep, so an idle daemon takes no CPU.</summary>
public class IdleCpuTests
{
    /// <summary>CPU time (clock ticks, utime + stime) of the serving process's ring threads, by name.</summary>
    private static Dictionary<string, long> RingThreadTicks(int pid)
    {
        var ticks = new Dictionary<string, long>();
        foreach (string task in Directory.GetDirectories($"/proc/{pid}/task"))
        {
            try
            {
                string comm = File.ReadAllText(Path.Combine(task, "comm")).Trim();
                if (!comm.StartsWith("vring-", StringComparison.Ordinal))
                {
                    continue;
                }
                string stat = File.ReadAllText(Path.Combine(task, "stat"));
                // Fields after the parenthesised name: state is field 3, utime 14, stime 15.
                string[] fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
                ticks[comm] = long.Parse(fields[11]) + long.Parse(fields[12]);
            }
            catch (IOException)
            {
                // The thread ended meanwhile.
            }
        }
        return ticks;
    }

    [Fact]
    public void After_back_to_back_requests_stop_the_ring_threads_sleep()
    {
        string share = Directory.CreateTempSubdirectory("vfsd-idlecpu-").FullName;
        try
        {
            File.WriteAllText(Path.Combine(share, "file.txt"), "content\n");
            using var daemon = ShimDaemon.StartVhostfsd(share, "--sandbox=none", "--cache=never", "--poll-max-us=1000");
            using (FuseFs fs = daemon.Mount())
            {
                Assert.Equal(Errno.OK, fs.Walk("/file.txt", out FuseNode file));
                // Back to back: the poll window grows to its maximum.
                for (int i = 0; i < 3000; i++)
                {
                    Assert.Equal(Errno.OK, fs.GetAttr(file, out _, force: true));
                }
                Thread.Sleep(500);
                var before = RingThreadTicks(daemon.ServingPid);
                Assert.NotEmpty(before);
                Thread.Sleep(1000);
                var after = RingThreadTicks(daemon.ServingPid);
                foreach (var (name, ticks) in after)
                {
                    long used = ticks - before.GetValueOrDefault(name);
                    // A thread still polling would take ~1 s (100 ticks at USER_HZ 100) in that second.
                    Assert.True(used <= 3, $"{name} used {used} clock ticks of CPU in an idle second");
                }
            }
            Assert.True(daemon.WaitForExit(TimeSpan.FromSeconds(30)), "the daemon did not exit after the guest went away:\n" + daemon.Output);
        }
        finally
        {
            Directory.Delete(share, recursive: true);
        }
    }
}
