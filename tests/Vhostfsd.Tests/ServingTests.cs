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
}
