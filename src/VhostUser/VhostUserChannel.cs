using Vhostfsd.Posix;

namespace Vhostfsd.VhostUser;

/// <summary>Message framing over a connected UNIX stream socket: header (+ fds), validation,
/// payload; and sending of requests and replies. Receiving is single-threaded (one loop reads);
/// sending is serialized by a lock so that a reply never interleaves with another message.</summary>
public sealed class VhostUserChannel : IDisposable
{
    private readonly UnixSocket _socket;
    private readonly object _sendLock = new();
    private readonly byte[] _sendBuffer = new byte[VhostUserHeader.Size + VhostUserLimits.MaxPayloadSize];
    private readonly byte[] _headerBuffer = new byte[VhostUserHeader.Size];

    public VhostUserChannel(UnixSocket socket)
    {
        _socket = socket;
    }

    public UnixSocket Socket => _socket;

    /// <summary>Receives one request from a front-end: header checks (version 1, no reply bit,
    /// no reserved bits, size within the bounds of the request), payload, fd rule. Returns false
    /// when the peer closed the connection between messages. Throws
    /// <see cref="VhostUserProtocolException"/> for anything malformed (the fds received so far are closed).</summary>
    public bool ReceiveRequest(VhostUserMessage message)
    {
        if (!ReceiveHeader(message))
        {
            return false;
        }
        try
        {
            var header = message.Header;
            if (header.IsReply)
            {
                throw new VhostUserProtocolException($"malformed header ({header}): the reply flag is set on a request");
            }
            var request = (VhostUserRequest)header.Request;
            var (min, max) = VhostUserMessageRules.PayloadBounds(request);
            if (header.PayloadSize < min || header.PayloadSize > max)
            {
                throw new VhostUserProtocolException(
                    $"malformed {Describe(header.Request)}: payload size {header.PayloadSize}, expected {min}..{max}");
            }
            ReceivePayload(message);
            string? fdProblem = VhostUserMessageRules.CheckFds(request, message.Payload, message.FdCount);
            if (fdProblem != null)
            {
                throw new VhostUserProtocolException("fd count mismatch: " + fdProblem);
            }
            return true;
        }
        catch
        {
            message.CloseFds();
            throw;
        }
    }

    /// <summary>Receives any message with only the general checks (version, reserved bits, size
    /// limit): the back-end request channel, or tools. False when the peer closed between messages.</summary>
    public bool ReceiveMessage(VhostUserMessage message)
    {
        if (!ReceiveHeader(message))
        {
            return false;
        }
        try
        {
            ReceivePayload(message);
            return true;
        }
        catch
        {
            message.CloseFds();
            throw;
        }
    }

    /// <summary>Receives the reply to <paramref name="request"/> (front-end side). Checks the
    /// reply flag, the request number and the general size limit.</summary>
    public void ReceiveReply(VhostUserMessage message, uint request)
    {
        if (!ReceiveHeader(message))
        {
            throw new VhostUserProtocolException($"the back-end closed the connection before replying to {Describe(request)}");
        }
        try
        {
            var header = message.Header;
            if (!header.IsReply || header.Request != request)
            {
                throw new VhostUserProtocolException($"expected a reply to {Describe(request)}, got {Describe(header.Request)} ({header})");
            }
            ReceivePayload(message);
        }
        catch
        {
            message.CloseFds();
            throw;
        }
    }

    private bool ReceiveHeader(VhostUserMessage message)
    {
        message.CloseFds();
        Span<byte> header = _headerBuffer;
        Span<int> fds = message.FdBuffer;
        int got = 0;
        int fdCount = 0;
        try
        {
            while (got < header.Length)
            {
                int n;
                bool truncated;
                int newFds;
                try
                {
                    n = _socket.Receive(header[got..], fds[fdCount..], out newFds, out truncated);
                }
                catch (PosixException e) when (e.Errno is Errno.ECONNRESET or Errno.EBADF or Errno.ENOTCONN)
                {
                    if (got == 0)
                    {
                        return false;
                    }
                    throw new VhostUserProtocolException($"connection lost inside a message header: {e.Message}", e);
                }
                fdCount += newFds;
                message.SetFdCount(fdCount);
                if (truncated)
                {
                    throw new VhostUserProtocolException($"more than {VhostUserLimits.MaxFds} fds arrived with one message");
                }
                if (n == 0)
                {
                    if (got == 0)
                    {
                        message.CloseFds();
                        return false;
                    }
                    throw new VhostUserProtocolException($"connection closed after {got} bytes of a message header");
                }
                got += n;
            }
            var parsed = VhostUserHeader.Read(header);
            message.Header = parsed;
            if (parsed.Version != 1 || parsed.HasReservedBits)
            {
                throw new VhostUserProtocolException($"malformed header ({parsed}): version must be 1 and reserved flag bits 0");
            }
            if (parsed.PayloadSize > VhostUserLimits.MaxPayloadSize)
            {
                throw new VhostUserProtocolException(
                    $"oversized payload ({parsed}): {Describe(parsed.Request)} declares {parsed.PayloadSize} bytes, the limit is {VhostUserLimits.MaxPayloadSize}");
            }
            return true;
        }
        catch
        {
            message.CloseFds();
            throw;
        }
    }

    private void ReceivePayload(VhostUserMessage message)
    {
        int size = (int)message.Header.PayloadSize;
        Span<byte> payload = message.PayloadBuffer[..size];
        Span<int> fds = message.FdBuffer;
        int got = 0;
        while (got < size)
        {
            int fdCount = message.FdCount;
            int n;
            try
            {
                n = _socket.Receive(payload[got..], fds[fdCount..], out int newFds, out bool truncated);
                message.SetFdCount(fdCount + newFds);
                if (truncated)
                {
                    throw new VhostUserProtocolException($"more than {VhostUserLimits.MaxFds} fds arrived with one message");
                }
            }
            catch (PosixException e)
            {
                throw new VhostUserProtocolException($"connection lost inside the payload of {Describe(message.Header.Request)}: {e.Message}", e);
            }
            if (n == 0)
            {
                throw new VhostUserProtocolException(
                    $"connection closed after {got} of {size} payload bytes of {Describe(message.Header.Request)}");
            }
            got += n;
        }
    }

    /// <summary>Sends one message (header, payload and fds in one sendmsg).</summary>
    public void Send(uint request, VhostUserHeaderFlags flags, ReadOnlySpan<byte> payload, ReadOnlySpan<int> fds = default)
    {
        if (payload.Length > VhostUserLimits.MaxPayloadSize)
        {
            throw new ArgumentException($"payload of {payload.Length} bytes exceeds {VhostUserLimits.MaxPayloadSize}", nameof(payload));
        }
        lock (_sendLock)
        {
            var header = new VhostUserHeader(request, flags | VhostUserHeaderFlags.Version1, (uint)payload.Length);
            Span<byte> buffer = _sendBuffer.AsSpan(0, VhostUserHeader.Size + payload.Length);
            header.Write(buffer);
            payload.CopyTo(buffer[VhostUserHeader.Size..]);
            _socket.Send(buffer, fds);
        }
    }

    /// <summary>Sends a message whose header is given verbatim (tests of malformed input).</summary>
    public void SendRaw(VhostUserHeader header, ReadOnlySpan<byte> payload, ReadOnlySpan<int> fds = default)
    {
        lock (_sendLock)
        {
            var buffer = new byte[VhostUserHeader.Size + payload.Length];
            header.Write(buffer);
            payload.CopyTo(buffer.AsSpan(VhostUserHeader.Size));
            _socket.Send(buffer, fds);
        }
    }

    /// <summary>Sends the reply to <paramref name="request"/> with <paramref name="payload"/>.</summary>
    public void SendReply(uint request, ReadOnlySpan<byte> payload) => Send(request, VhostUserHeaderFlags.Reply, payload);

    /// <summary>Sends a u64 reply (a value, or a REPLY_ACK status: 0 = success).</summary>
    public void SendReplyU64(uint request, ulong value) => SendReply(request, Wire.AsBytes(in value));

    /// <summary>"SET_MEM_TABLE (5)" or "request 99" for numbers the enum does not name.</summary>
    public static string Describe(uint request) =>
        Enum.IsDefined((VhostUserRequest)request) ? $"{(VhostUserRequest)request} ({request})" : $"request {request}";

    public void Dispose() => _socket.Dispose();
}
