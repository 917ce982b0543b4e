using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using Vhostfsd.GuestKernelShim;
using Vhostfsd.Hosting;
using Vhostfsd.Posix;
using Xunit.Abstractions;

namespace Vhostfsd.Tests;

/// <summary>The system-call filter on the real daemon: in force on every thread of the serving
/// process in every sandbox mode, root or not, before a front-end connects; and what each mode
/// does to a call outside the list, made through the VHOSTFSD_TEST_SYSCALL hook (getppid, which
/// the list leaves out). The kernel's audit records are read from its log when that is readable
/// (dmesg); where it is not, the tests say so and check everything else.</summary>
public class SeccompTests(ITestOutputHelper output)
{
    private static readonly int ProbeCall = SeccompPolicyTests.ProbeCallX64;
    private const int ExitBySigsys = 128 + Libc.SIGSYS;

    private static List<string> Args(TempTree tree, string sandbox, params string[] extra) =>
        ["--socket-path", tree.Socket, "--shared-dir", tree.Share, "--sandbox=" + sandbox, "--log-level=debug", .. extra];

    private static Dictionary<string, string?> Probe(string value) => new() { [TestProbe.SyscallEnvironment] = value };

    /// <summary>The pid of the process that serves, from the supervisor's debug line. The supervisor
    /// writes it after the spawn returns, so it may come after the serving process's own lines.</summary>
    private static string Field(string status, string name)
    {
        var match = Regex.Match(status, "^" + name + @":\s*(\S+)", RegexOptions.Multiline);
        Assert.True(match.Success, $"no {name} in\n{status}");
        return match.Groups[1].Value;
    }

    /// <summary>Every thread of <paramref name="pid"/> is in seccomp filter mode (2) with
    /// no_new_privs, or (<paramref name="filtered"/> false) in neither.</summary>
    private static int AssertThreads(int pid, bool filtered)
    {
        string[] threads = Directory.GetDirectories($"/proc/{pid}/task");
        foreach (string thread in threads)
        {
            string status = File.ReadAllText(Path.Combine(thread, "status"));
            string name = Field(status, "Name");
            Assert.True(Field(status, "Seccomp") == (filtered ? "2" : "0"), $"thread {Path.GetFileName(thread)} ({name}) of {pid}:\n{status}");
            Assert.True(Field(status, "NoNewPrivs") == (filtered ? "1" : "0"), $"thread {Path.GetFileName(thread)} ({name}) of {pid}");
        }
        return threads.Length;
    }

    private static FuseFs Mount(TempTree tree) =>
        FuseFs.Mount(VirtioFsBackend.Connect(tree.Socket, new VirtioFsBackendOptions { Register = false }));

    [Theory]
    [InlineData("namespace")]
    [InlineData("chroot")]
    [InlineData("none")]
    public void Every_thread_of_the_serving_process_is_filtered_before_a_front_end_connects(string sandbox)
    {
        using var tree = new TempTree();
        using var daemon = DaemonProcess.Start(Args(tree, sandbox));
        daemon.WaitForLine("waiting for the vhost-user front-end");
        int serving = daemon.ServingPid();
        Assert.True(AssertThreads(serving, filtered: true) > 1, "a .NET process has several threads");
        // The supervisor never reads what the guest sends and keeps no filter.
        AssertThreads(daemon.Pid, filtered: false);
        // Nothing in the process handles SIGSYS (the runtime does not): --seccomp=trap ends it.
        ulong caught = ulong.Parse(Field(File.ReadAllText($"/proc/{serving}/status"), "SigCgt"), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
        Assert.Equal(0UL, caught & (1UL << (Libc.SIGSYS - 1)));
        Assert.Contains("System-call filter in force on every thread: kill", daemon.Stderr);

        using (FuseFs fs = Mount(tree))
        {
            Assert.Equal(Errno.OK, fs.Walk("/inside.txt", out FuseNode file));
            Assert.Equal(Errno.OK, fs.GetAttr(file, out _, force: true));
            // The queue threads started for the session inherited the filter.
            AssertThreads(serving, filtered: true);
        }
        Assert.Equal(0, daemon.WaitForExit());
        Assert.DoesNotContain("ERR]", daemon.Stderr);
        Assert.False(File.Exists(tree.Socket));
    }

    [Fact]
    public void An_unprivileged_daemon_is_filtered_too_and_still_removes_its_socket_at_exit()
    {
        using var tree = new TempTree();
        // The socket directory and the share belong to the daemon's user.
        using (var chown = Process.Start("chown", ["-R", "65534:65534", tree.Root]))
        {
            chown.WaitForExit();
            Assert.Equal(0, chown.ExitCode);
        }
        using var daemon = DaemonProcess.Start(Args(tree, "none"),
            runner: ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--"]);
        daemon.WaitForLine("waiting for the vhost-user front-end");
        Assert.Equal("65534", Field(File.ReadAllText($"/proc/{daemon.Pid}/status"), "Uid").Split('\t')[0]);
        AssertThreads(daemon.Pid, filtered: true);
        using (FuseFs fs = Mount(tree))
        {
            Assert.Equal(Errno.OK, fs.Walk("/inside.txt", out FuseNode file));
            Assert.Equal(Errno.OK, fs.GetAttr(file, out _, force: true));
        }
        Assert.Equal(0, daemon.WaitForExit());
        Assert.DoesNotContain("ERR]", daemon.Stderr);
        // One process, no supervisor: it removed them itself, under the filter.
        Assert.False(File.Exists(tree.Socket));
        Assert.False(File.Exists(tree.PidFile));
    }

    /// <summary>The shutdown path runs under the filter too: the signal thread, shutdown(2) of the
    /// connection, the handlers removed, the runtime's exit.</summary>
    [Theory]
    [InlineData("namespace")]
    [InlineData("none")]
    public void A_termination_signal_while_a_front_end_is_served_ends_the_session_cleanly(string sandbox)
    {
        using var tree = new TempTree();
        using var daemon = DaemonProcess.Start(Args(tree, sandbox));
        daemon.WaitForLine("waiting for the vhost-user front-end");
        using FuseFs fs = Mount(tree);
        Assert.Equal(Errno.OK, fs.Walk("/inside.txt", out FuseNode file));
        Assert.Equal(Errno.OK, fs.GetAttr(file, out _, force: true));
        daemon.Signal(Libc.SIGTERM);
        Assert.Equal(0, daemon.WaitForExit());
        Assert.True(daemon.Stderr.Contains("Front-end session ended on SIGTERM; exiting", StringComparison.Ordinal), daemon.Stderr);
        Assert.DoesNotContain("ERR]", daemon.Stderr);
        Assert.False(File.Exists(tree.Socket));
    }

    [Fact]
    public void Seccomp_none_installs_no_filter()
    {
        using var tree = new TempTree();
        using var daemon = DaemonProcess.Start(Args(tree, "chroot", "--seccomp=none"));
        daemon.WaitForLine("waiting for the vhost-user front-end");
        AssertThreads(daemon.ServingPid(), filtered: false);
        daemon.Signal(Libc.SIGTERM);
        Assert.Equal(0, daemon.WaitForExit());
    }

    [Fact]
    public void Kill_ends_the_process_with_SIGSYS_at_a_call_outside_the_list()
    {
        using var tree = new TempTree();
        using var daemon = DaemonProcess.Start(Args(tree, "chroot"), Probe(ProbeCall.ToString(CultureInfo.InvariantCulture)));
        Assert.Equal(ExitBySigsys, daemon.WaitForExit());
        int serving = daemon.ServingPid();
        Assert.Contains($"test-probe: making system call {ProbeCall}", daemon.Stderr);
        Assert.DoesNotContain($"system call {ProbeCall} returned", daemon.Stderr);
        Assert.Contains($"(pid {serving}) was killed by signal {Libc.SIGSYS} (SIGSYS)", daemon.Stderr);
        // The supervisor cleaned up after it.
        Assert.False(File.Exists(tree.Socket));
        Assert.False(File.Exists(tree.PidFile));
        KernelLog.AssertRecord(output, serving, ProbeCall, Libc.SECCOMP_RET_KILL_PROCESS);
    }

    [Fact]
    public void A_front_end_sees_a_daemon_killed_mid_session_go_instead_of_hanging()
    {
        using var tree = new TempTree();
        using var daemon = DaemonProcess.Start(Args(tree, "namespace"), Probe(ProbeCall.ToString(CultureInfo.InvariantCulture) + ":SIGUSR1"));
        daemon.WaitForLine($"test-probe: system call {ProbeCall} on SIGUSR1");
        daemon.WaitForLine("waiting for the vhost-user front-end");
        int serving = daemon.ServingPid();
        using FuseFs fs = Mount(tree);
        var backend = (VirtioFsBackend)fs.Conn.Transport;
        Assert.Equal(Errno.OK, fs.Walk("/inside.txt", out FuseNode file));

        // A caller keeps the device busy while the serving process makes the forbidden call.
        Errno last = Errno.OK;
        int served = 0;
        var caller = new Thread(() =>
        {
            var deadline = DateTime.UtcNow + DaemonProcess.Timeout;
            while (DateTime.UtcNow < deadline && (last = fs.GetAttr(file, out _, force: true)) == Errno.OK)
            {
                served++;
            }
        });
        caller.Start();
        Assert.True(SpinWait.SpinUntil(() => Volatile.Read(ref served) > 10, DaemonProcess.Timeout));
        Assert.Equal(0, Libc.Kill(serving, Libc.SIGUSR1));
        Assert.True(caller.Join(DaemonProcess.Timeout), "a request hangs after the serving process was killed");
        Assert.Equal(Errno.ENOTCONN, last);
        Assert.True(backend.DaemonGone);
        Assert.Equal(ExitBySigsys, daemon.WaitForExit());
        Assert.Contains($"test-probe: making system call {ProbeCall}", daemon.Stderr);
        Assert.Contains($"was killed by signal {Libc.SIGSYS} (SIGSYS)", daemon.Stderr);
        Assert.False(File.Exists(tree.Socket));
        KernelLog.AssertRecord(output, serving, ProbeCall, Libc.SECCOMP_RET_KILL_PROCESS);
    }

    [Fact]
    public void Log_lets_the_call_run_and_the_kernel_records_it()
    {
        using var tree = new TempTree();
        using var daemon = DaemonProcess.Start(Args(tree, "chroot", "--seccomp=log"), Probe(ProbeCall.ToString(CultureInfo.InvariantCulture)));
        daemon.WaitForLine("waiting for the vhost-user front-end");
        int serving = daemon.ServingPid();
        AssertThreads(serving, filtered: true);
        // getppid ran: it answered with the supervisor's pid.
        daemon.WaitForLine($"test-probe: system call {ProbeCall} returned {daemon.Pid}");
        using (FuseFs fs = Mount(tree))
        {
            Assert.Equal(Errno.OK, fs.Walk("/inside.txt", out FuseNode file));
            Assert.Equal(Errno.OK, fs.GetAttr(file, out _, force: true));
        }
        Assert.Equal(0, daemon.WaitForExit());
        KernelLog.AssertRecord(output, serving, ProbeCall, Libc.SECCOMP_RET_LOG);
    }

    [Fact]
    public void Trap_ends_the_process_with_SIGSYS_that_nothing_handles()
    {
        using var tree = new TempTree();
        using var daemon = DaemonProcess.Start(Args(tree, "chroot", "--seccomp=trap"), Probe(ProbeCall.ToString(CultureInfo.InvariantCulture)));
        Assert.Equal(ExitBySigsys, daemon.WaitForExit());
        int serving = daemon.ServingPid();
        Assert.Contains("System-call filter in force on every thread: trap", daemon.Stderr);
        Assert.DoesNotContain($"system call {ProbeCall} returned", daemon.Stderr);
        Assert.Contains($"(pid {serving}) was killed by signal {Libc.SIGSYS} (SIGSYS)", daemon.Stderr);
        KernelLog.AssertRecord(output, serving, ProbeCall, Libc.SECCOMP_RET_TRAP);
    }

    /// <summary>The kernel's audit records of seccomp actions (type 1326), as dmesg shows them when
    /// no audit daemon collects them.</summary>
    private static class KernelLog
    {
        public static void AssertRecord(ITestOutputHelper output, int pid, int call, uint action)
        {
            var record = new Regex($@"type=1326 .*\bpid={pid} .*\bsyscall={call} .*\bcode=0x{action:x}\b");
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
            while (true)
            {
                string? log = Read();
                if (log == null)
                {
                    output.WriteLine("The kernel log is not readable here (dmesg failed): the seccomp audit record was not checked.");
                    return;
                }
                if (record.IsMatch(log))
                {
                    return;
                }
                // kauditd prints asynchronously.
                if (DateTime.UtcNow > deadline)
                {
                    Assert.Fail($"no audit record of pid {pid} making system call {call} (action 0x{action:x}) in the kernel log:\n"
                        + string.Join('\n', log.Split('\n').Where(l => l.Contains("type=1326", StringComparison.Ordinal)).TakeLast(20)));
                }
                Thread.Sleep(100);
            }
        }

        private static string? Read()
        {
            try
            {
                var start = new ProcessStartInfo("dmesg") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
                using var dmesg = Process.Start(start)!;
                string text = dmesg.StandardOutput.ReadToEnd();
                dmesg.WaitForExit();
                return dmesg.ExitCode == 0 ? text : null;
            }
            catch (System.ComponentModel.Win32Exception)
            {
                return null;
            }
        }
    }
}
