using Vhostfsd.Posix;

namespace Vhostfsd;

/// <summary>The process-wide "stop now" of the daemon. SIGTERM, SIGINT and SIGHUP set it (the
/// command-line code installs the handlers); code that blocks can watch it three ways:
/// <see cref="Token"/>, the readable <see cref="WakeFd"/> eventfd (add it to an epoll set), or
/// <see cref="ShutDownOnRequest"/>, which shuts a socket down so a blocked recvmsg/accept returns.
/// Requesting is idempotent and safe from any thread.</summary>
public static class ShutdownSignal
{
    private static readonly CancellationTokenSource s_source = new();
    private static readonly object s_sync = new();
    private static readonly List<UnixSocket> s_sockets = new();
    private static readonly Lazy<EventFd> s_wake = new(() => EventFd.Create(nonBlocking: true), LazyThreadSafetyMode.ExecutionAndPublication);
    private static string? s_reason;

    /// <summary>Cancelled when shutdown is requested.</summary>
    public static CancellationToken Token => s_source.Token;

    public static bool IsRequested => s_source.IsCancellationRequested;

    /// <summary>Why shutdown was requested (e.g. "SIGTERM"), or null.</summary>
    public static string? Reason => Volatile.Read(ref s_reason);

    /// <summary>An eventfd (non-blocking, close-on-exec) that becomes readable when shutdown is
    /// requested and stays readable. Do not read it: other waiters watch it too.</summary>
    public static int WakeFd => s_wake.Value.Fd;

    /// <summary>Requests shutdown: cancels <see cref="Token"/>, signals <see cref="WakeFd"/> and
    /// shuts down every registered socket.</summary>
    public static void Request(string reason)
    {
        UnixSocket[] sockets;
        lock (s_sync)
        {
            if (s_reason != null)
            {
                return;
            }
            Volatile.Write(ref s_reason, reason);
            sockets = s_sockets.ToArray();
            // Registered sockets are shut down while the lock is held so none can be disposed
            // (and its fd number reused) in between.
            foreach (var socket in sockets)
            {
                socket.ShutdownBoth();
            }
        }
        s_wake.Value.Signal();
        s_source.Cancel();
    }

    /// <summary>Shuts <paramref name="socket"/> down (both directions) when shutdown is requested —
    /// at once if it already was. Dispose the returned registration before disposing the socket.</summary>
    public static IDisposable ShutDownOnRequest(UnixSocket socket)
    {
        lock (s_sync)
        {
            if (s_reason != null)
            {
                socket.ShutdownBoth();
            }
            s_sockets.Add(socket);
        }
        return new Registration(socket);
    }

    private sealed class Registration(UnixSocket socket) : IDisposable
    {
        private UnixSocket? _socket = socket;

        public void Dispose()
        {
            lock (s_sync)
            {
                if (_socket != null)
                {
                    s_sockets.Remove(_socket);
                    _socket = null;
                }
            }
        }
    }
}
