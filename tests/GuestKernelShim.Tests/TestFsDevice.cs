using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using Vhostfsd.FusePassthrough;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Logging;
using Vhostfsd.Posix;
using Vhostfsd.VhostUser;
using Vhostfsd.Virtqueue;

namespace Vhostfsd.GuestKernelShim.Tests;

/// <summary>A vhost-user-fs device for the shim's transport tests: the VhostUser back-end with FuseServer
/// behind every queue, a config space (tag, num_request_queues), a record of which queue carried which
/// request (with its buffer sizes and first argument bytes), which vhost-user requests the front-end sent, and a
/// hook that holds chains instead of answering them (to fill queues, or to answer by hand).</summary>
public sealed unsafe class TestFsDevice : IVhostUserDevice, IDisposable
{
    private readonly FuseServer _server;
    private readonly VirtioFsConfig _config;
    private readonly UnixSocket _listener;
    private readonly Thread _thread;
    private readonly Handler[] _handlers;
    private readonly Logger _log;
    private VhostUserBackend? _backend;
    private UnixSocket? _connection;

    public TestFsDevice(int requestQueues, string? tag = "testfs", ushort maxQueueSize = 1024)
    {
        Dir = Directory.CreateTempSubdirectory("shim-dev-").FullName;
        RunDir = Directory.CreateTempSubdirectory("shim-dev-run-").FullName;
        SocketPath = Path.Combine(RunDir, "dev.sock");
        _server = new FuseServer(new PassthroughOptions { SharedDir = Dir });
        QueueCount = 1 + requestQueues;
        MaxQueueSize = maxQueueSize;
        OffersConfig = tag != null;
        _config = tag != null ? VirtioFsConfig.Create(tag, (uint)requestQueues) : default;
        _handlers = new Handler[QueueCount];
        for (int i = 0; i < QueueCount; i++)
        {
            _handlers[i] = new Handler(this, i);
        }
        // The back-end logs each front-end message at Debug: that log is how the device sees GET_VRING_BASE.
        _log = new Logger(LogEventLevel.Debug, new ControlRequestSink(this));
        _listener = UnixSocket.Listen(SocketPath);
        _thread = new Thread(Serve) { IsBackground = true, Name = "test-fs-device" };
        _thread.Start();
    }

    public string Dir { get; }
    public string RunDir { get; }
    public string SocketPath { get; }
    public FuseServer Server => _server;

    public int QueueCount { get; }
    public ushort MaxQueueSize { get; }
    public ulong DeviceFeatures => 0;
    public bool OffersConfig { get; }

    /// <summary>(queue, opcode, unique) of every chain seen, in order per queue.</summary>
    public ConcurrentQueue<(int Queue, FuseOpcode Opcode, ulong Unique)> Seen { get; } = new();

    /// <summary>A chain as the device received it: its queue, opcode and unique, the bytes it lets the device read
    /// and write (all segments), and up to <see cref="ArgsRecorded"/> bytes of its arguments (after fuse_in_header).
    /// <see cref="ReadableSegments"/> and <see cref="WritableSegments"/> are the chain's buffers as guest-physical ranges
    /// (translated back from the device's mapping), so a test can see which guest memory the driver offered.</summary>
    public readonly record struct SeenChain(int Queue, FuseOpcode Opcode, ulong Unique, ulong ReadableBytes, ulong WritableBytes, byte[] Args,
        (ulong Gpa, ulong Length)[] ReadableSegments, (ulong Gpa, ulong Length)[] WritableSegments);

    /// <summary>Argument bytes kept per <see cref="SeenChain"/>.</summary>
    public const int ArgsRecorded = 256;

    /// <summary>Every chain seen, with its sizes, in order per queue.</summary>
    public ConcurrentQueue<SeenChain> Chains { get; } = new();

    /// <summary>Front-end requests (SET_MEM_TABLE, GET_VRING_BASE, ...) in the order the back-end received them.</summary>
    public ConcurrentQueue<VhostUserRequest> ControlRequests { get; } = new();

    /// <summary>How many <paramref name="request"/> messages the front-end sent.</summary>
    public int ControlRequestCount(VhostUserRequest request) => ControlRequests.Count(r => r == request);

    /// <summary>The vhost-user session is running (the front-end has not disconnected).</summary>
    public bool IsSessionActive => _backend != null && _thread.IsAlive;

    /// <summary>The back-end's ring <paramref name="index"/> is started (a GET_VRING_BASE stops it).</summary>
    public bool IsRingStarted(int index) => _backend?.Vrings[index].IsStarted ?? false;

    /// <summary>Chains matching this are kept, not answered, until <see cref="AnswerHeld"/>.</summary>
    public Func<int, FuseOpcode, bool>? Hold { get; set; }

    /// <summary>Held chains are handled by the server at once and only their completion waits for
    /// <see cref="AnswerHeld"/> (the answer is what the server said when the request arrived).</summary>
    public bool HoldAnswered { get; set; }

    private readonly ConcurrentQueue<(OwnedChain Owned, ulong Unique, uint? Answer)> _held = new();

    public int HeldCount => _held.Count;

    private void Serve()
    {
        try
        {
            _connection = _listener.Accept();
            _backend = new VhostUserBackend(_connection, this, log: _log);
            _backend.Run();
        }
        catch (Exception)
        {
            // The test closed the device.
        }
    }

    /// <summary>Answers the held chains: with <paramref name="error"/> when given, else through the server.</summary>
    public void AnswerHeld(int? error = null)
    {
        while (_held.TryDequeue(out var held))
        {
            uint length = held.Answer is uint answer ? answer
                : error is int e ? WriteError(held.Owned.Chain, held.Unique, e) : (uint)Handle(held.Owned.Chain);
            held.Owned.Complete(length);
        }
    }

    /// <summary>Answers the held chains with a fuse_out_header made from their unique (a hostile daemon's reply).</summary>
    public void AnswerHeldWith(Func<ulong, FuseOutHeader> header)
    {
        while (_held.TryDequeue(out var held))
        {
            held.Owned.Complete(WriteHeader(held.Owned.Chain, header(held.Unique)));
        }
    }

    private static uint WriteError(DescriptorChain chain, ulong unique, int error)
        => WriteHeader(chain, new FuseOutHeader { Len = FuseOutHeader.Size, Error = error, Unique = unique });

    private static uint WriteHeader(DescriptorChain chain, FuseOutHeader header)
    {
        var writable = chain.Writable;
        // SAFETY: the first writable segment of a FUSE chain holds at least fuse_out_header (checked here).
        if (writable.Length == 0 || writable[0].Length < FuseOutHeader.Size)
        {
            return 0;
        }
        MemoryMarshal.Write(new Span<byte>(writable[0].Base, FuseOutHeader.Size), in header);
        return FuseOutHeader.Size;
    }

    private int Handle(DescriptorChain chain)
    {
        var header = FuseRequestHeader.Read(chain.Readable);
        return _server.HandleRequest(in header, chain.Readable, chain.Writable);
    }

    private sealed class Handler : IVringHandler
    {
        private readonly TestFsDevice _device;
        private readonly int _index;

        public Handler(TestFsDevice device, int index)
        {
            _device = device;
            _index = index;
        }

        public void HandleChain(OwnedChain owned, RingBacklog backlog)
        {
            var chain = owned.Chain;
            var readable = chain.Readable;
            FuseInHeader header = default;
            if (readable.Length > 0 && readable[0].Length >= (nuint)FuseInHeader.Size)
            {
                // SAFETY: the first readable segment holds at least the in-header (checked above).
                header = MemoryMarshal.Read<FuseInHeader>(new ReadOnlySpan<byte>(readable[0].Base, FuseInHeader.Size));
            }
            var opcode = (FuseOpcode)header.Opcode;
            _device.Chains.Enqueue(new SeenChain(_index, opcode, header.Unique, chain.ReadableBytes, chain.WritableBytes, CopyArgs(readable),
                _device.ToGuestRanges(readable), _device.ToGuestRanges(chain.Writable)));
            _device.Seen.Enqueue((_index, opcode, header.Unique));
            if (_device.Hold?.Invoke(_index, opcode) == true)
            {
                uint? answer = _device.HoldAnswered ? (uint)_device.Handle(chain) : null;
                _device._held.Enqueue((owned, header.Unique, answer));
                return;
            }
            owned.Complete((uint)_device.Handle(chain));
        }
    }

    /// <summary>Each segment's guest-physical address: where its host pointer lies in the device's mapping of guest
    /// memory (ulong.MaxValue when in no region).</summary>
    private (ulong Gpa, ulong Length)[] ToGuestRanges(ReadOnlySpan<IoVec> segments)
    {
        var regions = _backend?.Memory.GetRegions() ?? [];
        var ranges = new (ulong Gpa, ulong Length)[segments.Length];
        for (int i = 0; i < segments.Length; i++)
        {
            ulong host = (ulong)segments[i].Base;
            ulong gpa = ulong.MaxValue;
            foreach (var region in regions)
            {
                ulong start = (ulong)region.HostAddress;
                if (host >= start && host - start < region.Size)
                {
                    gpa = region.GuestPhysAddr + (host - start);
                    break;
                }
            }
            ranges[i] = (gpa, segments[i].Length);
        }
        return ranges;
    }

    /// <summary>The first <see cref="ArgsRecorded"/> bytes after fuse_in_header, gathered across the readable segments.</summary>
    private static byte[] CopyArgs(ReadOnlySpan<IoVec> readable)
    {
        ulong total = 0;
        foreach (var segment in readable)
        {
            total += segment.Length;
        }
        if (total <= (ulong)FuseInHeader.Size)
        {
            return [];
        }
        var args = new byte[(int)Math.Min(total - (ulong)FuseInHeader.Size, (ulong)ArgsRecorded)];
        int skip = FuseInHeader.Size;
        int copied = 0;
        foreach (var segment in readable)
        {
            if (copied == args.Length)
            {
                break;
            }
            int length = (int)Math.Min(segment.Length, (nuint)int.MaxValue);
            if (skip >= length)
            {
                skip -= length;
                continue;
            }
            int take = Math.Min(length - skip, args.Length - copied);
            // SAFETY: [skip, skip + take) lies inside this segment of `length` bytes, which the back-end mapped.
            new ReadOnlySpan<byte>((byte*)segment.Base + skip, take).CopyTo(args.AsSpan(copied));
            copied += take;
            skip = 0;
        }
        return args;
    }

    /// <summary>Records the request of each front-end message the back-end logs.</summary>
    private sealed class ControlRequestSink : ILogEventSink
    {
        private readonly TestFsDevice _device;

        public ControlRequestSink(TestFsDevice device) => _device = device;

        public void Emit(LogEvent logEvent)
        {
            // Each message is logged once at Debug as "vhost-user: {Request} ...", Request = "GetVringBase (11)"
            // (a refused or failed one is logged again at Warning/Error: not counted twice).
            if (logEvent.Level == LogEventLevel.Debug && logEvent.MessageTemplate.StartsWith("vhost-user: {Request} ", StringComparison.Ordinal)
                && logEvent.Values is [string text, ..])
            {
                int space = text.IndexOf(' ');
                if (Enum.TryParse<VhostUserRequest>(space < 0 ? text : text[..space], out var request))
                {
                    _device.ControlRequests.Enqueue(request);
                }
            }
        }
    }

    public bool ReadConfig(uint offset, Span<byte> destination)
    {
        var bytes = MemoryMarshal.AsBytes(new ReadOnlySpan<VirtioFsConfig>(in _config));
        if (offset > bytes.Length || destination.Length > bytes.Length - offset)
        {
            return false;
        }
        bytes.Slice((int)offset, destination.Length).CopyTo(destination);
        return true;
    }

    public bool WriteConfig(uint offset, ReadOnlySpan<byte> source, uint flags) => false;

    public IVringHandler GetVringHandler(int queueIndex) => _handlers[queueIndex];

    public void Reset() => _server.Reset();

    /// <summary>Closes the device's end of the socket (as a daemon that dies).</summary>
    public void Disconnect()
    {
        _connection?.ShutdownBoth();
    }

    public void Dispose()
    {
        Disconnect();
        try
        {
            // Wakes an accept that never got a connection.
            _listener.ShutdownBoth();
        }
        catch (PosixException)
        {
        }
        _listener.Dispose();
        _thread.Join(TimeSpan.FromSeconds(10));
        _backend?.Dispose();
        _server.Dispose();
        _log.Dispose();
        try
        {
            Directory.Delete(Dir, true);
            Directory.Delete(RunDir, true);
        }
        catch (IOException)
        {
        }
    }
}
