namespace Vhostfsd.FusePassthrough.Passthrough;

/// <summary>The uniques of recent INTERRUPT requests, so that a waiting SETLKW can notice that the
/// guest gave up on it. Bounded: the oldest entries are overwritten.</summary>
internal sealed class InterruptSet
{
    private const int Capacity = 256;
    private readonly ulong[] _uniques = new ulong[Capacity];
    private int _next;
    private long _generation;

    /// <summary>Bumped by <see cref="CancelAll"/> (DESTROY/reset): every waiter gives up.</summary>
    public long Generation => Interlocked.Read(ref _generation);

    public void Add(ulong unique)
    {
        lock (_uniques)
        {
            _uniques[_next] = unique;
            _next = (_next + 1) % Capacity;
        }
    }

    public bool Contains(ulong unique)
    {
        if (unique == 0)
        {
            return false;
        }
        lock (_uniques)
        {
            return Array.IndexOf(_uniques, unique) >= 0;
        }
    }

    public void CancelAll() => Interlocked.Increment(ref _generation);
}
