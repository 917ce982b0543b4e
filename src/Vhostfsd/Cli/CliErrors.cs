namespace Vhostfsd.Cli;

/// <summary>The command line is wrong (unknown option, bad value, conflict, missing option):
/// one line on stderr, exit code <see cref="ExitCodes.Usage"/>.</summary>
internal sealed class UsageException(string message) : Exception(message);

/// <summary>The command line is fine but the host does not let the daemon start (missing
/// shared directory, unusable socket, sandbox refused): one line, exit code <see cref="ExitCodes.Failure"/>.</summary>
internal sealed class StartupException(string message) : Exception(message);

/// <summary>Process exit codes, as the reference daemon uses them (clap exits 2 on usage errors,
/// the daemon exits 1 on run-time failures).</summary>
internal static class ExitCodes
{
    public const int Success = 0;
    public const int Failure = 1;
    public const int Usage = 2;
}
