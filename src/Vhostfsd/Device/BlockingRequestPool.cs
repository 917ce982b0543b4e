using Vhostfsd.FuseProtocol;
using Vhostfsd.FusePassthrough;
using Vhostfsd.Virtqueue;

namespace Vhostfsd.Device;

/// <summary>Threads for requests that may block for long (SETLKW, FSYNC, FLUSH…), so that a lock wait
/// or a slow sync never stalls its ring. Starts with the configured number of threads and adds one
/// whenever a request is queued while no thread is idle, up to <see cref="MaxExtraThreads"/> more:
/// a SETLKW holds its thread until the lock is free, and the FLUSH or FSYNC of the process that
/// holds the lock must not queue behind it (that would deadlock the two). Threads that were added
/// stay. Work items live in a ring buffer that starts small and doubles when full, up to the
/// pool's capacity: no allocation per request once it has grown to the busiest moment's size.
/// When it is full at its capacity the caller runs the request itself.</summary>
/// <remarks>A queued chain is the pool's until a thread has run it and completed it through its
/// <see cref="OwnedChain"/>: the pool knows nothing of where the chain came from.</remarks>
public sealed class BlockingRequestPool : IDisposable
{
    private readonly FuseServer _server;
    private (OwnedChain Chain, FuseRequestHeader Request, bool Copy)[] _items;
    private readonly int _capacity;
    /// <summary>The ring's first size: an idle daemon holds 64 KB less than with the whole capacity.</summary>
    private const int InitialItems = 32;
    /// <summary>Threads added beyond the configured count at most (so at most this many lock
    /// waits can be parked before a further request queues behind them).</summary>
    public const int MaxExtraThreads = 64;

    private readonly List<Thread> _threads;
    private readonly int _maxThreads;
    private readonly object _lock = new();
    private int _head;
    private int _count;
    private int _idle;
    /// <summary>Chains from <see cref="TryEnqueueCopy"/> queued or running.</summary>
    private int _copies;
    /// <summary>Chains from <see cref="TryEnqueue"/> queued or running: each holds (or will hold) a
    /// thread for as long as its wait lasts.</summary>
    private int _blocking;
    private bool _stopping;
    private long _handedOffCopies;

    public BlockingRequestPool(FuseServer server, int threads, int capacity = 1024)
    {
        if (threads < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(threads), threads, "a pool needs at least one thread");
        }
        _server = server;
        _capacity = capacity;
        _items = new (OwnedChain, FuseRequestHeader, bool)[Math.Min(capacity, InitialItems)];
        _threads = new List<Thread>(threads);
        _maxThreads = threads + MaxExtraThreads;
        lock (_lock)
        {
            for (int i = 0; i < threads; i++)
            {
                StartThreadLocked();
            }
        }
    }

    /// <summary>Threads started so far.</summary>
    public int ThreadCount
    {
        get
        {
            lock (_lock)
            {
                return _threads.Count;
            }
        }
    }

    private void StartThreadLocked()
    {
        var thread = new Thread(Run) { IsBackground = true, Name = $"vhostfsd-pool-{_threads.Count}" };
        _threads.Add(thread);
        thread.Start();
    }

    /// <summary>Queues a chain with the header it was routed by (it runs as that header says); true
    /// when the pool took it (and with it the duty to complete it); false when the pool is full or
    /// stopping (the caller keeps it and runs it inline).</summary>
    public bool TryEnqueue(in OwnedChain chain, in FuseRequestHeader request)
    {
        lock (_lock)
        {
            if (_stopping || !HasRoomLocked())
            {
                return false;
            }
            AddLocked(in chain, in request, copy: false);
            _blocking++;
            if (_count > _idle && _threads.Count < _maxThreads)
            {
                StartThreadLocked();
            }
            return true;
        }
    }

    /// <summary>Queues a chain that would run fine inline but goes faster beside the ring's worker (a
    /// big copy while more requests wait), when the threads not taken by blocking requests can run
    /// it soon: at most two such chains per free thread, one running and one waiting. The waiting
    /// one keeps the thread fed: with hand-offs to idle threads only, the thread sat idle until the
    /// worker finished its own copy and came back to the ring (a third of a CPU unused at 16 callers
    /// on one queue). A copy never queues behind a lock wait or a sync: threads holding those do not
    /// count. Never starts a thread. False otherwise; the caller then runs it itself.</summary>
    public bool TryEnqueueCopy(in OwnedChain chain, in FuseRequestHeader request)
    {
        lock (_lock)
        {
            if (_stopping || _copies >= 2 * (_threads.Count - _blocking) || !HasRoomLocked())
            {
                return false;
            }
            AddLocked(in chain, in request, copy: true);
            _copies++;
            _handedOffCopies++;
            return true;
        }
    }

    /// <summary>True when the ring has room for one more item, after doubling it if it was full
    /// below the capacity.</summary>
    private bool HasRoomLocked()
    {
        if (_count < _items.Length)
        {
            return true;
        }
        if (_items.Length >= _capacity)
        {
            return false;
        }
        var grown = new (OwnedChain, FuseRequestHeader, bool)[Math.Min(_capacity, 2 * _items.Length)];
        for (int i = 0; i < _count; i++)
        {
            grown[i] = _items[(_head + i) % _items.Length];
        }
        _items = grown;
        _head = 0;
        return true;
    }

    /// <summary>Appends a chain to the work ring and wakes one waiting thread (the pulse reaches
    /// nobody when all are busy; the next one to finish finds the item).</summary>
    private void AddLocked(in OwnedChain chain, in FuseRequestHeader request, bool copy)
    {
        _items[(_head + _count) % _items.Length] = (chain, request, copy);
        _count++;
        Monitor.Pulse(_lock);
    }

    /// <summary>Chains taken by <see cref="TryEnqueueCopy"/> so far.</summary>
    public long HandedOffCopies => Interlocked.Read(ref _handedOffCopies);

    private void Run()
    {
        bool ranOne = false;
        bool copy = false;
        while (true)
        {
            OwnedChain chain;
            FuseRequestHeader request;
            lock (_lock)
            {
                // The chain this thread ran last is done: count it out here rather than take the lock twice.
                if (ranOne)
                {
                    if (copy)
                    {
                        _copies--;
                    }
                    else
                    {
                        _blocking--;
                    }
                }
                while (_count == 0 && !_stopping)
                {
                    _idle++;
                    Monitor.Wait(_lock);
                    _idle--;
                }
                if (_count == 0)
                {
                    return;
                }
                (chain, request, copy) = _items[_head];
                ranOne = true;
                _items[_head] = default;
                _head = (_head + 1) % _items.Length;
                _count--;
            }
            FuseRequestHandler.Execute(_server, in chain, in request);
        }
    }

    /// <summary>Lets the queued requests finish, then stops the threads (bounded wait: a thread
    /// stuck in a lock wait is left behind, as a ring's stop abandons its chain).</summary>
    public void Dispose()
    {
        lock (_lock)
        {
            _stopping = true;
            Monitor.PulseAll(_lock);
        }
        Thread[] threads;
        lock (_lock)
        {
            threads = [.. _threads];
        }
        foreach (var thread in threads)
        {
            thread.Join(TimeSpan.FromSeconds(5));
        }
    }
}
