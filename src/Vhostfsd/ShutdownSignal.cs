using Vhostfsd.Posix;

namespace Vhostfsd;

/// <summary>The process-wide "stop now" of the daemon. SIGTERM, SIGINT and SIGHUP set it (the
/// command-line code installs the handlers); code that blocks can watch it three ways:
/// <see cref="Token"/>, the readable <see cref="WakeFd"/> eventfd (add it to an epoll set), or
/// <see cref="ShutDownOnRequest"/>, which shuts a socket down so a blocked recvmsg/accept returns.
/// Requesting is idempotent and safe from any thread.</summary>
public static class ShutdownSignal
{
    private static readonly ShutdownLatch s_process = new();

    /// <summary>Cancelled when shutdown is requested.</summary>
    public static CancellationToken Token => s_process.Token;

    /// <inheritdoc cref="ShutdownLatch.IsRequested"/>
    public static bool IsRequested => s_process.IsRequested;

    /// <summary>Why shutdown was requested (e.g. "SIGTERM"), or null.</summary>
    public static string? Reason => s_process.Reason;

    /// <inheritdoc cref="ShutdownLatch.WakeFd"/>
    public static int WakeFd => s_process.WakeFd;

    /// <inheritdoc cref="ShutdownLatch.Request"/>
    public static void Request(string reason) => s_process.Request(reason);

    /// <inheritdoc cref="ShutdownLatch.ShutDownOnRequest"/>
    public static IDisposable ShutDownOnRequest(UnixSocket socket) => s_process.ShutDownOnRequest(socket);
}

/// <summary>One "stop now": set once, watched through a token, an eventfd and registered
/// sockets. <see cref="ShutdownSignal"/> holds the process's instance.</summary>
public sealed class ShutdownLatch
{
    private readonly CancellationTokenSource _source = new();
    private readonly object _sync = new();
    private readonly List<UnixSocket> _sockets = new();
    private readonly Lazy<EventFd> _wake = new(() => EventFd.Create(nonBlocking: true), LazyThreadSafetyMode.ExecutionAndPublication);
    private string? _reason;

    /// <summary>Cancelled when shutdown is requested (after the sockets were shut down).</summary>
    public CancellationToken Token => _source.Token;

    /// <summary>True from before the first watcher can see the request: code that finds its
    /// socket shut down or the eventfd readable reads true here, so it can tell a requested stop
    /// from a peer that went away. (The token is cancelled last and may still be false then.)</summary>
    public bool IsRequested => Volatile.Read(ref _reason) != null;

    /// <summary>Why shutdown was requested (e.g. "SIGTERM"), or null.</summary>
    public string? Reason => Volatile.Read(ref _reason);

    /// <summary>An eventfd (non-blocking, close-on-exec) that becomes readable when shutdown is
    /// requested and stays readable. Do not read it: other waiters watch it too.</summary>
    public int WakeFd => _wake.Value.Fd;

    /// <summary>Requests shutdown: records the reason, shuts down every registered socket, signals
    /// <see cref="WakeFd"/> and cancels <see cref="Token"/>, in that order.</summary>
    public void Request(string reason)
    {
        lock (_sync)
        {
            if (_reason != null)
            {
                return;
            }
            Volatile.Write(ref _reason, reason);
            // Registered sockets are shut down while the lock is held so none can be disposed
            // (and its fd number reused) in between.
            foreach (var socket in _sockets)
            {
                socket.ShutdownBoth();
            }
        }
        _wake.Value.Signal();
        _source.Cancel();
    }

    /// <summary>Shuts <paramref name="socket"/> down (both directions) when shutdown is requested —
    /// at once if it already was. Dispose the returned registration before disposing the socket.</summary>
    public IDisposable ShutDownOnRequest(UnixSocket socket)
    {
        lock (_sync)
        {
            if (_reason != null)
            {
                socket.ShutdownBoth();
            }
            _sockets.Add(socket);
        }
        return new Registration(this, socket);
    }

    private sealed class Registration(ShutdownLatch latch, UnixSocket socket) : IDisposable
    {
        private UnixSocket? _socket = socket;

        public void Dispose()
        {
            lock (latch._sync)
            {
                if (_socket != null)
                {
                    latch._sockets.Remove(_socket);
                    _socket = null;
                }
            }
        }
    }
}
