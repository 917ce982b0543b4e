using System.Text;
using Vhostfsd.GuestKernelShim;
using Vhostfsd.Posix;
using ShimDaemon = Vhostfsd.Testing.DaemonProcess;

namespace Vhostfsd.Tests;

/// <summary>The device really serves from inside each sandbox: a guest (the shim) mounts the
/// share over the daemon's socket, reads a host file, writes one back, lists the directory and
/// unmounts; the daemon then exits 0. This is where anything the sandbox took away from the
/// device (/proc, files on disk the runtime would load late) would show.</summary>
public class ServingTests
{
    [Theory]
    [InlineData("namespace")]
    [InlineData("chroot")]
    [InlineData("none")]
    public void A_guest_reads_and_writes_through_each_sandbox(string sandbox)
    {
        string share = Directory.CreateTempSubdirectory("vfsd-serve-").FullName;
        try
        {
            File.WriteAllText(Path.Combine(share, "from-host.txt"), "written on the host\n");
            Directory.CreateDirectory(Path.Combine(share, "dir"));
            using var daemon = ShimDaemon.StartVhostfsd(share, "--sandbox=" + sandbox, "--thread-pool-size=2");
            using (FuseFs fs = daemon.Mount())
            {
                Assert.Equal(Errno.OK, fs.Walk("/from-host.txt", out FuseNode hostFile));
                Assert.Equal(Errno.OK, fs.Open(hostFile, Libc.O_RDONLY, out FuseFile? reader));
                byte[] buffer = new byte[256];
                Assert.Equal(Errno.OK, fs.Read(reader!, buffer, 0, out int read));
                Assert.Equal("written on the host\n", Encoding.UTF8.GetString(buffer, 0, read));
                Assert.Equal(Errno.OK, fs.Release(reader!));

                Assert.Equal(Errno.OK, fs.Create(fs.Root, "from-guest.txt", Libc.O_WRONLY, 0x1A4, out _, out FuseFile? writer));
                byte[] text = Encoding.UTF8.GetBytes("written in the guest\n");
                Assert.Equal(Errno.OK, fs.Write(writer!, text, 0, out int written));
                Assert.Equal(text.Length, written);
                Assert.Equal(Errno.OK, fs.Release(writer!));

                var entries = new List<FuseDirEntry>();
                Assert.Equal(Errno.OK, fs.ReadDirectoryAll(fs.Root, entries));
                var names = entries.Select(e => e.Name).ToHashSet();
                Assert.Superset(new HashSet<string> { "from-host.txt", "from-guest.txt", "dir" }, names);
            }
            Assert.Equal("written in the guest\n", File.ReadAllText(Path.Combine(share, "from-guest.txt")));
            Assert.True(daemon.WaitForExit(TimeSpan.FromSeconds(30)), "the daemon did not exit after the guest went away:\n" + daemon.Output);
            Assert.True(daemon.ExitCode == 0, daemon.Output);
            Assert.DoesNotContain("ERR]", daemon.Output);
            Assert.DoesNotContain("FTL]", daemon.Output);
            Assert.Contains("Front-end disconnected; exiting with code 0", daemon.Output);
        }
        finally
        {
            Directory.Delete(share, recursive: true);
        }
    }

    [Fact]
    public void A_guest_is_served_over_a_socket_activated_fd_3()
    {
        using var tree = new TempTree();
        int fd = TestSockets.Listen(tree.Socket, inheritable: true);
        try
        {
            // As systemd (or systemd-socket-activate) starts it: the socket as fd 3, info level,
            // the runtime's diagnostics left at their default.
            using var daemon = DaemonProcess.Start(["--fd=3", "--shared-dir=" + tree.Share],
                new Dictionary<string, string?> { ["DOTNET_EnableDiagnostics"] = null },
                shellPrefix: $"exec 3<&{fd}; LISTEN_FDS=1; LISTEN_PID=$$; export LISTEN_FDS LISTEN_PID;");
            Libc.Close(fd);
            fd = -1;
            using (FuseFs fs = FuseFs.Mount(VirtioFsBackend.Connect(tree.Socket, new VirtioFsBackendOptions { Register = false })))
            {
                Assert.Equal(Errno.OK, fs.Walk("/inside.txt", out FuseNode node));
                Assert.Equal(Errno.OK, fs.Open(node, Libc.O_RDONLY, out FuseFile? file));
                byte[] buffer = new byte[64];
                Assert.Equal(Errno.OK, fs.Read(file!, buffer, 0, out int read));
                Assert.Equal("inside\n", Encoding.UTF8.GetString(buffer, 0, read));
                Assert.Equal(Errno.OK, fs.Release(file!));
            }
            Assert.Equal(0, daemon.WaitForExit());
            Assert.Contains("Front-end disconnected; exiting with code 0", daemon.Stderr);
            Assert.DoesNotContain("fatal", daemon.Stderr);
        }
        finally
        {
            if (fd >= 0)
            {
                Libc.Close(fd);
            }
        }
    }
}
