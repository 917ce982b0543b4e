using System.Runtime.InteropServices;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Vhostfsd.VhostUser;
using Vhostfsd.Virtqueue;

namespace Vhostfsd.GuestKernelShim;

/// <summary>The virtio-fs transport (Linux fs/fuse/virtio_fs.c) with the VMM part QEMU plays: a memfd as guest
/// memory, the vhost-user front-end handshake, queue 0 = hiprio (FORGET, BATCH_FORGET, INTERRUPT) and queues
/// 1..N = request queues driven with <see cref="DriverQueue"/>s, and one completion thread per queue that
/// reaps used chains on the call eventfd and completes requests by unique.</summary>
/// <remarks>
/// A request is one chain: device-readable fuse_in_header + arguments (a large last argument, such as WRITE
/// data, in its own buffer), then device-writable fuse_out_header + reply sized for that request (a large
/// reply, such as READ data, in its own buffer). Buffers come from the guest memory heap; the caller's data is
/// copied in once and the reply copied out once — except for direct I/O with a <see cref="GuestBuffer"/>, whose
/// guest pages are the data descriptor itself (WRITE data read by the daemon from them, READ data written into
/// them), as Linux does with the pinned user pages of an O_DIRECT / cache=none read or write. A sender picks the request queue of its thread; when the
/// queue has no free descriptor it waits for the completion thread to free some. When the daemon's socket
/// hangs up (the daemon died), the connection is aborted: every request ends with ENOTCONN.
/// </remarks>
public sealed unsafe partial class VirtioFsBackend : IFuseTransport, IUserMemory
{
    private const ulong GuestUserBase = 0x7F00_0000_0000;
    private const int InlineLimit = 4096;
    private const int ChainEntries = 4;
    private const short PollRdHup = 0x2000;

    private readonly VirtioFsBackendOptions _options;
    private readonly VhostUserFrontend _frontend;
    private readonly SafeFd _memFd;
    private readonly GuestMemory _memory;
    private readonly byte* _base;
    private readonly ulong _memorySize;
    private readonly GuestHeap _heap;
    private readonly Queue[] _queues;
    private readonly EventFd _stop;
    private readonly Thread _monitor;
    private readonly object _lifecycle = new();
    private FuseConn? _connection;
    private volatile bool _stopping;
    private volatile bool _daemonGone;
    private volatile bool _unmapped;
    private bool _queuesStopped;
    private bool _disposed;
    private int _nextQueue;

    [ThreadStatic] private static int t_queueTicket;

    private sealed class Queue
    {
        public readonly object Lock = new();
        public required int Index;
        public required DriverQueue Ring;
        public required EventFd Kick;
        public required EventFd Call;
        public required FuseRequest?[] Slots;
        public Thread? Completer;
        public int SendersWaiting;
        public long Completed;
    }

    private VirtioFsBackend(VirtioFsBackendOptions options, VhostUserFrontend frontend, SafeFd memFd, GuestMemory memory, byte* baseAddress,
        GuestHeap heap, Queue[] queues, string tag, bool configOffered, ulong features, VhostUserBackendInfo info)
    {
        _options = options;
        _frontend = frontend;
        _memFd = memFd;
        _memory = memory;
        _base = baseAddress;
        _memorySize = options.MemorySize;
        _heap = heap;
        _queues = queues;
        Tag = tag;
        ConfigOffered = configOffered;
        AckedFeatures = features;
        BackendInfo = info;
        _stop = EventFd.Create(nonBlocking: true);
        foreach (var queue in queues)
        {
            var q = queue;
            q.Completer = new Thread(() => CompletionLoop(q)) { IsBackground = true, Name = $"virtiofs-vq{q.Index}" };
            q.Completer.Start();
        }
        _monitor = new Thread(MonitorLoop) { IsBackground = true, Name = "virtiofs-monitor" };
        _monitor.Start();
    }

    public string Name => "virtio-fs";

    /// <summary>The tag (from the daemon's config space when offered, else from the options).</summary>
    public string Tag { get; }

    /// <summary>The daemon offered VHOST_USER_PROTOCOL_F_CONFIG and the tag and queue count came from GET_CONFIG.</summary>
    public bool ConfigOffered { get; }

    /// <summary>Request queues in use (queues 1..N).</summary>
    public int NumRequestQueues => _queues.Length - 1;

    /// <summary>Virtio features acknowledged (VERSION_1 and the ring features).</summary>
    public ulong AckedFeatures { get; }

    public VhostUserBackendInfo BackendInfo { get; }

    /// <summary>No page limit from the ring: payloads are single guest buffers of up to 1 MiB.</summary>
    public int MaxPagesLimit => 256;

    /// <summary>The daemon's socket hung up.</summary>
    public bool DaemonGone => _daemonGone;

    /// <summary>Requests completed on queue <paramref name="index"/> (0 = hiprio).</summary>
    public long CompletedOn(int index) => Interlocked.Read(ref _queues[index].Completed);

    /// <summary>Chains the daemon holds on queue <paramref name="index"/>.</summary>
    public int InFlightOn(int index)
    {
        var q = _queues[index];
        lock (q.Lock)
        {
            return q.Ring.InFlight;
        }
    }

    /// <summary>Guest-memory bytes currently allocated to requests.</summary>
    public long HeapBytesInUse => _heap.BytesInUse;

    /// <summary>Guest-memory bytes held by user buffers (whole pages), including disposed ones a request still pins.</summary>
    public long UserBufferBytesInUse => _heap.PageBytesInUse;

    bool IUserMemory.TryAllocateUserMemory(int length, out ulong gpa, out ulong reserved, out nint host)
    {
        host = 0;
        if (_unmapped || !_heap.TryAllocatePages(length, out gpa, out reserved))
        {
            gpa = 0;
            reserved = 0;
            return false;
        }
        // SAFETY: the heap hands out ranges inside guest memory, which is mapped at _base for _memorySize bytes.
        host = (nint)(_base + gpa);
        return true;
    }

    void IUserMemory.FreeUserMemory(ulong gpa, ulong reserved) => _heap.FreePages(gpa, reserved);

    bool IUserMemory.IsMapped => !_unmapped;

    /// <summary>Connects to a vhost-user-fs daemon at <paramref name="socketPath"/> and brings the device up as
    /// QEMU and the guest driver do: handshake, config (tag, num_request_queues) when offered, features,
    /// memory table, queues; then registers the device by tag.</summary>
    public static VirtioFsBackend Connect(string socketPath, VirtioFsBackendOptions? options = null)
    {
        options ??= new VirtioFsBackendOptions();
        if (options.NumRequestQueues < 1 || options.NumRequestQueues > 255)
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.NumRequestQueues, "num_request_queues is 1..255");
        }
        if (!SplitRing.IsValidSize(options.QueueSize))
        {
            throw new ArgumentOutOfRangeException(nameof(options), options.QueueSize, "the queue size is a power of two up to 32768");
        }
        var frontend = VhostUserFrontend.Connect(socketPath, options.ConnectTimeout);
        SafeFd? memFd = null;
        GuestMemory? memory = null;
        var queues = new List<Queue>();
        try
        {
            var info = frontend.Initialize(2, wantConfig: true);
            string tag = options.Tag;
            int requestQueues = options.NumRequestQueues;
            bool configOffered = frontend.Negotiated(VhostUserProtocolFeatures.Config);
            if (configOffered)
            {
                Span<byte> config = stackalloc byte[VirtioFsConfig.Size];
                frontend.GetConfig(0, config);
                var fsConfig = MemoryMarshal.Read<VirtioFsConfig>(config);
                string configTag = fsConfig.TagString;
                if (configTag.Length > 0)
                {
                    tag = configTag;
                }
                if (fsConfig.NumRequestQueues >= 1)
                {
                    requestQueues = (int)Math.Min(fsConfig.NumRequestQueues, 255u);
                }
            }
            if (frontend.Negotiated(VhostUserProtocolFeatures.Mq) && (ulong)(requestQueues + 1) > (ulong)info.QueueCount)
            {
                requestQueues = Math.Max(1, info.QueueCount - 1);
            }
            else if (!frontend.Negotiated(VhostUserProtocolFeatures.Mq))
            {
                requestQueues = 1;
            }

            ulong wanted = VirtioFeatures.Version1;
            if (options.UseIndirectDescriptors)
            {
                wanted |= VirtioFeatures.RingIndirectDesc;
            }
            if (options.UseEventIdx)
            {
                wanted |= VirtioFeatures.RingEventIdx;
            }
            ulong acked = info.Features & wanted;
            bool indirect = (acked & VirtioFeatures.RingIndirectDesc) != 0;
            bool eventIdx = (acked & VirtioFeatures.RingEventIdx) != 0;

            // Guest memory: rings (and indirect tables) first, page aligned, then the buffer heap.
            memFd = MemFd.Create("virtiofs-guest", options.MemorySize);
            var region = GuestMemoryRegion.Map(memFd, 0, options.MemorySize, 0, GuestUserBase);
            byte* baseAddress = (byte*)region.HostAddress;
            memory = new GuestMemory(new[] { region });
            ulong cursor = 0;
            int queueCount = requestQueues + 1;
            var setups = new List<VhostUserQueueSetup>();
            for (int i = 0; i < queueCount; i++)
            {
                ushort size = options.QueueSize;
                ulong bytes = SplitRing.Layout(size, cursor, out ulong desc, out ulong avail, out ulong used);
                var ring = new DriverQueue(memory, size, desc, avail, used, eventIdx, indirect);
                cursor = AlignPage(cursor + bytes);
                if (indirect)
                {
                    ring.SetIndirectArea(memory, cursor, ChainEntries);
                    cursor = AlignPage(cursor + DriverQueue.IndirectAreaBytes(size, ChainEntries));
                }
                var queue = new Queue
                {
                    Index = i,
                    Ring = ring,
                    Kick = EventFd.Create(nonBlocking: true),
                    Call = EventFd.Create(nonBlocking: true),
                    Slots = new FuseRequest?[size],
                };
                queues.Add(queue);
                setups.Add(new VhostUserQueueSetup((uint)i, size, GuestUserBase + desc, GuestUserBase + avail, GuestUserBase + used,
                    queue.Kick.Fd, queue.Call.Fd));
            }
            if (cursor + (2UL << 20) > options.MemorySize)
            {
                throw new ArgumentException($"guest memory of {options.MemorySize} bytes is too small for {queueCount} queues of {options.QueueSize}");
            }
            var heap = new GuestHeap(cursor, options.MemorySize - cursor, 1 << 20);
            var regionDescription = new MemoryRegionDescription(0, options.MemorySize, GuestUserBase, 0);
            frontend.Start(acked, new[] { new VhostUserMemoryRegion(regionDescription, memFd.Fd) }, setups);
            var backend = new VirtioFsBackend(options, frontend, memFd, memory, baseAddress, heap, queues.ToArray(), tag, configOffered, acked, info);
            if (options.Register)
            {
                VirtioFsDevice.Register(tag, backend);
            }
            return backend;
        }
        catch
        {
            foreach (var q in queues)
            {
                q.Ring.Dispose();
                q.Kick.Dispose();
                q.Call.Dispose();
            }
            memory?.Dispose();
            memFd?.Dispose();
            frontend.Dispose();
            throw;
        }
    }

    private static ulong AlignPage(ulong value) => (value + 4095) & ~4095UL;

    public void Attach(FuseConn connection)
    {
        lock (_lifecycle)
        {
            if (_connection != null)
            {
                throw new InvalidOperationException($"virtio-fs device '{Tag}' is already mounted");
            }
            if (_stopping)
            {
                throw new InvalidOperationException($"virtio-fs device '{Tag}' was stopped");
            }
            _connection = connection;
        }
    }

    private FuseConn Connection => _connection ?? throw new InvalidOperationException("the device is not attached to a connection");

    // ---------------------------------------------------------------- submission

    private Queue PickQueue(FuseRequest request)
    {
        if (request.IsHighPriority)
        {
            return _queues[0];
        }
        int requestQueues = _queues.Length - 1;
        if (requestQueues == 1)
        {
            return _queues[1];
        }
        // Per calling thread, as Linux maps CPUs to queues: a thread keeps its queue.
        int ticket = t_queueTicket;
        if (ticket == 0)
        {
            ticket = Interlocked.Increment(ref _nextQueue);
            t_queueTicket = ticket;
        }
        return _queues[1 + (ticket - 1) % requestQueues];
    }

    private Span<byte> Memory(GuestBlock buffer)
    {
        // SAFETY: every GuestBlock comes from the heap, which lies inside the mapped region of _memorySize bytes.
        if (buffer.Gpa + (ulong)buffer.Length > _memorySize)
        {
            throw new InvalidOperationException("a guest buffer lies outside guest memory");
        }
        return new Span<byte>(_base + buffer.Gpa, buffer.Length);
    }

    public int Submit(FuseRequest request, ReadOnlySpan<byte> header, scoped in FuseArgs args)
    {
        if (_stopping)
        {
            return -(int)Errno.ENOTCONN;
        }
        // Direct I/O: the user buffer's own guest pages are the data descriptor (readable for WRITE, writable for READ).
        var user = request.UserBuffer;
        ulong userGpa = 0;
        if (user != null)
        {
            if (!user.IsGuestMemory)
            {
                return -(int)Errno.EFAULT;
            }
            userGpa = user.GpaAt(request.UserOffset);
            if (userGpa > _memorySize || (ulong)request.UserLength > _memorySize - userGpa)
            {
                return -(int)Errno.EFAULT;
            }
        }
        int total = header.Length + args.TotalLength;
        int lastIndex = args.Count - 1;
        bool splitLast = total > InlineLimit && lastIndex >= 0 && args[lastIndex].Length > 0;
        int inlineLength = splitLast ? total - args[lastIndex].Length : total;
        if (inlineLength > _heap.MaxBlock || (splitLast && args[lastIndex].Length > _heap.MaxBlock))
        {
            return -(int)Errno.E2BIG;
        }
        if (!_heap.TryAllocate(inlineLength, out var inBuffer))
        {
            return -(int)Errno.ENOTCONN;
        }
        request.VirtioIn = inBuffer;
        var inSpan = Memory(inBuffer);
        header.CopyTo(inSpan);
        int offset = header.Length;
        for (int i = 0; i < args.Count; i++)
        {
            if (splitLast && i == lastIndex)
            {
                break;
            }
            args[i].CopyTo(inSpan[offset..]);
            offset += args[i].Length;
        }
        if (splitLast)
        {
            if (!_heap.TryAllocate(args[lastIndex].Length, out var data))
            {
                return -(int)Errno.ENOTCONN;
            }
            request.VirtioInData = data;
            args[lastIndex].CopyTo(Memory(data));
        }
        bool wantsReply = !request.NoReply || request.IsInterrupt;
        if (wantsReply)
        {
            int capacity = request.RepliesIntoUserBuffer ? 0 : request.ReplyCapacity;
            if (FuseOutHeader.Size + capacity <= InlineLimit || capacity == 0)
            {
                if (!_heap.TryAllocate(FuseOutHeader.Size + capacity, out var outBuffer))
                {
                    return -(int)Errno.ENOTCONN;
                }
                request.VirtioOut = outBuffer;
            }
            else
            {
                if (capacity > _heap.MaxBlock)
                {
                    return -(int)Errno.E2BIG;
                }
                if (!_heap.TryAllocate(FuseOutHeader.Size, out var outHeader) || !_heap.TryAllocate(capacity, out var outData))
                {
                    return -(int)Errno.ENOTCONN;
                }
                request.VirtioOut = outHeader;
                request.VirtioOutData = outData;
            }
            // A zeroed header: a daemon that returns the chain without writing is caught by the unique check.
            Memory(request.VirtioOut)[..FuseOutHeader.Size].Clear();
        }

        Span<(ulong Gpa, uint Len)> readable = stackalloc (ulong, uint)[3];
        Span<(ulong Gpa, uint Len)> writable = stackalloc (ulong, uint)[3];
        int readableCount = 0;
        int writableCount = 0;
        readable[readableCount++] = (request.VirtioIn.Gpa, (uint)request.VirtioIn.Length);
        if (!request.VirtioInData.IsEmpty)
        {
            readable[readableCount++] = (request.VirtioInData.Gpa, (uint)request.VirtioInData.Length);
        }
        if (request.UserPayloadLength > 0)
        {
            readable[readableCount++] = (userGpa, (uint)request.UserLength);
        }
        if (!request.VirtioOut.IsEmpty)
        {
            writable[writableCount++] = (request.VirtioOut.Gpa, (uint)request.VirtioOut.Length);
        }
        if (!request.VirtioOutData.IsEmpty)
        {
            writable[writableCount++] = (request.VirtioOutData.Gpa, (uint)request.VirtioOutData.Length);
        }
        if (request.RepliesIntoUserBuffer)
        {
            writable[writableCount++] = (userGpa, (uint)request.UserLength);
        }

        var queue = PickQueue(request);
        request.VirtioQueue = queue.Index;
        if (!request.NoReply)
        {
            // The queue's reference: the buffers stay ours until the daemon hands the chain back.
            request.AddRef();
        }
        bool kick;
        lock (queue.Lock)
        {
            int head;
            while ((head = queue.Ring.TryAdd(readable[..readableCount], writable[..writableCount])) < 0)
            {
                // A full queue: wait for the completion thread to reap (never fail for lack of room).
                if (_stopping)
                {
                    if (!request.NoReply)
                    {
                        request.DropRef();
                    }
                    return -(int)Errno.ENOTCONN;
                }
                queue.SendersWaiting++;
                try
                {
                    Monitor.Wait(queue.Lock, 100);
                }
                finally
                {
                    queue.SendersWaiting--;
                }
            }
            request.VirtioHead = head;
            queue.Slots[head] = request;
            kick = queue.Ring.PublishAndCheckKick();
        }
        if (kick)
        {
            queue.Kick.Signal();
        }
        return 0;
    }

    public void CopyReply(FuseRequest request, Span<byte> destination)
    {
        if (!request.VirtioOutData.IsEmpty)
        {
            Memory(request.VirtioOutData)[..destination.Length].CopyTo(destination);
        }
        else
        {
            Memory(request.VirtioOut).Slice(FuseOutHeader.Size, destination.Length).CopyTo(destination);
        }
    }

    public void ReleaseBuffers(FuseRequest request)
    {
        _heap.Free(request.VirtioIn);
        _heap.Free(request.VirtioInData);
        _heap.Free(request.VirtioOut);
        _heap.Free(request.VirtioOutData);
        request.VirtioIn = default;
        request.VirtioInData = default;
        request.VirtioOut = default;
        request.VirtioOutData = default;
    }

    /// <summary>A chain on the ring is visible to the daemon at once: nothing can be withdrawn.</summary>
    public bool TryWithdraw(FuseRequest request) => false;
}
