using System.Globalization;
using Vhostfsd.Posix;

namespace Vhostfsd.Tests;

/// <summary>Socket set-up, the lock file, signals, one connection.</summary>
public class LifecycleTests
{
    private static string[] Args(TempTree tree, string sandbox = "none", params string[] extra) =>
        ["--socket-path", tree.Socket, "--shared-dir", tree.Share, "--sandbox=" + sandbox, .. extra];

    [Fact]
    public void Socket_is_private_and_lock_file_holds_the_pid()
    {
        using var tree = new TempTree();
        using var daemon = DaemonProcess.Start(Args(tree));
        daemon.WaitForLine("waiting for the vhost-user front-end");
        Assert.Equal(0x1C0u, TestSockets.SocketMode(tree.Socket) & 0x1FF); // 0700
        Assert.Equal(daemon.Pid.ToString(CultureInfo.InvariantCulture), TestSockets.ReadAll(tree.PidFile).Trim());
        daemon.Signal(Libc.SIGTERM);
        Assert.Equal(0, daemon.WaitForExit());
    }

    [Fact]
    public void Socket_group_makes_the_socket_group_accessible()
    {
        using var tree = new TempTree();
        // "daemon" (gid 1) exists in every Debian base system.
        using var daemon = DaemonProcess.Start(Args(tree, "none", "--socket-group=daemon"));
        daemon.WaitForLine("waiting for the vhost-user front-end");
        Assert.Equal(0x1F8u, TestSockets.SocketMode(tree.Socket) & 0x1FF); // 0770
        Assert.Equal(0, Libc.Identify(tree.Socket, out _));
        Assert.Equal(1, GroupOf(tree.Socket));
        daemon.Signal(Libc.SIGTERM);
        Assert.Equal(0, daemon.WaitForExit());
    }

    /// <summary>The daemon has a handler for <paramref name="signal"/> (SigCgt in /proc/PID/status), so
    /// the signal is a request to stop and not the default action, which would leave the socket and
    /// lock file behind.</summary>
    private static void AssertCaughtBy(int pid, int signal)
    {
        string line = File.ReadLines($"/proc/{pid}/status").First(l => l.StartsWith("SigCgt:", StringComparison.Ordinal));
        ulong caught = ulong.Parse(line["SigCgt:".Length..].Trim(), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
        Assert.True((caught & (1UL << (signal - 1))) != 0, $"process {pid} has no handler for signal {signal} ({line})");
    }

    private static int GroupOf(string path)
    {
        // stat -c %g, without another binding.
        var info = new System.Diagnostics.ProcessStartInfo("stat", ["-c", "%g", path]) { RedirectStandardOutput = true };
        using var stat = System.Diagnostics.Process.Start(info)!;
        string text = stat.StandardOutput.ReadToEnd();
        stat.WaitForExit();
        return int.Parse(text.Trim(), CultureInfo.InvariantCulture);
    }

    [Theory]
    [InlineData("none", Libc.SIGTERM)]
    [InlineData("none", Libc.SIGINT)]
    [InlineData("none", Libc.SIGHUP)]
    [InlineData("chroot", Libc.SIGTERM)]
    [InlineData("namespace", Libc.SIGTERM)]
    [InlineData("namespace", Libc.SIGINT)]
    public void A_termination_signal_while_waiting_exits_0_and_removes_socket_and_lock_file(string sandbox, int signal)
    {
        using var tree = new TempTree();
        using var daemon = DaemonProcess.Start(Args(tree, sandbox));
        daemon.WaitForLine("waiting for the vhost-user front-end");
        AssertCaughtBy(daemon.Pid, signal);
        Assert.True(File.Exists(tree.Socket));
        Assert.True(File.Exists(tree.PidFile));
        daemon.Signal(signal);
        Assert.Equal(0, daemon.WaitForExit());
        Assert.False(File.Exists(tree.Socket), "socket left behind");
        Assert.False(File.Exists(tree.PidFile), "lock file left behind");
        Assert.Contains("before a front-end connected", daemon.Stderr);
        Assert.DoesNotContain("ERR]", daemon.Stderr);
    }

    /// <summary>The lock file exists from the moment the supervisor holds the socket path, well
    /// before the serving copy has its signal handlers; the later delays land while the copy's
    /// runtime starts (the supervisor holds the signal back until the copy can take it).</summary>
    [Theory]
    [InlineData("none", 0)]
    [InlineData("chroot", 0)]
    [InlineData("chroot", 40)]
    [InlineData("chroot", 80)]
    [InlineData("chroot", 120)]
    [InlineData("namespace", 0)]
    public void A_signal_during_start_up_is_not_lost(string sandbox, int delayMs)
    {
        using var tree = new TempTree();
        using var daemon = DaemonProcess.Start(Args(tree, sandbox));
        var deadline = DateTime.UtcNow + DaemonProcess.Timeout;
        while (!File.Exists(tree.PidFile))
        {
            Assert.True(DateTime.UtcNow < deadline && !daemon.HasExited, daemon.Stderr);
            Thread.Sleep(5);
        }
        Thread.Sleep(delayMs);
        daemon.Signal(Libc.SIGTERM);
        Assert.Equal(0, daemon.WaitForExit());
        Assert.False(File.Exists(tree.Socket));
        Assert.False(File.Exists(tree.PidFile));
    }

    [Fact]
    public void A_stale_socket_is_replaced()
    {
        using var tree = new TempTree();
        TestSockets.LeaveStaleSocket(tree.Socket);
        using var daemon = DaemonProcess.Start(Args(tree));
        daemon.WaitForLine("Removed stale socket " + tree.Socket);
        daemon.WaitForLine("waiting for the vhost-user front-end");
        using (var connection = TestSockets.TryConnect(tree.Socket))
        {
            Assert.NotNull(connection);
        }
        daemon.WaitForExit();
        Assert.False(File.Exists(tree.Socket));
    }

    [Fact]
    public void A_socket_served_by_another_daemon_is_refused()
    {
        using var tree = new TempTree();
        using var first = DaemonProcess.Start(Args(tree));
        first.WaitForLine("waiting for the vhost-user front-end");
        var (code, _, stderr) = DaemonProcess.Run(Args(tree));
        Assert.Equal(1, code);
        Assert.Contains($"socket {tree.Socket} is in use: another daemon (pid {first.Pid}) holds the lock on {tree.PidFile}", stderr);
        Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        // The first one is untouched and still accepts.
        Assert.False(first.HasExited);
        Assert.Equal(first.Pid.ToString(CultureInfo.InvariantCulture), TestSockets.ReadAll(tree.PidFile).Trim());
        first.Signal(Libc.SIGTERM);
        Assert.Equal(0, first.WaitForExit());
    }

    [Fact]
    public void A_socket_with_a_live_listener_but_no_lock_file_is_refused()
    {
        using var tree = new TempTree();
        int listener = TestSockets.Listen(tree.Socket, inheritable: false);
        try
        {
            var (code, _, stderr) = DaemonProcess.Run(Args(tree));
            Assert.Equal(1, code);
            Assert.Contains("a process accepts connections on it", stderr);
            Assert.True(File.Exists(tree.Socket), "the live socket must not be removed");
            Assert.False(File.Exists(tree.PidFile), "a failed start leaves no lock file");
        }
        finally
        {
            Libc.Close(listener);
        }
    }

    [Fact]
    public void A_file_that_is_not_a_socket_is_never_replaced()
    {
        using var tree = new TempTree();
        File.WriteAllText(tree.Socket, "precious");
        var (code, _, stderr) = DaemonProcess.Run(Args(tree));
        Assert.Equal(1, code);
        Assert.Contains("exists and is not a socket", stderr);
        Assert.Equal("precious", File.ReadAllText(tree.Socket));
    }

    [Theory]
    [InlineData("none")]
    [InlineData("namespace")]
    public void Fd_serves_an_inherited_listening_socket(string sandbox)
    {
        using var tree = new TempTree();
        int fd = TestSockets.Listen(tree.Socket, inheritable: true);
        try
        {
            using var daemon = DaemonProcess.Start(["--fd=" + fd, "--shared-dir=" + tree.Share, "--sandbox=" + sandbox]);
            daemon.WaitForLine($"Listening on fd {fd}");
            daemon.WaitForLine("waiting for the vhost-user front-end");
            Libc.Close(fd);
            fd = -1;
            using (var connection = TestSockets.TryConnect(tree.Socket))
            {
                Assert.NotNull(connection);
                daemon.WaitForLine(sandbox == "namespace" ? "Front-end connected (uid 0, gid 0; its pid is outside the sandbox" : $"Front-end connected (pid {Environment.ProcessId}, uid 0");
            }
            daemon.WaitForExit();
            // --fd: the socket file belongs to whoever made it.
            Assert.True(File.Exists(tree.Socket));
            Assert.False(File.Exists(tree.PidFile));
        }
        finally
        {
            if (fd >= 0)
            {
                Libc.Close(fd);
            }
        }
    }

    [Fact]
    public void Systemd_socket_activation_passes_fd_3()
    {
        using var tree = new TempTree();
        int fd = TestSockets.Listen(tree.Socket, inheritable: true);
        try
        {
            // As systemd does: the socket as fd 3, LISTEN_PID naming the daemon's own pid.
            using var daemon = DaemonProcess.Start(["--shared-dir=" + tree.Share, "--sandbox=none"],
                shellPrefix: $"exec 3<&{fd}; LISTEN_FDS=1; LISTEN_PID=$$; export LISTEN_FDS LISTEN_PID;");
            daemon.WaitForLine("Using the socket passed by systemd (fd 3)");
            daemon.WaitForLine("waiting for the vhost-user front-end");
            daemon.Signal(Libc.SIGTERM);
            Assert.Equal(0, daemon.WaitForExit());

            using var explicitFd = DaemonProcess.Start(["--fd=3", "--shared-dir=" + tree.Share, "--sandbox=none"],
                shellPrefix: $"exec 3<&{fd}; LISTEN_FDS=1; LISTEN_PID=$$; export LISTEN_FDS LISTEN_PID;");
            explicitFd.WaitForLine("Listening on fd 3");
            explicitFd.Signal(Libc.SIGTERM);
            Assert.Equal(0, explicitFd.WaitForExit());
        }
        finally
        {
            Libc.Close(fd);
        }
    }

    [Theory]
    [InlineData("none")]
    [InlineData("chroot")]
    [InlineData("namespace")]
    public void One_connection_is_accepted_and_handed_to_the_device(string sandbox)
    {
        using var tree = new TempTree();
        using var daemon = DaemonProcess.Start(Args(tree, sandbox));
        daemon.WaitForLine("waiting for the vhost-user front-end");
        UnixSocket? second;
        using (var connection = TestSockets.TryConnect(tree.Socket))
        {
            Assert.NotNull(connection);
            daemon.WaitForLine(sandbox == "namespace" ? "Front-end connected (uid 0, gid 0; its pid is outside the sandbox" : $"Front-end connected (pid {Environment.ProcessId}, uid 0, gid 0)");
            // Only one front-end per process: a second one is not accepted.
            second = TestSockets.TryConnect(tree.Socket);
        }
        using (second)
        {
            if (second != null)
            {
                // Queued in the backlog before the listener closed: once the first session ends
                // and the daemon exits, it ends without being served. (Waiting on it while the
                // first session is still open would wait forever: the device serves until then.)
                byte[] one = new byte[1];
                try
                {
                    Assert.Equal(0, second.Receive(one, Span<int>.Empty, out _, out _));
                }
                catch (PosixException e) when (e.Errno == Errno.ECONNRESET)
                {
                    // Also an end without service.
                }
            }
        }
        int code = daemon.WaitForExit();
        Assert.Contains("Front-end disconnected; exiting with code " + code, daemon.Stderr);
        Assert.Equal(0, code);
        Assert.False(File.Exists(tree.Socket));
        Assert.False(File.Exists(tree.PidFile));
    }
}
