using Vhostfsd.Logging;
using Vhostfsd.Posix;
using Vhostfsd.Virtqueue;

namespace Vhostfsd.VhostUser;

/// <summary>Tunables of a <see cref="VhostUserBackend"/>.</summary>
public sealed class VhostUserBackendOptions
{
    /// <summary>Host segments one chain may have (its descriptors, plus one per extra region a
    /// buffer crosses). Longer chains are malformed and break the ring. Also the longest indirect
    /// table accepted when it exceeds the ring size (older Linux guests build such tables).</summary>
    public int MaxChainSegments { get; init; } = 1024;

    /// <summary>How long a stopping ring (GET_VRING_BASE, RESET, disconnect) waits for chains a
    /// handler still holds before it abandons them.</summary>
    public TimeSpan InFlightDrainTimeout { get; init; } = TimeSpan.FromSeconds(5);

    /// <summary>How long to wait for a worker thread to leave a handler when it is told to stop.</summary>
    public TimeSpan WorkerStopTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Longest a ring's worker keeps checking the avail ring, with the driver's kicks
    /// suppressed, after the ring ran dry and before it sleeps on the kick fd. The worker adapts its
    /// window up to this (<see cref="PollWindow"/>); zero never polls.</summary>
    public TimeSpan PollMax { get; init; } = TimeSpan.Zero;
}

/// <summary>How a session ended.</summary>
public enum VhostUserSessionEnd
{
    /// <summary>The front-end closed the connection.</summary>
    Disconnected,
    /// <summary>The back-end closed it after a malformed message (logged).</summary>
    ProtocolError,
}

/// <summary>The back-end side of one vhost-user connection: runs the message loop on the calling
/// thread, keeps the negotiated state, the guest memory and the rings, and drives an
/// <see cref="IVhostUserDevice"/>. Shaped after rust-vmm's backend_req_handler (decode, validate,
/// dispatch, ack) and vhost-user-backend (vring state and workers).</summary>
/// <remarks>
/// Bad input gets a defined answer: a malformed header, an oversized payload or fds that do not fit
/// the request end the session with one log line; a request that is well framed but wrong (a bad
/// index, size, address or feature bit) is refused — a non-zero REPLY_ACK when one was asked for,
/// a warning otherwise — and the connection survives, as it does for unknown requests.
/// <para>One file for the whole message table (one handler per request, each a few lines): the
/// protocol's state machine reads best in one place, next to the order QEMU sends the messages in.
/// The per-ring state lives in <see cref="Vring"/>, the ring threads in VringWorker.</para>
/// </remarks>
public sealed class VhostUserBackend : IDisposable
{
    /// <summary>Virtio transport features this back-end implements for every device.</summary>
    public const ulong TransportFeatures = VirtioFeatures.Version1 | VirtioFeatures.RingEventIdx
        | VirtioFeatures.RingIndirectDesc | VirtioFeatures.NotifyOnEmpty | VirtioFeatures.ProtocolFeatures;

    /// <summary>Protocol features implemented (CONFIG is added when the device offers it).</summary>
    public const VhostUserProtocolFeatures ImplementedProtocolFeatures = VhostUserProtocolFeatures.Mq
        | VhostUserProtocolFeatures.ReplyAck | VhostUserProtocolFeatures.BackendReq
        | VhostUserProtocolFeatures.ConfigureMemSlots | VhostUserProtocolFeatures.Status
        | VhostUserProtocolFeatures.ResetDevice;

    private readonly VhostUserChannel _channel;
    private readonly IVhostUserDevice _device;
    private readonly Logger _log;
    private readonly VhostUserMessage _message = new();
    private readonly Vring[] _vrings;
    private readonly byte[] _replyBuffer = new byte[ConfigHeader.Size + VhostUserLimits.MaxConfigSize];
    private readonly GuestMemory _memory = new();
    private VhostUserChannel? _backendChannel;
    private ulong _ackedFeatures;
    private VhostUserProtocolFeatures _ackedProtocolFeatures;
    private bool _owned;
    private byte _status;
    private volatile bool _needsReset;
    private int _shutDown;

    public VhostUserBackend(UnixSocket connection, IVhostUserDevice device, VhostUserBackendOptions? options = null, Logger? log = null)
    {
        ArgumentNullException.ThrowIfNull(connection);
        ArgumentNullException.ThrowIfNull(device);
        if (device.QueueCount < 1 || device.QueueCount > (int)VhostUserLimits.VringIndexMask + 1)
        {
            throw new ArgumentException($"a device has 1..256 queues, not {device.QueueCount}", nameof(device));
        }
        if (!SplitRing.IsValidSize(device.MaxQueueSize))
        {
            throw new ArgumentException($"max queue size {device.MaxQueueSize} is not a power of 2 in 1..32768", nameof(device));
        }
        if ((device.DeviceFeatures & (TransportFeatures | VirtioFeatures.LogAll | VirtioFeatures.AccessPlatform | VirtioFeatures.RingPacked)) != 0)
        {
            throw new ArgumentException("device features overlap the transport bits the back-end owns", nameof(device));
        }
        options ??= new VhostUserBackendOptions();
        _channel = new VhostUserChannel(connection);
        _device = device;
        _log = log ?? Logger.None;
        OfferedFeatures = TransportFeatures | device.DeviceFeatures;
        OfferedProtocolFeatures = ImplementedProtocolFeatures | (device.OffersConfig ? VhostUserProtocolFeatures.Config : 0);
        _vrings = new Vring[device.QueueCount];
        for (int i = 0; i < _vrings.Length; i++)
        {
            _vrings[i] = new Vring(i, device, options, _log, OnRingBroken);
        }
    }

    public ulong OfferedFeatures { get; }
    public VhostUserProtocolFeatures OfferedProtocolFeatures { get; }
    public ulong AckedFeatures => Volatile.Read(ref _ackedFeatures);
    public VhostUserProtocolFeatures AckedProtocolFeatures => _ackedProtocolFeatures;
    public bool IsOwned => _owned;
    public IReadOnlyList<Vring> Vrings => _vrings;
    public GuestMemory Memory => _memory;

    /// <summary>The channel given by SET_BACKEND_REQ_FD (back-end initiated requests), if any.</summary>
    public VhostUserChannel? BackendChannel => _backendChannel;

    /// <summary>The device status (SET_STATUS), with DEVICE_NEEDS_RESET added once a ring broke.</summary>
    public byte Status => (byte)(_status | (_needsReset ? (byte)VirtioDeviceStatus.DeviceNeedsReset : 0));

    private bool ReplyAck => (_ackedProtocolFeatures & VhostUserProtocolFeatures.ReplyAck) != 0;

    private bool Negotiated(VhostUserProtocolFeatures feature) => (_ackedProtocolFeatures & feature) != 0;

    /// <summary>Serves the connection until the front-end disconnects or sends something malformed.
    /// Then stops every ring, unmaps the memory, closes every fd and resets the device.</summary>
    public VhostUserSessionEnd Run()
    {
        try
        {
            while (true)
            {
                try
                {
                    if (!_channel.ReceiveRequest(_message))
                    {
                        _log.Information("vhost-user: the front-end disconnected");
                        return VhostUserSessionEnd.Disconnected;
                    }
                    Handle(_message);
                }
                catch (VhostUserProtocolException e)
                {
                    _log.Error("vhost-user: closing the connection: {Reason}", e.Message);
                    return VhostUserSessionEnd.ProtocolError;
                }
                catch (PosixException e) when (e.Errno is Errno.EPIPE or Errno.ECONNRESET or Errno.ENOTCONN)
                {
                    _log.Information("vhost-user: the front-end went away while we replied ({Error})", e.Message);
                    return VhostUserSessionEnd.Disconnected;
                }
                finally
                {
                    _message.CloseFds();
                }
            }
        }
        finally
        {
            Shutdown();
        }
    }

    private void Handle(VhostUserMessage message)
    {
        var request = message.Request;
        if (_log.IsEnabled(LogEventLevel.Debug))
        {
            _log.Debug("vhost-user: {Request} flags 0x{Flags:x} size {Size} fds {Fds}",
                VhostUserChannel.Describe(message.Header.Request), message.Header.Flags, message.Header.PayloadSize, message.FdCount);
        }
        string? error;
        bool replied = false;
        try
        {
            error = Dispatch(message, ref replied);
        }
        catch (Exception e) when (e is not VhostUserProtocolException && e is not PosixException { Errno: Errno.EPIPE or Errno.ECONNRESET })
        {
            if (VhostUserMessageRules.HasOwnReply(request) && !replied)
            {
                throw new VhostUserProtocolException($"{VhostUserChannel.Describe(message.Header.Request)} failed and cannot be answered: {e.Message}", e);
            }
            _log.Error(e, "vhost-user: {Request} failed", VhostUserChannel.Describe(message.Header.Request));
            error = e.Message;
        }
        // Fds the handler did not keep are closed before the front-end hears back.
        message.CloseFds();
        if (replied)
        {
            return;
        }
        if (error != null)
        {
            _log.Warning("vhost-user: refused {Request}: {Reason}", VhostUserChannel.Describe(message.Header.Request), error);
        }
        if (message.Header.NeedsReply && ReplyAck)
        {
            _channel.SendReplyU64(message.Header.Request, error == null ? 0UL : 1UL);
        }
    }

    /// <summary>Handles one request; returns null on success or why it was refused. Sets
    /// <paramref name="replied"/> when it sent the request's own reply.</summary>
    private string? Dispatch(VhostUserMessage message, ref bool replied)
    {
        uint request = message.Header.Request;
        switch (message.Request)
        {
            case VhostUserRequest.GetFeatures:
                _channel.SendReplyU64(request, OfferedFeatures);
                replied = true;
                return null;

            case VhostUserRequest.SetFeatures:
                return SetFeatures(message.Read<ulong>());

            case VhostUserRequest.GetProtocolFeatures:
                _channel.SendReplyU64(request, (ulong)OfferedProtocolFeatures);
                replied = true;
                return null;

            case VhostUserRequest.SetProtocolFeatures:
            {
                var value = (VhostUserProtocolFeatures)message.Read<ulong>();
                if ((value & ~OfferedProtocolFeatures) != 0)
                {
                    return $"protocol features 0x{(ulong)(value & ~OfferedProtocolFeatures):x} were not offered";
                }
                _ackedProtocolFeatures = value;
                _log.Information("vhost-user: protocol features 0x{Value:x} negotiated ({Names})", (ulong)value, value);
                return null;
            }

            case VhostUserRequest.SetOwner:
                if (_owned)
                {
                    return "the session already has an owner";
                }
                _owned = true;
                return null;

            case VhostUserRequest.ResetOwner:
                // Deprecated; the spec recommends ignoring it or disabling the rings. We stop them,
                // and keep the negotiated state (discarding it led to bugs, says the spec).
                foreach (var ring in _vrings)
                {
                    ring.Stop();
                }
                _owned = false;
                return null;

            case VhostUserRequest.ResetDevice:
                if (!Negotiated(VhostUserProtocolFeatures.ResetDevice))
                {
                    return "RESET_DEVICE was not negotiated";
                }
                ResetDevice();
                return null;

            case VhostUserRequest.GetQueueNum:
                _channel.SendReplyU64(request, (ulong)_vrings.Length);
                replied = true;
                return null;

            case VhostUserRequest.GetMaxMemSlots:
                _channel.SendReplyU64(request, VhostUserLimits.MaxMemSlots);
                replied = true;
                return null;

            case VhostUserRequest.SetMemTable:
                return SetMemTable(message);

            case VhostUserRequest.AddMemReg:
                return AddMemRegion(message);

            case VhostUserRequest.RemMemReg:
                return RemoveMemRegion(message);

            case VhostUserRequest.SetVringNum:
            {
                var state = message.Read<VringState>();
                return RingAt(state.Index, out var ring) ?? ring.SetNum(state.Num);
            }

            case VhostUserRequest.SetVringBase:
            {
                var state = message.Read<VringState>();
                return RingAt(state.Index, out var ring) ?? ring.SetBase(state.Num);
            }

            case VhostUserRequest.SetVringAddr:
            {
                var address = message.Read<VringAddress>();
                return RingAt(address.Index, out var ring) ?? ring.SetAddress(address, _memory);
            }

            case VhostUserRequest.GetVringBase:
            {
                var state = message.Read<VringState>();
                if (RingAt(state.Index, out var ring) is { } bad)
                {
                    // The front-end waits for a vring state; there is no way to answer "no such ring".
                    throw new VhostUserProtocolException("GET_VRING_BASE: " + bad);
                }
                ushort next = ring.Stop();
                var reply = new VringState(state.Index, next);
                _channel.SendReply(request, Wire.AsBytes(in reply));
                replied = true;
                return null;
            }

            case VhostUserRequest.SetVringKick:
            case VhostUserRequest.SetVringCall:
            case VhostUserRequest.SetVringErr:
                return SetVringFd(message);

            case VhostUserRequest.SetVringEnable:
            {
                var state = message.Read<VringState>();
                if ((_ackedFeatures & VirtioFeatures.ProtocolFeatures) == 0)
                {
                    return "SET_VRING_ENABLE without VHOST_USER_F_PROTOCOL_FEATURES negotiated";
                }
                if (state.Num > 1)
                {
                    return $"SET_VRING_ENABLE with {state.Num} (0 or 1)";
                }
                if (RingAt(state.Index, out var ring) is { } bad)
                {
                    return bad;
                }
                ring.SetEnabled(state.Num == 1);
                return null;
            }

            case VhostUserRequest.SetBackendReqFd:
            {
                if (!Negotiated(VhostUserProtocolFeatures.BackendReq))
                {
                    return "BACKEND_REQ was not negotiated";
                }
                var channel = new VhostUserChannel(new UnixSocket(message.TakeFd(0)));
                _backendChannel?.Dispose();
                _backendChannel = channel;
                return null;
            }

            case VhostUserRequest.GetConfig:
                GetConfig(message);
                replied = true;
                return null;

            case VhostUserRequest.SetConfig:
                return SetConfig(message);

            case VhostUserRequest.SetStatus:
            {
                if (!Negotiated(VhostUserProtocolFeatures.Status))
                {
                    return "STATUS was not negotiated";
                }
                ulong value = message.Read<ulong>();
                if (value > byte.MaxValue)
                {
                    return $"status 0x{value:x} is not an 8-bit virtio status";
                }
                _status = (byte)value;
                if (value == 0)
                {
                    _needsReset = false;
                }
                return null;
            }

            case VhostUserRequest.GetStatus:
                _channel.SendReplyU64(request, Status);
                replied = true;
                return null;

            default:
                return $"{VhostUserChannel.Describe(request)} is not supported by this back-end";
        }
    }

    private string? RingAt(uint index, out Vring ring)
    {
        if (index >= (uint)_vrings.Length)
        {
            ring = null!;
            return $"vring index {index} is out of range (the device has {_vrings.Length})";
        }
        ring = _vrings[index];
        return null;
    }

    private string? SetFeatures(ulong value)
    {
        if ((value & ~OfferedFeatures) != 0)
        {
            return $"features 0x{value & ~OfferedFeatures:x} were not offered";
        }
        Volatile.Write(ref _ackedFeatures, value);
        _log.Information("vhost-user: virtio features 0x{Value:x} negotiated ({Names})", value, VirtioFeatures.Describe(value));
        bool protocolFeatures = (value & VirtioFeatures.ProtocolFeatures) != 0;
        foreach (var ring in _vrings)
        {
            ring.SetFeatures(value);
            if (ring.IsStarted)
            {
                ring.Reconfigure(_memory);
            }
            if (!protocolFeatures)
            {
                // Without PROTOCOL_FEATURES there is no SET_VRING_ENABLE: rings are enabled.
                ring.SetEnabled(true);
            }
        }
        return null;
    }

    private void ResetDevice()
    {
        foreach (var ring in _vrings)
        {
            ring.ResetState();
            ring.SetFeatures(0);
        }
        Volatile.Write(ref _ackedFeatures, 0UL);
        _status = 0;
        _needsReset = false;
        _device.Reset();
    }

    private string? SetVringFd(VhostUserMessage message)
    {
        ulong value = message.Read<ulong>();
        if ((value & ~(VhostUserLimits.VringIndexMask | VhostUserLimits.VringNoFdFlag)) != 0)
        {
            return $"{message.Request} 0x{value:x} sets unknown bits";
        }
        if (RingAt((uint)(value & VhostUserLimits.VringIndexMask), out var ring) is { } bad)
        {
            return bad;
        }
        bool noFd = (value & VhostUserLimits.VringNoFdFlag) != 0;
        EventFd? fd = noFd ? null : new EventFd(message.TakeFd(0));
        switch (message.Request)
        {
            case VhostUserRequest.SetVringKick:
                ring.SetKick(fd, polling: noFd);
                break;
            case VhostUserRequest.SetVringCall:
                ring.SetCall(fd);
                break;
            default:
                ring.SetErr(fd);
                break;
        }
        return null;
    }

    private string? SetMemTable(VhostUserMessage message)
    {
        int count = (int)message.Read<MemoryTableHeader>().NumRegions;
        var regions = new List<GuestMemoryRegion>(count);
        // A table refused at region i must unmap regions 0..i-1 again (found by the vhost-user fuzzer).
        bool installed = false;
        try
        {
            for (int i = 0; i < count; i++)
            {
                var description = message.Read<MemoryRegionDescription>(MemoryTableHeader.Size + i * MemoryRegionDescription.Size);
                if (!description.IsWellFormed)
                {
                    return $"memory region {i} ({description}) is empty or wraps around";
                }
                using var fd = message.TakeFd(i);
                if (CheckBacking(fd, description) is { } problem)
                {
                    return problem;
                }
                regions.Add(GuestMemoryRegion.Map(fd, description.MmapOffset, description.MemorySize,
                    description.GuestPhysAddr, description.UserAddr));
            }
            _memory.ReplaceAll(regions);
            installed = true;
        }
        catch (Exception e) when (e is PosixException or ArgumentException)
        {
            return "SET_MEM_TABLE: " + e.Message;
        }
        finally
        {
            if (!installed)
            {
                foreach (var region in regions)
                {
                    region.Dispose();
                }
            }
        }
        // Rings keep their old mappings pinned until they move to the new ones.
        foreach (var ring in _vrings)
        {
            ring.Reconfigure(_memory);
        }
        if (_log.IsEnabled(LogEventLevel.Debug))
        {
            _log.Debug("vhost-user: memory table of {Count} region(s)", count);
        }
        return null;
    }

    /// <summary>A region that reaches past the end of a regular file (memfd, hugetlbfs, tmpfs)
    /// would map pages whose access raises SIGBUS: refuse it before mapping.</summary>
    private static unsafe string? CheckBacking(SafeFd fd, in MemoryRegionDescription description)
    {
        Statx stat;
        byte empty = 0;
        if (Libc.StatxAt(fd.Fd, &empty, Libc.AT_EMPTY_PATH, Libc.STATX_TYPE | Libc.STATX_SIZE, &stat) != 0)
        {
            return "fstat of the region fd failed: " + PosixException.Describe(Libc.LastErrno);
        }
        if ((stat.Mode & Libc.S_IFMT) == Libc.S_IFREG && description.MmapOffset + description.MemorySize > stat.FileSize)
        {
            return $"region ({description}) ends past its {stat.FileSize}-byte backing file";
        }
        return null;
    }

    private string? AddMemRegion(VhostUserMessage message)
    {
        if (!Negotiated(VhostUserProtocolFeatures.ConfigureMemSlots))
        {
            return "CONFIGURE_MEM_SLOTS was not negotiated";
        }
        if (_memory.RegionCount >= VhostUserLimits.MaxMemSlots)
        {
            return $"all {VhostUserLimits.MaxMemSlots} memory slots are in use";
        }
        var description = message.Read<SingleMemoryRegion>().Region;
        if (!description.IsWellFormed)
        {
            return $"memory region ({description}) is empty or wraps around";
        }
        GuestMemoryRegion region;
        try
        {
            using var fd = message.TakeFd(0);
            if (CheckBacking(fd, description) is { } problem)
            {
                return problem;
            }
            region = GuestMemoryRegion.Map(fd, description.MmapOffset, description.MemorySize, description.GuestPhysAddr, description.UserAddr);
        }
        catch (Exception e) when (e is PosixException or ArgumentException)
        {
            return "ADD_MEM_REG: " + e.Message;
        }
        if (!_memory.TryAddRegion(region, out string? why))
        {
            region.Dispose();
            return "ADD_MEM_REG: " + why;
        }
        foreach (var ring in _vrings)
        {
            if (!ring.IsStarted)
            {
                ring.Reconfigure(_memory);
            }
        }
        return null;
    }

    private string? RemoveMemRegion(VhostUserMessage message)
    {
        if (!Negotiated(VhostUserProtocolFeatures.ConfigureMemSlots))
        {
            return "CONFIGURE_MEM_SLOTS was not negotiated";
        }
        var description = message.Read<SingleMemoryRegion>().Region;
        // The region is named by guest address, user address and size; the mmap offset is ignored.
        foreach (var region in _memory.GetRegions())
        {
            if (region.GuestPhysAddr == description.GuestPhysAddr && region.Size == description.MemorySize
                && region.UserAddr == description.UserAddr)
            {
                // Rings and chains in flight that point into it keep it mapped until they let go.
                _memory.RemoveRegion(region.GuestPhysAddr, region.Size);
                return null;
            }
        }
        return $"REM_MEM_REG: no region {description}";
    }

    private void GetConfig(VhostUserMessage message)
    {
        uint request = message.Header.Request;
        var header = message.Read<ConfigHeader>();
        bool ok = Negotiated(VhostUserProtocolFeatures.Config)
            && header.ConfigSize != 0 && header.ConfigSize <= VhostUserLimits.MaxConfigSize
            && message.Payload.Length == ConfigHeader.Size + header.ConfigSize
            && header.Flags <= ConfigHeader.FlagLiveMigration;
        Span<byte> reply = _replyBuffer.AsSpan(0, ConfigHeader.Size + (ok ? (int)header.ConfigSize : 0));
        if (ok)
        {
            Wire.Write(reply, header);
            reply[ConfigHeader.Size..].Clear();
            ok = _device.ReadConfig(header.Offset, reply[ConfigHeader.Size..]);
        }
        if (!ok)
        {
            // The spec's error answer: a reply with an empty payload.
            _log.Warning("vhost-user: refused GET_CONFIG offset {Offset} size {Size}", header.Offset, header.ConfigSize);
            _channel.SendReply(request, default);
            return;
        }
        _channel.SendReply(request, reply);
    }

    private string? SetConfig(VhostUserMessage message)
    {
        if (!Negotiated(VhostUserProtocolFeatures.Config))
        {
            return "CONFIG was not negotiated";
        }
        var header = message.Read<ConfigHeader>();
        if (header.ConfigSize == 0 || message.Payload.Length != ConfigHeader.Size + header.ConfigSize)
        {
            return $"SET_CONFIG size {header.ConfigSize} does not match its {message.Payload.Length}-byte payload";
        }
        if (header.Flags > ConfigHeader.FlagLiveMigration)
        {
            return $"SET_CONFIG flags {header.Flags} unknown";
        }
        return _device.WriteConfig(header.Offset, message.Payload[ConfigHeader.Size..], header.Flags)
            ? null
            : $"the device refused a config write at offset {header.Offset} size {header.ConfigSize}";
    }

    private void OnRingBroken(Vring ring)
    {
        // virtio: the device tells the driver it needs a reset (visible through GET_STATUS).
        _needsReset = true;
    }

    private void Shutdown()
    {
        if (Interlocked.Exchange(ref _shutDown, 1) != 0)
        {
            return;
        }
        foreach (var ring in _vrings)
        {
            ring.Dispose();
        }
        try
        {
            _device.Reset();
        }
        catch (Exception e)
        {
            _log.Error(e, "vhost-user: the device failed to reset at the end of the session");
        }
        _memory.Dispose();
        _backendChannel?.Dispose();
        _backendChannel = null;
        _message.CloseFds();
        _channel.Dispose();
    }

    /// <summary>Ends the session from another thread: the loop sees the connection close.</summary>
    public void RequestStop() => _channel.Socket.ShutdownBoth();

    public void Dispose() => Shutdown();
}
