using Vhostfsd.Posix;

namespace Vhostfsd.VhostUser;

/// <summary>What <see cref="VhostUserFrontend.Initialize"/> learned about the back-end.</summary>
public sealed record VhostUserBackendInfo(
    ulong Features,
    VhostUserProtocolFeatures OfferedProtocolFeatures,
    VhostUserProtocolFeatures ProtocolFeatures,
    int QueueCount,
    ulong MaxMemSlots);

/// <summary>One queue as the driver laid it out: size, the avail index to start from, the three
/// rings as VMM user addresses, and the kick/call eventfds (the caller keeps ownership; -1 kick =
/// polling, -1 call = none).</summary>
public sealed record VhostUserQueueSetup(
    uint Index,
    ushort Size,
    ulong DescUserAddr,
    ulong AvailUserAddr,
    ulong UsedUserAddr,
    int KickFd,
    int CallFd,
    ushort Base = 0);

/// <summary>One guest memory region for the back-end: its description and the fd to map
/// (the caller keeps ownership of the fd).</summary>
public readonly record struct VhostUserMemoryRegion(MemoryRegionDescription Description, int Fd);

/// <summary>The front-end side of vhost-user (what QEMU does), for the guest shim and the tests:
/// typed messages with their fds, REPLY_ACK handling, and the message sequence QEMU 7.2 sends for
/// <c>vhost-user-fs-pci</c> (<see cref="Initialize"/>, <see cref="Start"/>, <see cref="Stop"/>).</summary>
/// <remarks>Messages are sent and answered one at a time; calls are serialized by a lock, so several
/// threads may share one front-end. A back-end that refuses (non-zero ack, or an error-shaped reply)
/// raises <see cref="VhostUserRequestFailedException"/>; one that breaks the framing or does not answer
/// in <see cref="ReplyTimeout"/> raises <see cref="VhostUserProtocolException"/>.</remarks>
public sealed class VhostUserFrontend : IDisposable
{
    /// <summary>Protocol features this front-end can use (what QEMU 7.2 keeps for vhost-user-fs:
    /// CONFIG only when asked for, since its vhost-user-fs has no config callbacks).</summary>
    public const VhostUserProtocolFeatures SupportedProtocolFeatures = VhostUserProtocolFeatures.Mq
        | VhostUserProtocolFeatures.ReplyAck | VhostUserProtocolFeatures.BackendReq
        | VhostUserProtocolFeatures.ConfigureMemSlots | VhostUserProtocolFeatures.Status
        | VhostUserProtocolFeatures.ResetDevice | VhostUserProtocolFeatures.Config;

    private readonly VhostUserChannel _channel;
    private readonly VhostUserMessage _reply = new();
    private readonly object _callLock = new();
    private readonly List<EventFd> _maskedNotifiers = new();
    private UnixSocket? _backendRequestSocket;
    private ulong _backendFeatures;

    public VhostUserFrontend(UnixSocket socket)
    {
        _channel = new VhostUserChannel(socket);
    }

    /// <summary>Connects to a back-end listening at <paramref name="path"/>, retrying while the socket
    /// does not exist yet or refuses (a daemon that is still starting) until <paramref name="timeout"/>.</summary>
    public static VhostUserFrontend Connect(string path, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            try
            {
                return new VhostUserFrontend(UnixSocket.Connect(path));
            }
            catch (PosixException e) when (e.Errno is Errno.ENOENT or Errno.ECONNREFUSED && DateTime.UtcNow < deadline)
            {
                Thread.Sleep(20);
            }
        }
    }

    public VhostUserChannel Channel => _channel;

    /// <summary>Set a REPLY_ACK request on every message that has no reply of its own, once REPLY_ACK
    /// is negotiated (QEMU asks only for some; asking for all checks each message). Default on.</summary>
    public bool AckEveryMessage { get; set; } = true;

    /// <summary>How long to wait for a reply.</summary>
    public TimeSpan ReplyTimeout { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Negotiated protocol features (after SET_PROTOCOL_FEATURES).</summary>
    public VhostUserProtocolFeatures ProtocolFeatures { get; private set; }

    /// <summary>Every request sent, in order, with whether the back-end acknowledged it (REPLY_ACK 0)
    /// or answered it with its own reply; null when not recorded.</summary>
    public List<(VhostUserRequest Request, bool Answered)>? Transcript { get; set; }

    private bool ReplyAckNegotiated => (ProtocolFeatures & VhostUserProtocolFeatures.ReplyAck) != 0;

    public bool Negotiated(VhostUserProtocolFeatures feature) => (ProtocolFeatures & feature) != 0;

    // ---- generic ----

    /// <summary>Sends a request that has no reply of its own; asks for an ack when
    /// <paramref name="needReply"/> (or <see cref="AckEveryMessage"/>) and REPLY_ACK is negotiated,
    /// and throws when the ack is non-zero.</summary>
    public void Send(VhostUserRequest request, ReadOnlySpan<byte> payload, ReadOnlySpan<int> fds = default, bool needReply = false)
    {
        lock (_callLock)
        {
            bool ack = ReplyAckNegotiated && (needReply || AckEveryMessage);
            _channel.Send((uint)request, ack ? VhostUserHeaderFlags.NeedReply : 0, payload, fds);
            if (!ack)
            {
                Transcript?.Add((request, false));
                return;
            }
            ulong status = ReceiveU64(request);
            Transcript?.Add((request, status == 0));
            if (status != 0)
            {
                throw new VhostUserRequestFailedException(request, status);
            }
        }
    }

    /// <summary>Sends a request whose reply carries a payload and returns that payload's length
    /// (copied to <paramref name="replyPayload"/>, which must be large enough).</summary>
    public int Call(VhostUserRequest request, ReadOnlySpan<byte> payload, Span<byte> replyPayload, ReadOnlySpan<int> fds = default)
    {
        lock (_callLock)
        {
            _channel.Send((uint)request, 0, payload, fds);
            WaitForReply(request);
            _channel.ReceiveReply(_reply, (uint)request);
            _reply.CloseFds();
            var received = _reply.Payload;
            if (received.Length > replyPayload.Length)
            {
                throw new VhostUserProtocolException($"the reply to {request} has {received.Length} bytes, more than the {replyPayload.Length} expected");
            }
            received.CopyTo(replyPayload);
            Transcript?.Add((request, true));
            return received.Length;
        }
    }

    private ulong CallU64(VhostUserRequest request, ReadOnlySpan<byte> payload = default)
    {
        Span<byte> reply = stackalloc byte[8];
        int n = Call(request, payload, reply);
        if (n != 8)
        {
            throw new VhostUserProtocolException($"the reply to {request} has {n} bytes, not 8");
        }
        return Wire.Read<ulong>(reply);
    }

    private ulong ReceiveU64(VhostUserRequest request)
    {
        WaitForReply(request);
        _channel.ReceiveReply(_reply, (uint)request);
        _reply.CloseFds();
        if (_reply.Payload.Length != 8)
        {
            throw new VhostUserProtocolException($"the ack of {request} has {_reply.Payload.Length} bytes, not 8");
        }
        return _reply.Read<ulong>();
    }

    private unsafe void WaitForReply(VhostUserRequest request)
    {
        var pfd = new PollFd { Fd = _channel.Socket.Fd, Events = Libc.POLLIN };
        long deadline = Environment.TickCount64 + (long)ReplyTimeout.TotalMilliseconds;
        while (true)
        {
            long remaining = deadline - Environment.TickCount64;
            if (remaining <= 0)
            {
                throw new VhostUserProtocolException($"the back-end did not answer {request} within {ReplyTimeout}");
            }
            // SAFETY: &pfd is one PollFd on this stack frame.
            int n = Libc.Poll(&pfd, 1, (int)Math.Min(remaining, int.MaxValue));
            if (n > 0)
            {
                return;
            }
            if (n < 0 && Libc.LastErrno != Errno.EINTR)
            {
                PosixException.ThrowLast("poll");
            }
        }
    }

    private static ReadOnlySpan<byte> U64(ref ulong value) => Wire.AsBytes(in value);

    // ---- typed messages ----

    public ulong GetFeatures() => _backendFeatures = CallU64(VhostUserRequest.GetFeatures);

    public void SetFeatures(ulong features)
    {
        Send(VhostUserRequest.SetFeatures, U64(ref features));
    }

    public VhostUserProtocolFeatures GetProtocolFeatures() => (VhostUserProtocolFeatures)CallU64(VhostUserRequest.GetProtocolFeatures);

    public void SetProtocolFeatures(VhostUserProtocolFeatures features)
    {
        ulong value = (ulong)features;
        // The ack rule applies from this message on (the back-end answers with the new set).
        lock (_callLock)
        {
            var previous = ProtocolFeatures;
            ProtocolFeatures = features;
            try
            {
                Send(VhostUserRequest.SetProtocolFeatures, U64(ref value));
            }
            catch
            {
                ProtocolFeatures = previous;
                throw;
            }
        }
    }

    public void SetOwner() => Send(VhostUserRequest.SetOwner, default);

    public void ResetOwner() => Send(VhostUserRequest.ResetOwner, default);

    public void ResetDevice() => Send(VhostUserRequest.ResetDevice, default);

    public ulong GetQueueNum() => CallU64(VhostUserRequest.GetQueueNum);

    public ulong GetMaxMemSlots() => CallU64(VhostUserRequest.GetMaxMemSlots);

    public void SetMemTable(ReadOnlySpan<VhostUserMemoryRegion> regions)
    {
        if (regions.Length == 0 || regions.Length > VhostUserLimits.MaxMemTableRegions)
        {
            throw new ArgumentException($"SET_MEM_TABLE carries 1..{VhostUserLimits.MaxMemTableRegions} regions", nameof(regions));
        }
        var table = new MemoryTable { Header = new MemoryTableHeader { NumRegions = (uint)regions.Length } };
        Span<int> fds = stackalloc int[regions.Length];
        for (int i = 0; i < regions.Length; i++)
        {
            table.Regions[i] = regions[i].Description;
            fds[i] = regions[i].Fd;
        }
        Send(VhostUserRequest.SetMemTable, Wire.AsBytes(in table)[..MemoryTable.PayloadSize(regions.Length)], fds);
    }

    public void AddMemRegion(MemoryRegionDescription region, int fd)
    {
        var payload = new SingleMemoryRegion(region);
        Send(VhostUserRequest.AddMemReg, Wire.AsBytes(in payload), [fd]);
    }

    public void RemoveMemRegion(MemoryRegionDescription region)
    {
        var payload = new SingleMemoryRegion(region);
        Send(VhostUserRequest.RemMemReg, Wire.AsBytes(in payload));
    }

    public void SetVringNum(uint index, uint num)
    {
        var state = new VringState(index, num);
        Send(VhostUserRequest.SetVringNum, Wire.AsBytes(in state));
    }

    public void SetVringBase(uint index, uint num)
    {
        var state = new VringState(index, num);
        Send(VhostUserRequest.SetVringBase, Wire.AsBytes(in state));
    }

    public void SetVringAddr(in VringAddress address) => Send(VhostUserRequest.SetVringAddr, Wire.AsBytes(in address));

    /// <summary>Stops the ring and returns the index of the next avail entry the back-end would have used.</summary>
    public uint GetVringBase(uint index)
    {
        var state = new VringState(index, 0);
        Span<byte> reply = stackalloc byte[VringState.Size];
        int n = Call(VhostUserRequest.GetVringBase, Wire.AsBytes(in state), reply);
        if (n != VringState.Size)
        {
            throw new VhostUserProtocolException($"the reply to GET_VRING_BASE has {n} bytes, not {VringState.Size}");
        }
        var answer = Wire.Read<VringState>(reply);
        if (answer.Index != index)
        {
            throw new VhostUserProtocolException($"GET_VRING_BASE for ring {index} answered for ring {answer.Index}");
        }
        return answer.Num;
    }

    /// <summary>SET_VRING_KICK; <paramref name="fd"/> -1 sends the no-fd flag (the back-end polls).</summary>
    public void SetVringKick(uint index, int fd) => SendVringFd(VhostUserRequest.SetVringKick, index, fd);

    /// <summary>SET_VRING_CALL; <paramref name="fd"/> -1 sends the no-fd flag (no interrupts).</summary>
    public void SetVringCall(uint index, int fd) => SendVringFd(VhostUserRequest.SetVringCall, index, fd);

    public void SetVringErr(uint index, int fd) => SendVringFd(VhostUserRequest.SetVringErr, index, fd);

    private void SendVringFd(VhostUserRequest request, uint index, int fd)
    {
        ulong value = (index & VhostUserLimits.VringIndexMask) | (fd < 0 ? VhostUserLimits.VringNoFdFlag : 0);
        Send(request, U64(ref value), fd < 0 ? default : [fd]);
    }

    public void SetVringEnable(uint index, bool enable)
    {
        var state = new VringState(index, enable ? 1u : 0u);
        Send(VhostUserRequest.SetVringEnable, Wire.AsBytes(in state));
    }

    public void SetBackendReqFd(int fd) => Send(VhostUserRequest.SetBackendReqFd, default, [fd]);

    /// <summary>Reads <paramref name="destination"/>.Length bytes of config space at <paramref name="offset"/>.</summary>
    public void GetConfig(uint offset, Span<byte> destination, uint flags = ConfigHeader.FlagWritable)
    {
        if (destination.Length == 0 || destination.Length > VhostUserLimits.MaxConfigSize)
        {
            throw new ArgumentException($"a config access is 1..{VhostUserLimits.MaxConfigSize} bytes", nameof(destination));
        }
        Span<byte> payload = stackalloc byte[ConfigHeader.Size + destination.Length];
        payload.Clear();
        Wire.Write(payload, new ConfigHeader(offset, (uint)destination.Length, flags));
        Span<byte> reply = stackalloc byte[ConfigHeader.Size + destination.Length];
        int n = Call(VhostUserRequest.GetConfig, payload, reply);
        if (n != payload.Length)
        {
            throw new VhostUserRequestFailedException(VhostUserRequest.GetConfig, $"the back-end answered with {n} bytes (refused)");
        }
        reply[ConfigHeader.Size..].CopyTo(destination);
    }

    public void SetConfig(uint offset, ReadOnlySpan<byte> data, uint flags = ConfigHeader.FlagWritable)
    {
        Span<byte> payload = stackalloc byte[ConfigHeader.Size + data.Length];
        Wire.Write(payload, new ConfigHeader(offset, (uint)data.Length, flags));
        data.CopyTo(payload[ConfigHeader.Size..]);
        Send(VhostUserRequest.SetConfig, payload);
    }

    public void SetStatus(byte status)
    {
        ulong value = status;
        Send(VhostUserRequest.SetStatus, U64(ref value));
    }

    public byte GetStatus()
    {
        ulong value = CallU64(VhostUserRequest.GetStatus);
        if (value > byte.MaxValue)
        {
            throw new VhostUserProtocolException($"GET_STATUS answered 0x{value:x}, not an 8-bit status");
        }
        return (byte)value;
    }

    // ---- the QEMU 7.2 sequence for vhost-user-fs-pci ----

    /// <summary>Device realize (QEMU vhost_dev_init + vhost_user_backend_init): GET_FEATURES;
    /// GET/SET_PROTOCOL_FEATURES; GET_QUEUE_NUM (MQ); GET_MAX_MEM_SLOTS (CONFIGURE_MEM_SLOTS);
    /// SET_BACKEND_REQ_FD (BACKEND_REQ); SET_OWNER; GET_FEATURES; SET_VRING_CALL with a masked
    /// notifier per queue. Throws when the back-end has fewer than <paramref name="queueCount"/> queues.</summary>
    public VhostUserBackendInfo Initialize(int queueCount, bool wantConfig = false)
    {
        ulong features = GetFeatures();
        var offered = VhostUserProtocolFeatures.None;
        var acked = VhostUserProtocolFeatures.None;
        if ((features & VirtioFeatures.ProtocolFeatures) != 0)
        {
            offered = GetProtocolFeatures();
            var wanted = SupportedProtocolFeatures & ~(wantConfig ? 0 : VhostUserProtocolFeatures.Config);
            acked = offered & wanted;
            SetProtocolFeatures(acked);
        }
        int queues = queueCount;
        if (Negotiated(VhostUserProtocolFeatures.Mq))
        {
            ulong backendQueues = GetQueueNum();
            if (backendQueues < (ulong)queueCount)
            {
                throw new VhostUserRequestFailedException(VhostUserRequest.GetQueueNum,
                    $"the back-end has {backendQueues} queues, the device needs {queueCount}");
            }
            queues = (int)Math.Min(backendQueues, int.MaxValue);
        }
        ulong slots = 0;
        if (Negotiated(VhostUserProtocolFeatures.ConfigureMemSlots))
        {
            slots = GetMaxMemSlots();
        }
        if (Negotiated(VhostUserProtocolFeatures.BackendReq))
        {
            var (ours, theirs) = UnixSocket.Pair();
            try
            {
                SetBackendReqFd(theirs.Fd);
            }
            finally
            {
                theirs.Dispose();
            }
            _backendRequestSocket?.Dispose();
            _backendRequestSocket = ours;
        }
        SetOwner();
        GetFeatures();
        for (int i = 0; i < queueCount; i++)
        {
            // QEMU starts each queue with its masked notifier as the call fd.
            var masked = EventFd.Create(nonBlocking: true);
            _maskedNotifiers.Add(masked);
            SetVringCall((uint)i, masked.Fd);
        }
        return new VhostUserBackendInfo(features, offered, acked, queues, slots);
    }

    /// <summary>Device start (QEMU vhost_dev_start + vuf_start): SET_FEATURES (plus PROTOCOL_FEATURES
    /// when offered; with STATUS: FEATURES_OK); the memory (ADD_MEM_REG per region with
    /// CONFIGURE_MEM_SLOTS, else SET_MEM_TABLE); per queue SET_VRING_NUM, SET_VRING_BASE,
    /// SET_VRING_ADDR, SET_VRING_KICK; SET_VRING_ENABLE 1 per queue; with STATUS: ACKNOWLEDGE |
    /// DRIVER | DRIVER_OK; then SET_VRING_CALL with each queue's real call fd.</summary>
    public void Start(ulong ackedFeatures, IReadOnlyList<VhostUserMemoryRegion> memory, IReadOnlyList<VhostUserQueueSetup> queues,
        bool forceSetMemTable = false)
    {
        bool protocolFeatures = (_backendFeatures & VirtioFeatures.ProtocolFeatures) != 0;
        ulong features = ackedFeatures | (protocolFeatures ? VirtioFeatures.ProtocolFeatures : 0);
        SetFeatures(features);
        if (Negotiated(VhostUserProtocolFeatures.Status))
        {
            AddStatus(VirtioDeviceStatus.FeaturesOk);
        }
        if (Negotiated(VhostUserProtocolFeatures.ConfigureMemSlots) && !forceSetMemTable)
        {
            foreach (var region in memory)
            {
                AddMemRegion(region.Description, region.Fd);
            }
        }
        else
        {
            var regions = new VhostUserMemoryRegion[memory.Count];
            for (int i = 0; i < regions.Length; i++)
            {
                regions[i] = memory[i];
            }
            SetMemTable(regions);
        }
        foreach (var queue in queues)
        {
            SetVringNum(queue.Index, queue.Size);
            SetVringBase(queue.Index, queue.Base);
            SetVringAddr(new VringAddress
            {
                Index = queue.Index,
                DescriptorTable = queue.DescUserAddr,
                AvailableRing = queue.AvailUserAddr,
                UsedRing = queue.UsedUserAddr,
            });
            SetVringKick(queue.Index, queue.KickFd);
        }
        if (protocolFeatures)
        {
            foreach (var queue in queues)
            {
                SetVringEnable(queue.Index, true);
            }
        }
        if (Negotiated(VhostUserProtocolFeatures.Status))
        {
            AddStatus(VirtioDeviceStatus.Acknowledge | VirtioDeviceStatus.Driver | VirtioDeviceStatus.DriverOk);
        }
        foreach (var queue in queues)
        {
            SetVringCall(queue.Index, queue.CallFd);
        }
    }

    /// <summary>Device stop (QEMU vhost_dev_stop): with STATUS, status 0; SET_VRING_ENABLE 0 per
    /// queue; GET_VRING_BASE per queue (which stops it). Returns each queue's next avail index.</summary>
    public uint[] Stop(IReadOnlyList<uint> queueIndices)
    {
        if (Negotiated(VhostUserProtocolFeatures.Status))
        {
            SetStatus(0);
        }
        if ((_backendFeatures & VirtioFeatures.ProtocolFeatures) != 0)
        {
            foreach (uint index in queueIndices)
            {
                SetVringEnable(index, false);
            }
        }
        var bases = new uint[queueIndices.Count];
        for (int i = 0; i < bases.Length; i++)
        {
            bases[i] = GetVringBase(queueIndices[i]);
        }
        return bases;
    }

    private void AddStatus(VirtioDeviceStatus bits)
    {
        byte status = GetStatus();
        if ((status & (byte)bits) != (byte)bits)
        {
            SetStatus((byte)(status | (byte)bits));
        }
    }

    public void Dispose()
    {
        _channel.Dispose();
        _backendRequestSocket?.Dispose();
        foreach (var notifier in _maskedNotifiers)
        {
            notifier.Dispose();
        }
        _maskedNotifiers.Clear();
        _reply.CloseFds();
    }
}
