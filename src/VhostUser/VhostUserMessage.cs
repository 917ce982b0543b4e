using Vhostfsd.Posix;

namespace Vhostfsd.VhostUser;

/// <summary>A fault in the framing or the sequence of messages that ends the session: the
/// back-end's loop catches it at the top, logs one line and closes the connection.</summary>
public sealed class VhostUserProtocolException : Exception
{
    public VhostUserProtocolException(string message) : base(message)
    {
    }

    public VhostUserProtocolException(string message, Exception inner) : base(message, inner)
    {
    }
}

/// <summary>A failure reported by the peer (a non-zero REPLY_ACK, or an error-shaped reply).</summary>
public sealed class VhostUserRequestFailedException : Exception
{
    public VhostUserRequestFailedException(VhostUserRequest request, ulong code)
        : base($"{request} failed: the back-end acknowledged with 0x{code:x}")
    {
        Request = request;
        Code = code;
    }

    public VhostUserRequestFailedException(VhostUserRequest request, string message) : base($"{request} failed: {message}")
    {
        Request = request;
    }

    public VhostUserRequest Request { get; }
    public ulong Code { get; }
}

/// <summary>One received message: header, payload (in a reused buffer) and the fds that came
/// with it. The receiver owns the fds: a handler takes the ones it keeps with <see cref="TakeFd"/>,
/// and <see cref="CloseFds"/> closes the rest once the message is handled.</summary>
public sealed class VhostUserMessage
{
    private readonly byte[] _payload = new byte[VhostUserLimits.MaxPayloadSize];
    private readonly int[] _fds = new int[VhostUserLimits.MaxFds];
    private int _fdCount;

    public VhostUserHeader Header;

    public VhostUserRequest Request => (VhostUserRequest)Header.Request;

    public ReadOnlySpan<byte> Payload => _payload.AsSpan(0, (int)Header.PayloadSize);

    internal Span<byte> PayloadBuffer => _payload;

    internal Span<int> FdBuffer => _fds;

    public int FdCount => _fdCount;

    internal void SetFdCount(int count) => _fdCount = count;

    /// <summary>The payload read as <typeparamref name="T"/>; the caller checked the size.</summary>
    public T Read<T>(int offset = 0) where T : unmanaged => Wire.Read<T>(Payload[offset..]);

    /// <summary>Transfers ownership of fd <paramref name="index"/> to the caller.</summary>
    public SafeFd TakeFd(int index)
    {
        if ((uint)index >= (uint)_fdCount || _fds[index] < 0)
        {
            throw new InvalidOperationException($"fd {index} of {_fdCount} is not available");
        }
        int fd = _fds[index];
        _fds[index] = -1;
        return new SafeFd(fd);
    }

    /// <summary>Closes every fd not taken.</summary>
    public void CloseFds()
    {
        for (int i = 0; i < _fdCount; i++)
        {
            if (_fds[i] >= 0)
            {
                Libc.Close(_fds[i]);
                _fds[i] = -1;
            }
        }
        _fdCount = 0;
    }
}

/// <summary>What a request may carry: payload size bounds and the fd rule checked before any
/// handler runs (rust-vmm's message validation, done once, in one place).</summary>
public static class VhostUserMessageRules
{
    /// <summary>Payload bounds of a request this implementation knows. For requests it knows but
    /// does not handle, only the general maximum applies.</summary>
    public static (int Min, int Max) PayloadBounds(VhostUserRequest request) => request switch
    {
        VhostUserRequest.GetFeatures => (0, 0),
        VhostUserRequest.SetFeatures => (8, 8),
        VhostUserRequest.SetOwner => (0, 0),
        VhostUserRequest.ResetOwner => (0, 0),
        VhostUserRequest.SetMemTable => (MemoryTable.PayloadSize(1), MemoryTable.Size),
        VhostUserRequest.SetVringNum => (VringState.Size, VringState.Size),
        VhostUserRequest.SetVringAddr => (VringAddress.Size, VringAddress.Size),
        VhostUserRequest.SetVringBase => (VringState.Size, VringState.Size),
        VhostUserRequest.GetVringBase => (VringState.Size, VringState.Size),
        VhostUserRequest.SetVringKick => (8, 8),
        VhostUserRequest.SetVringCall => (8, 8),
        VhostUserRequest.SetVringErr => (8, 8),
        VhostUserRequest.GetProtocolFeatures => (0, 0),
        VhostUserRequest.SetProtocolFeatures => (8, 8),
        VhostUserRequest.GetQueueNum => (0, 0),
        VhostUserRequest.SetVringEnable => (VringState.Size, VringState.Size),
        VhostUserRequest.SetBackendReqFd => (0, 0),
        VhostUserRequest.GetConfig => (ConfigHeader.Size, ConfigHeader.Size + VhostUserLimits.MaxConfigSize),
        VhostUserRequest.SetConfig => (ConfigHeader.Size, ConfigHeader.Size + VhostUserLimits.MaxConfigSize),
        VhostUserRequest.ResetDevice => (0, 0),
        VhostUserRequest.GetMaxMemSlots => (0, 0),
        VhostUserRequest.AddMemReg => (SingleMemoryRegion.Size, SingleMemoryRegion.Size),
        VhostUserRequest.RemMemReg => (SingleMemoryRegion.Size, SingleMemoryRegion.Size),
        VhostUserRequest.SetStatus => (8, 8),
        VhostUserRequest.GetStatus => (0, 0),
        _ => (0, VhostUserLimits.MaxPayloadSize),
    };

    /// <summary>True for the requests whose reply exists without REPLY_ACK (the spec's
    /// "Communication" list plus the GET requests with a reply payload): they never get an extra ack.</summary>
    public static bool HasOwnReply(VhostUserRequest request) => request switch
    {
        VhostUserRequest.GetFeatures or VhostUserRequest.GetProtocolFeatures or VhostUserRequest.GetVringBase
            or VhostUserRequest.GetQueueNum or VhostUserRequest.GetConfig or VhostUserRequest.GetMaxMemSlots
            or VhostUserRequest.GetStatus or VhostUserRequest.GetInflightFd or VhostUserRequest.IotlbMsg
            or VhostUserRequest.PostcopyAdvise or VhostUserRequest.PostcopyEnd or VhostUserRequest.CreateCryptoSession
            or VhostUserRequest.GetSharedObject or VhostUserRequest.SetDeviceStateFd
            or VhostUserRequest.CheckDeviceState or VhostUserRequest.GetShmemConfig => true,
        _ => false,
    };

    /// <summary>Checks the fds against what the request requires; returns null when they fit or
    /// the reason they do not. Requests this back-end does not handle may carry fds (they are closed).</summary>
    public static string? CheckFds(VhostUserRequest request, ReadOnlySpan<byte> payload, int fdCount)
    {
        switch (request)
        {
            case VhostUserRequest.SetMemTable:
            {
                uint regions = Wire.Read<MemoryTableHeader>(payload).NumRegions;
                if (regions == 0 || regions > VhostUserLimits.MaxMemTableRegions)
                {
                    return $"SET_MEM_TABLE with {regions} regions (1..{VhostUserLimits.MaxMemTableRegions})";
                }
                if (payload.Length < MemoryTable.PayloadSize((int)regions))
                {
                    return $"SET_MEM_TABLE with {regions} regions in a {payload.Length}-byte payload";
                }
                return fdCount == regions ? null : $"SET_MEM_TABLE with {regions} regions and {fdCount} fds";
            }
            case VhostUserRequest.AddMemReg:
            case VhostUserRequest.SetBackendReqFd:
                return fdCount == 1 ? null : $"{request} needs exactly 1 fd, got {fdCount}";
            case VhostUserRequest.RemMemReg:
                // The spec tolerates one stray fd here for old front-ends; it is closed unused.
                return fdCount <= 1 ? null : $"REM_MEM_REG with {fdCount} fds";
            case VhostUserRequest.SetVringKick:
            case VhostUserRequest.SetVringCall:
            case VhostUserRequest.SetVringErr:
            {
                ulong value = Wire.Read<ulong>(payload);
                int expected = (value & VhostUserLimits.VringNoFdFlag) != 0 ? 0 : 1;
                return fdCount == expected ? null : $"{request} 0x{value:x} needs {expected} fd(s), got {fdCount}";
            }
            case VhostUserRequest.GetFeatures:
            case VhostUserRequest.SetFeatures:
            case VhostUserRequest.SetOwner:
            case VhostUserRequest.ResetOwner:
            case VhostUserRequest.SetVringNum:
            case VhostUserRequest.SetVringAddr:
            case VhostUserRequest.SetVringBase:
            case VhostUserRequest.GetVringBase:
            case VhostUserRequest.GetProtocolFeatures:
            case VhostUserRequest.SetProtocolFeatures:
            case VhostUserRequest.GetQueueNum:
            case VhostUserRequest.SetVringEnable:
            case VhostUserRequest.GetConfig:
            case VhostUserRequest.SetConfig:
            case VhostUserRequest.ResetDevice:
            case VhostUserRequest.GetMaxMemSlots:
            case VhostUserRequest.SetStatus:
            case VhostUserRequest.GetStatus:
                return fdCount == 0 ? null : $"{request} carries {fdCount} fd(s) but takes none";
            default:
                return null;
        }
    }
}
