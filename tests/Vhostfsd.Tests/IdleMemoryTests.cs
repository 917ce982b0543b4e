using Vhostfsd.GuestKernelShim;
using Vhostfsd.Posix;
using ShimDaemon = Vhostfsd.Testing.DaemonProcess;

namespace Vhostfsd.Tests;

/// <summary>What the daemon's two processes keep mapped: the native executable needs nothing
/// but itself and the C library — no .NET runtime, no assembly, and no library it never uses
/// (OpenSSL came in once through the cryptographic random source, about 6 MiB resident).</summary>
public class IdleMemoryTests
{
    /// <summary>The files a process may map besides the executable: glibc's C and maths libraries
    /// and its dynamic loader.</summary>
    private static readonly string[] CLibrary = ["libc.so.6", "libm.so.6", "ld-linux-x86-64.so.2"];

    [Theory]
    [InlineData("chroot")]
    [InlineData("namespace")]
    public void Both_processes_map_only_the_executable_and_the_C_library_while_serving(string sandbox)
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
                string executable = Path.GetFullPath(Vhostfsd.Testing.NativeExecutable.Find());
                foreach (int pid in new[] { daemon.Pid, serving })
                {
                    var files = MappedFiles(pid);
                    Assert.Contains(executable, files);
                    foreach (string path in files)
                    {
                        // Guest memory: the front-end's memfd regions.
                        bool guestMemory = path.StartsWith("/memfd:", StringComparison.Ordinal);
                        Assert.True(path == executable || guestMemory || CLibrary.Contains(Path.GetFileName(path)), $"process {pid} maps {path}");
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

    /// <summary>The files in /proc/PID/maps (the last field of the lines that name a path).</summary>
    private static HashSet<string> MappedFiles(int pid)
    {
        var files = new HashSet<string>(StringComparer.Ordinal);
        foreach (string line in File.ReadAllLines($"/proc/{pid}/maps"))
        {
            int slash = line.IndexOf(" /", StringComparison.Ordinal);
            if (slash >= 0)
            {
                files.Add(line[(slash + 1)..].Trim());
            }
        }
        return files;
    }
}
