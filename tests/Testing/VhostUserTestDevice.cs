using System.Collections.Concurrent;
using Vhostfsd.Logging;
using Vhostfsd.Posix;
using Vhostfsd.VhostUser;
using Vhostfsd.Virtqueue;

namespace Vhostfsd.Testing;

/// <summary>A vhost-user device for tests: virtio-fs shaped config space (tag + queue count),
/// records what the back-end asks of it, and hands out <see cref="EchoVringHandler"/>s (or whatever
/// <see cref="HandlerFactory"/> makes).</summary>
public sealed class VhostUserTestDevice : IVhostUserDevice
{
    private readonly byte[] _config;
    private int _resetCount;

    public VhostUserTestDevice(int queueCount = 2, ushort maxQueueSize = 1024, string? tag = "testfs", ulong deviceFeatures = 0)
    {
        QueueCount = queueCount;
        MaxQueueSize = maxQueueSize;
        DeviceFeatures = deviceFeatures;
        OffersConfig = tag != null;
        var config = VirtioFsConfig.Create(tag ?? "none", (uint)Math.Max(queueCount - 1, 1));
        _config = Wire.AsBytes(in config).ToArray();
    }

    public int QueueCount { get; }
    public ushort MaxQueueSize { get; }
    public ulong DeviceFeatures { get; }
    public bool OffersConfig { get; }

    /// <summary>Whether SET_CONFIG writes are accepted (virtio-fs config is read-only: default false).</summary>
    public bool AcceptConfigWrites { get; set; }

    public Func<int, IVringHandler> HandlerFactory { get; set; } = _ => new EchoVringHandler();

    /// <summary>Answers <see cref="IVhostUserDevice.MayPoll"/> (default: every queue may poll).</summary>
    public Func<int, bool> PollingAllowed { get; set; } = _ => true;

    public bool MayPoll(int queueIndex) => PollingAllowed(queueIndex);

    /// <summary>What happened, in order: "handler N", "config-write OFFSET LEN FLAGS", "reset".</summary>
    public ConcurrentQueue<string> Events { get; } = new();

    public int ResetCount => Volatile.Read(ref _resetCount);

    public ReadOnlySpan<byte> ConfigSpace => _config;

    public bool ReadConfig(uint offset, Span<byte> destination)
    {
        if (offset > (uint)_config.Length || (uint)destination.Length > (uint)_config.Length - offset)
        {
            return false;
        }
        _config.AsSpan((int)offset, destination.Length).CopyTo(destination);
        return true;
    }

    public bool WriteConfig(uint offset, ReadOnlySpan<byte> source, uint flags)
    {
        Events.Enqueue($"config-write {offset} {source.Length} {flags}");
        if (!AcceptConfigWrites || offset > (uint)_config.Length || (uint)source.Length > (uint)_config.Length - offset)
        {
            return false;
        }
        source.CopyTo(_config.AsSpan((int)offset));
        return true;
    }

    public IVringHandler GetVringHandler(int queueIndex)
    {
        Events.Enqueue($"handler {queueIndex}");
        return HandlerFactory(queueIndex);
    }

    public void Reset()
    {
        Interlocked.Increment(ref _resetCount);
        Events.Enqueue("reset");
    }
}

/// <summary>Copies each chain's readable bytes into its writable buffers, transformed by
/// <see cref="Transform"/> (so an untouched or copied-through buffer cannot pass a check), and
/// completes it with the number of bytes written. Every <c>deferEvery</c>-th chain is kept and
/// completed later from a background thread, as a daemon does with blocking requests.</summary>
public sealed class EchoVringHandler : IVringHandler, IDisposable
{
    private readonly int _deferEvery;
    private readonly BlockingCollection<OwnedChain> _deferred = new();
    private readonly Thread? _completer;
    private long _handled;
    private long _deferredCount;

    public EchoVringHandler(int deferEvery = 0)
    {
        _deferEvery = deferEvery;
        if (deferEvery > 0)
        {
            _completer = new Thread(CompleteDeferred) { IsBackground = true, Name = "echo-deferred" };
            _completer.Start();
        }
    }

    public long Handled => Interlocked.Read(ref _handled);
    public long Deferred => Interlocked.Read(ref _deferredCount);

    /// <summary>The byte the device writes at <paramref name="position"/> for input byte <paramref name="value"/>.</summary>
    public static byte Transform(byte value, int position) => (byte)(value ^ 0xA5 ^ (position * 31));

    public void HandleChain(OwnedChain chain, RingBacklog backlog)
    {
        long n = Interlocked.Increment(ref _handled);
        if (_deferEvery > 0 && n % _deferEvery == 0)
        {
            Interlocked.Increment(ref _deferredCount);
            _deferred.Add(chain);
            return;
        }
        chain.Complete(Echo(chain));
    }

    private void CompleteDeferred()
    {
        foreach (var chain in _deferred.GetConsumingEnumerable())
        {
            Thread.Sleep(0);
            chain.Complete(Echo(chain));
        }
    }

    /// <summary>Writes the transformed readable bytes into the writable segments; returns bytes written.</summary>
    public static unsafe uint Echo(in OwnedChain chain)
    {
        var readable = chain.Readable;
        var writable = chain.Writable;
        int ri = 0, wi = 0;
        nuint rOff = 0, wOff = 0;
        int position = 0;
        while (ri < readable.Length && wi < writable.Length)
        {
            if (rOff == readable[ri].Length)
            {
                ri++;
                rOff = 0;
                continue;
            }
            if (wOff == writable[wi].Length)
            {
                wi++;
                wOff = 0;
                continue;
            }
            // SAFETY: rOff < readable[ri].Length and wOff < writable[wi].Length: both bytes are inside their segments.
            byte value = ((byte*)readable[ri].Base)[rOff];
            ((byte*)writable[wi].Base)[wOff] = Transform(value, position);
            rOff++;
            wOff++;
            position++;
        }
        return (uint)position;
    }

    public void Dispose()
    {
        _deferred.CompleteAdding();
        _completer?.Join();
    }
}

/// <summary>A log sink that keeps every event, for asserting on log lines.</summary>
public sealed class ListLogSink : ILogEventSink
{
    private readonly ConcurrentQueue<LogEvent> _events = new();

    public void Emit(LogEvent logEvent) => _events.Enqueue(logEvent);

    public IReadOnlyList<LogEvent> Events => _events.ToArray();

    public IEnumerable<string> Messages(LogEventLevel minimum)
    {
        foreach (var e in _events)
        {
            if (e.Level >= minimum)
            {
                yield return e.RenderMessage();
            }
        }
    }

    public Logger CreateLogger() => new(LogEventLevel.Debug, this);
}

/// <summary>A back-end running on its own thread over one end of a socketpair (or an accepted
/// connection), and a front-end on the other end.</summary>
public sealed class VhostUserBackendHarness : IDisposable
{
    private readonly Thread _thread;
    private VhostUserSessionEnd? _end;
    private Exception? _failure;

    public VhostUserBackendHarness(IVhostUserDevice device, VhostUserBackendOptions? options = null)
    {
        Log = new ListLogSink();
        var (front, back) = UnixSocket.Pair();
        Backend = new VhostUserBackend(back, device, options, Log.CreateLogger());
        Frontend = new VhostUserFrontend(front) { ReplyTimeout = TimeSpan.FromSeconds(10) };
        _thread = new Thread(Run) { IsBackground = true, Name = "vhost-user-backend" };
        _thread.Start();
    }

    public VhostUserBackend Backend { get; }
    public VhostUserFrontend Frontend { get; }
    public ListLogSink Log { get; }

    private void Run()
    {
        try
        {
            _end = Backend.Run();
        }
        catch (Exception e)
        {
            _failure = e;
        }
    }

    /// <summary>Waits for the back-end's loop to return; throws if it threw or did not end in time.</summary>
    public VhostUserSessionEnd WaitForEnd(TimeSpan? timeout = null)
    {
        if (!_thread.Join(timeout ?? TimeSpan.FromSeconds(20)))
        {
            throw new TimeoutException("the back-end loop did not return");
        }
        if (_failure != null)
        {
            throw new InvalidOperationException("the back-end loop threw", _failure);
        }
        return _end!.Value;
    }

    public bool HasEnded => !_thread.IsAlive;

    public void Dispose()
    {
        Frontend.Dispose();
        _thread.Join(TimeSpan.FromSeconds(20));
        Backend.Dispose();
    }
}

/// <summary>Keeps every chain it is given (to be completed by the test), or throws when told to.</summary>
public sealed class KeepingVringHandler : IVringHandler
{
    public BlockingCollection<OwnedChain> Kept { get; } = new();

    /// <summary>When set, HandleChain throws instead of keeping the chain.</summary>
    public bool Throw { get; set; }

    public void HandleChain(OwnedChain chain, RingBacklog backlog)
    {
        if (Throw)
        {
            throw new InvalidOperationException("handler failure (test)");
        }
        Kept.Add(chain);
    }

    /// <summary>Takes the next kept chain, waiting up to 10 s.</summary>
    public OwnedChain Take()
    {
        if (!Kept.TryTake(out var item, TimeSpan.FromSeconds(10)))
        {
            throw new TimeoutException("no chain reached the handler within 10 s");
        }
        return item;
    }
}
