using System.Text.Json;
using Vhostfsd.Posix;

namespace Vhostfsd.Tests;

/// <summary>The real program: what it prints and how it fails.</summary>
public class ProgramTests
{
    [Fact]
    public void Version_prints_one_line_and_exits_0()
    {
        var (code, stdout, stderr) = DaemonProcess.Run(["--version"]);
        Assert.Equal(0, code);
        Assert.Matches(@"^vhostfsd \d+\.\d+\.\d+$", stdout.Trim());
        Assert.Equal("", stderr);
        Assert.Equal(stdout, DaemonProcess.Run(["-V"]).Stdout);
    }

    [Fact]
    public void Help_describes_every_supported_option()
    {
        var (code, stdout, _) = DaemonProcess.Run(["--help"]);
        Assert.Equal(0, code);
        foreach (string option in new[]
        {
            "--shared-dir", "--tag", "--socket-path", "--socket-group", "--fd", "--thread-pool-size", "--xattr", "--posix-acl",
            "--xattrmap", "--sandbox", "--readonly", "--seccomp", "--announce-submounts", "--no-announce-submounts",
            "--inode-file-handles", "--cache", "--allow-mmap", "--no-readdirplus", "--writeback", "--allow-direct-io",
            "--print-capabilities", "--modcaps", "--log-level", "--syslog", "--rlimit-nofile", "-o", "-d", "-f",
            "--killpriv-v2", "--no-killpriv-v2", "--security-label", "--preserve-noatime", "--version",
        })
        {
            Assert.Contains(option + " ", stdout);
        }
        // Refused options are recognised but not advertised.
        Assert.DoesNotContain("--uid-map", stdout);
        Assert.DoesNotContain("--migration-mode", stdout);
    }

    [Fact]
    public void Print_capabilities_is_the_vhost_user_backend_json()
    {
        var (code, stdout, stderr) = DaemonProcess.Run(["--print-capabilities"]);
        Assert.Equal(0, code);
        Assert.Equal("", stderr);
        using var json = JsonDocument.Parse(stdout);
        Assert.Equal("fs", json.RootElement.GetProperty("type").GetString());
        var features = json.RootElement.GetProperty("features").EnumerateArray().Select(f => f.GetString()).ToList();
        Assert.Contains("separate-options", features);
        // Migration is not implemented, so it must not be claimed.
        Assert.DoesNotContain("migrate-precopy", features);
        Assert.All(features, f => Assert.Contains(f, new[] { "separate-options", "migrate-precopy" }));
    }

    public static TheoryData<string, int, string[]> BadInputs()
    {
        var data = new TheoryData<string, int, string[]>
        {
            { "missing --shared-dir", 2, ["--socket-path=/tmp/vfsd-x.sock"] },
            { "missing --socket-path PATH or --fd N", 2, ["--shared-dir=/tmp"] },
            { "both name the listening socket", 2, ["--shared-dir=/tmp", "--socket-path=/tmp/vfsd-x.sock", "--fd=3"] },
            { "Unrecognized command or argument '--frobnicate'", 2, ["--shared-dir=/tmp", "--frobnicate"] },
            { "invalid value 'sometimes' for --cache", 2, ["--shared-dir=/tmp", "--fd=3", "--cache=sometimes"] },
            { "unknown -o option 'nonsense'", 2, ["--fd=3", "-o", "source=/tmp,nonsense"] },
            { "invalid value 'strict' for --seccomp", 2, ["--shared-dir=/tmp", "--fd=3", "--seccomp=strict"] },
            { "invalid value 'errno' for -o seccomp=", 2, ["--fd=3", "-o", "source=/tmp,seccomp=errno"] },
            { "shared directory /nonexistent/vfsd does not exist", 1, ["--shared-dir=/nonexistent/vfsd", "--socket-path=/tmp/vfsd-x.sock", "--sandbox=none"] },
            { "is not a directory", 1, ["--shared-dir=/etc/hostname", "--socket-path=/tmp/vfsd-x.sock", "--sandbox=none"] },
            { "directory /nonexistent-dir does not exist", 1, ["--shared-dir=/tmp", "--socket-path=/nonexistent-dir/v.sock", "--sandbox=none"] },
            { "a UNIX socket path must be", 1, ["--shared-dir=/tmp", "--socket-path=/tmp/" + new string('x', 120), "--sandbox=none"] },
            { "--fd=97: not an open file descriptor", 1, ["--shared-dir=/tmp", "--fd=97", "--sandbox=none"] },
            { "--socket-group nosuchgroupvfsd: no such group", 1, ["--shared-dir=/tmp", "--socket-path=/tmp/vfsd-g.sock", "--socket-group=nosuchgroupvfsd", "--sandbox=none"] },
        };
        return data;
    }

    [Theory]
    [MemberData(nameof(BadInputs))]
    public void Bad_input_gives_one_line_and_a_nonzero_code(string expected, int expectedCode, string[] args)
    {
        var (code, stdout, stderr) = DaemonProcess.Run(args);
        Assert.Equal(expectedCode, code);
        Assert.Equal("", stdout);
        string[] lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(lines.Length == 1, "expected one line on stderr, got:\n" + stderr);
        Assert.StartsWith("vhostfsd: ", lines[0]);
        Assert.Contains(expected, lines[0]);
        Assert.DoesNotContain("   at ", stderr);
        Assert.DoesNotContain("Exception", stderr);
    }

    [Fact]
    public unsafe void An_fd_that_is_not_a_listening_unix_stream_socket_is_refused()
    {
        // A regular file, a datagram socket and a stream socket that does not listen.
        int file;
        fixed (byte* p = "/etc/hostname\0"u8)
        {
            file = Libc.Open(p, Libc.O_RDONLY, 0);
        }
        int datagram = Libc.Socket(Libc.AF_UNIX, Libc.SOCK_DGRAM, 0);
        int stream = Libc.Socket(Libc.AF_UNIX, Libc.SOCK_STREAM, 0);
        try
        {
            Assert.True(file >= 0 && datagram >= 0 && stream >= 0);
            foreach (var (fd, expected) in new[] { (file, "not a socket"), (datagram, "not a UNIX stream socket"), (stream, "not listening") })
            {
                var (code, _, stderr) = DaemonProcess.Run(["--shared-dir=/tmp", $"--fd={fd}", "--sandbox=none"]);
                Assert.Equal(1, code);
                Assert.Contains(expected, stderr);
                Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
            }
        }
        finally
        {
            Libc.Close(file);
            Libc.Close(datagram);
            Libc.Close(stream);
        }
    }
}
