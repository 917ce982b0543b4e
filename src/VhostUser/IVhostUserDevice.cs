using Vhostfsd.Virtqueue;

namespace Vhostfsd.VhostUser;

/// <summary>The device behind a vhost-user back-end (the daemon's virtio-fs device implements it).
/// The back-end owns the protocol, the guest memory, the rings and their worker threads; the
/// device only answers what kind of device it is and handles the chains.</summary>
public interface IVhostUserDevice
{
    /// <summary>Virtqueues the device has (GET_QUEUE_NUM); virtio-fs: 1 hiprio + N request queues.</summary>
    int QueueCount { get; }

    /// <summary>Largest ring size accepted by SET_VRING_NUM (a power of 2, at most 32768).</summary>
    ushort MaxQueueSize { get; }

    /// <summary>Device-type feature bits offered in addition to the transport bits the back-end
    /// implements itself (VERSION_1, EVENT_IDX, INDIRECT_DESC, NOTIFY_ON_EMPTY, PROTOCOL_FEATURES).</summary>
    ulong DeviceFeatures { get; }

    /// <summary>Whether VHOST_USER_PROTOCOL_F_CONFIG is offered (the Rust virtiofsd offers it only with --tag).</summary>
    bool OffersConfig { get; }

    /// <summary>Reads config space [offset, offset + destination.Length); false when out of range.</summary>
    bool ReadConfig(uint offset, Span<byte> destination);

    /// <summary>Writes config space; false when refused (virtio-fs config is read-only).
    /// <paramref name="flags"/> is the SET_CONFIG flags word (0 = driver write, 1 = live migration).</summary>
    bool WriteConfig(uint offset, ReadOnlySpan<byte> source, uint flags);

    /// <summary>The handler for a ring's chains; asked each time the ring starts processing.</summary>
    IVringHandler GetVringHandler(int queueIndex);

    /// <summary>Whether the ring's worker may poll the ring for a while after it ran dry
    /// (<see cref="VhostUserBackendOptions.PollMax"/>) instead of sleeping at once. Polling pays off
    /// where a caller waits for each reply; a queue whose requests nobody waits for should say no.</summary>
    bool MayPoll(int queueIndex) => true;

    /// <summary>RESET_DEVICE, or the end of the session: every ring is stopped and has no chain in
    /// flight when this is called. The device drops its session state.</summary>
    void Reset();
}

/// <summary>Handles the chains a ring's worker pops. Called on the ring's worker thread, one chain at a time.</summary>
/// <remarks>
/// The handler owns the chain it is given until it completes it, once: before returning
/// (<see cref="OwnedChain.Complete"/> on the worker thread: the driver's signal is batched with the
/// rest of the drain), or later from any thread, by whoever it passed the chain to (a blocking
/// request handed to a pool). The worker then pops the next chain into another
/// <see cref="DescriptorChain"/> from the ring's pool, so the queue does not stall; the segments
/// of a passed-on chain stay mapped until it is completed. Never throw for guest data: a handler
/// that throws breaks the ring.
/// </remarks>
public interface IVringHandler
{
    /// <param name="chain">The popped chain; the handler's until it completes it.</param>
    /// <param name="backlog">What waits behind <paramref name="chain"/> on the ring; valid during this call only.</param>
    void HandleChain(OwnedChain chain, RingBacklog backlog);
}

/// <summary>Whether more chains wait on the ring behind the one a handler was given. A ref struct:
/// it lives on the worker's stack for one <see cref="IVringHandler.HandleChain"/> call, the only
/// place where the answer means something, and cannot be kept or passed to another thread.</summary>
public readonly ref struct RingBacklog
{
    private readonly VringWorker? _worker;

    internal RingBacklog(VringWorker worker)
    {
        _worker = worker;
    }

    /// <summary>True when more chains wait in the avail ring behind the one being handled; false
    /// once the worker was given up on (the ring may have a new worker), and for a default value.
    /// A handler asks before handing a long request to another thread, which pays off only when
    /// the worker has other requests to get on with meanwhile.</summary>
    public bool HasMore => _worker is not null && _worker.HasMoreAvailable();
}
