using System.Diagnostics;

namespace Vhostfsd.FuseMount.Tests;

/// <summary>Another host process that takes an fcntl write lock on a file (perl, which every Debian
/// system has: POSIX locks belong to a process, so a conflict needs a second one).</summary>
internal static class LockHelper
{
    // struct flock on x86_64: short type, short whence, 4 bytes of padding, off_t start, off_t len,
    // pid_t pid, 4 bytes of padding.
    private const string Script = """
        use strict; use Fcntl;
        my ($path, $mode) = @ARGV;
        $| = 1;
        open(my $fh, "+<", $path) or die "open $path: $!";
        my $lock = pack("s s x4 q q i x4", F_WRLCK, 0, 0, 0, 0);
        if ($mode eq "try") {
            print fcntl($fh, F_SETLK, $lock) ? "locked\n" : "refused $!\n";
        } elsif ($mode eq "hold") {
            fcntl($fh, F_SETLK, $lock) or die "F_SETLK: $!";
            print "held\n";
            my $release = <STDIN>;
        } else {
            print "waiting\n";
            fcntl($fh, F_SETLKW, $lock) or die "F_SETLKW: $!";
            print "locked\n";
        }
        """;

    /// <summary>F_SETLK from another process: "locked", or "refused" and the error.</summary>
    public static string Try(string path)
    {
        using var process = Start(path, "try");
        string output = process.StandardOutput.ReadToEnd().Trim();
        Assert.True(process.WaitForExit(30_000), "the lock helper did not finish");
        return output;
    }

    /// <summary>A process that takes the lock, prints "held" and keeps it until a line comes on its
    /// standard input, then exits.</summary>
    public static Process StartHolding(string path) => Start(path, "hold");

    /// <summary>F_SETLKW from another process, started; it prints "waiting" once it has the file open,
    /// then "locked" once it has the lock, and exits (releasing it).</summary>
    public static Process StartWaiting(string path) => Start(path, "wait");

    /// <summary>The next line <paramref name="process"/> prints, or null when none comes in time.</summary>
    public static string? NextLine(Process process, TimeSpan timeout)
    {
        var line = process.StandardOutput.ReadLineAsync();
        return line.Wait(timeout) ? line.Result : null;
    }

    private static Process Start(string path, string mode)
    {
        var start = new ProcessStartInfo("perl") { RedirectStandardOutput = true, RedirectStandardInput = true, UseShellExecute = false };
        start.ArgumentList.Add("-e");
        start.ArgumentList.Add(Script);
        start.ArgumentList.Add(path);
        start.ArgumentList.Add(mode);
        return Process.Start(start) ?? throw new InvalidOperationException("cannot start perl");
    }
}
