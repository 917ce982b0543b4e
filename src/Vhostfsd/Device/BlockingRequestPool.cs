using Vhostfsd.FusePassthrough;
using Vhostfsd.VhostUser;
using Vhostfsd.Virtqueue;

namespace Vhostfsd.Device;

/// <summary>A fixed set of threads for requests that may block for long (SETLKW, FSYNC, FLUSH…), so
/// that a lock wait or a slow sync never stalls its ring. Work items live in a preallocated ring
/// buffer: no allocation per request. When the buffer is full the caller runs the request itself.</summary>
public sealed class BlockingRequestPool : IDisposable
{
    private readonly FuseServer _server;
    private readonly (Vring Ring, DescriptorChain Chain)[] _items;
    private readonly Thread[] _threads;
    private readonly object _lock = new();
    private int _head;
    private int _count;
    private bool _stopping;

    public BlockingRequestPool(FuseServer server, int threads, int capacity = 1024)
    {
        if (threads < 1)
        {
            throw new ArgumentOutOfRangeException(nameof(threads), threads, "a pool needs at least one thread");
        }
        _server = server;
        _items = new (Vring, DescriptorChain)[capacity];
        _threads = new Thread[threads];
        for (int i = 0; i < threads; i++)
        {
            _threads[i] = new Thread(Run) { IsBackground = true, Name = $"vhostfsd-pool-{i}" };
            _threads[i].Start();
        }
    }

    public int ThreadCount => _threads.Length;

    /// <summary>Queues a chain; false when the pool is full or stopping (the caller then runs it inline).</summary>
    public bool TryEnqueue(Vring ring, DescriptorChain chain)
    {
        lock (_lock)
        {
            if (_stopping || _count == _items.Length)
            {
                return false;
            }
            _items[(_head + _count) % _items.Length] = (ring, chain);
            _count++;
            Monitor.Pulse(_lock);
            return true;
        }
    }

    private void Run()
    {
        while (true)
        {
            Vring ring;
            DescriptorChain chain;
            lock (_lock)
            {
                while (_count == 0 && !_stopping)
                {
                    Monitor.Wait(_lock);
                }
                if (_count == 0)
                {
                    return;
                }
                (ring, chain) = _items[_head];
                _items[_head] = default;
                _head = (_head + 1) % _items.Length;
                _count--;
            }
            FuseRequestHandler.Execute(_server, ring, chain);
        }
    }

    /// <summary>Lets the queued requests finish, then stops the threads (bounded wait: a thread
    /// stuck in a lock wait is left behind, as the rings' stop logic abandons its chain).</summary>
    public void Dispose()
    {
        lock (_lock)
        {
            _stopping = true;
            Monitor.PulseAll(_lock);
        }
        foreach (var thread in _threads)
        {
            thread.Join(TimeSpan.FromSeconds(5));
        }
    }
}
