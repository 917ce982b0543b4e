using Vhostfsd.Posix;

namespace Vhostfsd.FusePassthrough.Passthrough;

/// <summary>The open file description that carries one guest lock owner's POSIX locks on one inode
/// (OFD locks belong to a description, so each owner needs its own). Reference-counted: FLUSH
/// (the guest's close()) drops the node's reference, but a SETLKW still retrying on it keeps the
/// descriptor open until that attempt is over, so its number can never be reused by another file
/// under a lock call. A retry checks <see cref="IsClosed"/> and starts again from the owner's
/// current description.
///
/// The description is opened with the access of the handle that made it — read-only for a
/// read-only handle, and always under --readonly — so that locking never gives the daemon a
/// writer on a file the guest only reads (a guest exec of it would fail with ETXTBSY). A write lock
/// through a writable handle of an owner whose description is read-only moves the owner to a new
/// read-write description; the old one is kept, only to be unlocked, until the owner closes.</summary>
internal sealed class LockOwnerFile
{
    private readonly FdBudget _budget;
    private int _refs = 1;
    private volatile bool _closed;

    /// <summary>Takes one fd from the caller, already counted in <paramref name="budget"/>; the map of
    /// the node holds the first reference.</summary>
    public LockOwnerFile(int fd, bool writable, FdBudget budget)
    {
        Fd = fd;
        Writable = writable;
        _budget = budget;
    }

    /// <summary>The description new locks go to.</summary>
    public int Fd { get; }

    /// <summary>Opened for writing (write locks need it).</summary>
    public bool Writable { get; }

    /// <summary>The read-only description this one replaced, whose locks are only ever released
    /// (null: none). This file holds a reference on it.</summary>
    public LockOwnerFile? Retired { get; private set; }

    /// <summary>No new attempt may use this file: the owner closed, the node went away, or a
    /// writable description replaced it.</summary>
    public bool IsClosed => _closed;

    /// <summary>Called under the node's owners lock, while the node's map still holds this file.</summary>
    public void AddRef() => Interlocked.Increment(ref _refs);

    public void Release()
    {
        if (Interlocked.Decrement(ref _refs) == 0)
        {
            Libc.Close(Fd);
            _budget.Return();
            Retired?.Release();
        }
    }

    /// <summary>Replaces <paramref name="previous"/> in the node's map: the map's reference on it
    /// becomes this file's. Called under the node's owners lock.</summary>
    public void Replace(LockOwnerFile previous)
    {
        previous._closed = true;
        Retired = previous;
    }

    /// <summary>The owner closed (FLUSH) or the node went away: drops the map's reference.</summary>
    public void Close()
    {
        _closed = true;
        Release();
    }
}
