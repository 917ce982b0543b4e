using Vhostfsd.GuestKernelShim;
using Vhostfsd.Posix;
using ShimDaemon = Vhostfsd.Testing.DaemonProcess;

namespace Vhostfsd.Tests;

/// <summary>What the daemon's two processes keep mapped: every library or assembly loaded stays
/// resident for the life of the process and counts in its idle memory, so libraries the daemon
/// never uses must not be loaded — not by the pre-sandbox preload, not by the test hooks.</summary>
public class IdleMemoryTests
{
    /// <summary>Mapped files that nothing in the daemon uses: OpenSSL and its managed wrapper
    /// (about 6 MiB resident together) came in when the preload started the cryptographic
    /// random source; regular expressions (0.5 MiB) and concurrent collections (0.25 MiB) when it
    /// followed references that the daemon never reaches (see Preload.NotFollowed).</summary>
    private static readonly string[] Unused =
    [
        "libcrypto.so", "libssl.so", "libSystem.Security.Cryptography.Native.OpenSsl.so", "System.Security.Cryptography.dll",
        "System.Text.RegularExpressions.dll", "System.Collections.Concurrent.dll",
    ];

    [Theory]
    [InlineData("chroot")]
    [InlineData("namespace")]
    public void Neither_process_maps_unused_libraries_while_serving(string sandbox)
    {
        string share = Directory.CreateTempSubdirectory("vfsd-idle-").FullName;
        try
        {
            File.WriteAllText(Path.Combine(share, "file.txt"), "content\n");
            using var daemon = ShimDaemon.StartVhostfsd(share, "--sandbox=" + sandbox);
            using (FuseFs fs = daemon.Mount())
            {
                Assert.Equal(Errno.OK, fs.Walk("/file.txt", out FuseNode file));
                Assert.Equal(Errno.OK, fs.Open(file, Libc.O_RDONLY, out FuseFile? reader));
                Assert.Equal(Errno.OK, fs.Release(reader!));
                int serving = daemon.ServingPid;
                Assert.NotEqual(daemon.Pid, serving);
                foreach (int pid in new[] { daemon.Pid, serving })
                {
                    string maps = File.ReadAllText($"/proc/{pid}/maps");
                    Assert.Contains("System.Private.CoreLib.dll", maps);
                    foreach (string name in Unused)
                    {
                        Assert.False(maps.Contains(name, StringComparison.Ordinal), $"process {pid} maps {name}");
                    }
                }
            }
            Assert.True(daemon.WaitForExit(TimeSpan.FromSeconds(30)), "the daemon did not exit after the guest went away:\n" + daemon.Output);
            Assert.True(daemon.ExitCode == 0, daemon.Output);
        }
        finally
        {
            Directory.Delete(share, recursive: true);
        }
    }
}
