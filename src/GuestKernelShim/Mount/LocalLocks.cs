using Vhostfsd.Posix;

namespace Vhostfsd.GuestKernelShim;

/// <summary>Byte-range locks kept by the shim itself, for a daemon that did not negotiate POSIX_LOCKS /
/// FLOCK_LOCKS (Linux then applies posix_lock_file / locks_lock_file_wait locally): per node, per owner,
/// read locks shared, write locks exclusive between owners; an owner's own ranges are replaced.</summary>
internal sealed class LocalLocks
{
    private readonly object _lock = new();
    private readonly Dictionary<ulong, List<Held>> _byNode = new();

    private readonly record struct Held(ulong Owner, int Type, ulong Start, ulong End, uint Pid);

    private static bool Overlaps(in Held held, in FileLockRange lk) => held.Start <= lk.End && lk.Start <= held.End;

    private static bool Conflicts(in Held held, ulong owner, in FileLockRange lk)
        => held.Owner != owner && Overlaps(held, lk) && (held.Type == FileLockRange.WriteLock || lk.Type == FileLockRange.WriteLock);

    /// <summary>F_GETLK: the first lock of another owner that would block <paramref name="lk"/>, or F_UNLCK.</summary>
    public FileLockRange Test(ulong node, ulong owner, FileLockRange lk)
    {
        lock (_lock)
        {
            if (_byNode.TryGetValue(node, out var list))
            {
                foreach (var held in list)
                {
                    if (lk.Type != FileLockRange.Unlock && Conflicts(held, owner, lk))
                    {
                        return new FileLockRange(held.Type, held.Start, held.End, held.Pid);
                    }
                }
            }
        }
        lk.Type = FileLockRange.Unlock;
        return lk;
    }

    /// <summary>F_SETLK / F_SETLKW: EAGAIN on conflict without <paramref name="wait"/>, EINTR when a wait is cancelled.</summary>
    public Errno Set(ulong node, ulong owner, in FileLockRange lk, bool wait, CancellationToken cancellation)
    {
        using var registration = wait && cancellation.CanBeCanceled
            ? cancellation.Register(static state => { var self = (LocalLocks)state!; lock (self._lock) { Monitor.PulseAll(self._lock); } }, this)
            : default;
        lock (_lock)
        {
            if (!_byNode.TryGetValue(node, out var list))
            {
                list = new List<Held>();
                _byNode[node] = list;
            }
            if (lk.Type != FileLockRange.Unlock)
            {
                while (HasConflict(list, owner, lk))
                {
                    if (!wait)
                    {
                        return Errno.EAGAIN;
                    }
                    if (cancellation.IsCancellationRequested)
                    {
                        return Errno.EINTR;
                    }
                    Monitor.Wait(_lock);
                }
            }
            // Cut the owner's ranges out of [Start, End], then add the new one.
            for (int i = list.Count - 1; i >= 0; i--)
            {
                var held = list[i];
                if (held.Owner != owner || !Overlaps(held, lk))
                {
                    continue;
                }
                list.RemoveAt(i);
                if (held.Start < lk.Start)
                {
                    list.Add(held with { End = lk.Start - 1 });
                }
                if (held.End > lk.End)
                {
                    list.Add(held with { Start = lk.End + 1 });
                }
            }
            if (lk.Type != FileLockRange.Unlock)
            {
                list.Add(new Held(owner, lk.Type, lk.Start, lk.End, lk.Pid));
            }
            if (list.Count == 0)
            {
                _byNode.Remove(node);
            }
            Monitor.PulseAll(_lock);
            return Errno.OK;
        }
    }

    private static bool HasConflict(List<Held> list, ulong owner, in FileLockRange lk)
    {
        foreach (var held in list)
        {
            if (Conflicts(held, owner, lk))
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>Drops every lock of <paramref name="owner"/> on <paramref name="node"/> (close).</summary>
    public void ReleaseOwner(ulong node, ulong owner)
    {
        lock (_lock)
        {
            if (_byNode.TryGetValue(node, out var list) && list.RemoveAll(h => h.Owner == owner) > 0)
            {
                if (list.Count == 0)
                {
                    _byNode.Remove(node);
                }
                Monitor.PulseAll(_lock);
            }
        }
    }
}
