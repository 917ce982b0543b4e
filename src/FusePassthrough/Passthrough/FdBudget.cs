using Vhostfsd.Posix;

namespace Vhostfsd.FusePassthrough.Passthrough;

/// <summary>Counts the fds held on the guest's behalf (O_PATH fds of known inodes, open files,
/// per-lock-owner descriptions) against a limit, so that a guest that never FORGETs or RELEASEs
/// exhausts its budget (ENFILE) rather than the daemon's descriptor table.</summary>
internal sealed class FdBudget
{
    /// <summary>Descriptors kept back for the daemon itself (sockets, eventfds, memory regions, logs),
    /// like virtiofsd's reserve of 509 memory slots + 100.</summary>
    public const int DaemonReserve = 640;

    private readonly int _limit;
    private int _used;

    public FdBudget(int limit)
    {
        _limit = limit;
    }

    public int Limit => _limit;
    public int Used => Volatile.Read(ref _used);

    /// <summary>Takes one fd from the budget; false when it is exhausted.</summary>
    public bool TryTake()
    {
        if (Interlocked.Increment(ref _used) > _limit)
        {
            Interlocked.Decrement(ref _used);
            return false;
        }
        return true;
    }

    public void Return() => Interlocked.Decrement(ref _used);

    /// <summary>The limit for <paramref name="configured"/> (0 = from RLIMIT_NOFILE's soft limit minus
    /// <see cref="DaemonReserve"/>, at least 64).</summary>
    public static unsafe int ResolveLimit(int configured)
    {
        if (configured > 0)
        {
            return configured;
        }
        ulong soft = 1024;
        RLimit limit;
        if (Libc.GetRLimit(Libc.RLIMIT_NOFILE, &limit) == 0)
        {
            soft = limit.Current;
        }
        long budget = (long)Math.Min(soft, int.MaxValue) - DaemonReserve;
        return (int)Math.Max(64, budget);
    }
}
