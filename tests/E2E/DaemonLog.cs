using System.Text.RegularExpressions;

namespace Vhostfsd.E2E;

/// <summary>The daemons under test.</summary>
public enum DaemonKind
{
    /// <summary>/usr/lib/qemu/virtiofsd, the C daemon of QEMU 7.2 (or $VIRTIOFSD).</summary>
    Reference,

    /// <summary>The native vhostfsd that make build publishes (or $VHOSTFSD).</summary>
    Vhostfsd,
}

/// <summary>Which lines of a daemon's output count as errors (docs/e2e.md explains the rules).</summary>
public static partial class DaemonLog
{
    /// <summary>Extra arguments the harness passes so that the log can be judged.</summary>
    public static string ExtraArguments(DaemonKind kind) => kind switch
    {
        // The C daemon prints no level with its messages; at log_level=err it prints
        // nothing but errors.
        DaemonKind.Reference => "-o log_level=err",
        _ => "",
    };

    /// <summary>The lines of <paramref name="log"/> that report an error.</summary>
    public static List<string> ErrorLines(DaemonKind kind, string log)
    {
        var errors = new List<string>();
        foreach (var raw in log.Split('\n'))
        {
            var line = raw.TrimEnd('\r');
            if (line.Length == 0 || SocketActivator().IsMatch(line))
            {
                continue;
            }
            var isError = kind switch
            {
                // Everything printed at log_level=err, except the line virtio_loop prints at
                // every ordinary disconnect (POLLIN|POLLHUP on the vhost-user socket).
                DaemonKind.Reference => !ReferenceDisconnect().IsMatch(line),
                // A line logged at level Error or Fatal ("[2026-01-01T12:00:00.000+00:00 ERR] ...")
                // or a .NET crash ("Unhandled exception.").
                _ => VhostfsdErrorLevel().IsMatch(line) || line.StartsWith("Unhandled exception", StringComparison.Ordinal),
            };
            if (isError)
            {
                errors.Add(line);
            }
        }
        return errors;
    }

    // What systemd-socket-activate itself prints before it execs the daemon.
    [GeneratedRegex(@"^(Listening on .* as \d+\.|Communication attempt on fd \d+\.|Execing .*)$")]
    private static partial Regex SocketActivator();

    [GeneratedRegex(@"^virtio_loop: Unexpected poll revents 11$")]
    private static partial Regex ReferenceDisconnect();

    // The level is the last word of the line's first [...] group: "[timestamp ERR] msg".
    [GeneratedRegex(@"^[^\[]*\[(?:[^\]]*\s)?(ERR|FTL)\]")]
    private static partial Regex VhostfsdErrorLevel();
}
