using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using Vhostfsd.FusePassthrough;
using Vhostfsd.FusePassthrough.Protocol;
using Vhostfsd.Posix;
using Vhostfsd.VhostUser;
using Vhostfsd.Virtqueue;

namespace Vhostfsd.GuestKernelShim.Tests;

/// <summary>A vhost-user-fs device for the shim's transport tests: the VhostUser back-end with FuseServer
/// behind every queue, a config space (tag, num_request_queues), a record of which queue carried which
/// request, and a hook that holds chains instead of answering them (to fill queues, or to answer by hand).</summary>
public sealed unsafe class TestFsDevice : IVhostUserDevice, IDisposable
{
    private readonly FuseServer _server;
    private readonly VirtioFsConfig _config;
    private readonly UnixSocket _listener;
    private readonly Thread _thread;
    private readonly Handler[] _handlers;
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

    /// <summary>Chains matching this are kept, not answered, until <see cref="AnswerHeld"/>.</summary>
    public Func<int, FuseOpcode, bool>? Hold { get; set; }

    private readonly ConcurrentQueue<(Vring Ring, DescriptorChain Chain, ulong Unique)> _held = new();

    public int HeldCount => _held.Count;

    private void Serve()
    {
        try
        {
            _connection = _listener.Accept();
            _backend = new VhostUserBackend(_connection, this);
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
            uint length = error is int e ? WriteError(held.Chain, held.Unique, e) : (uint)Handle(held.Chain);
            held.Ring.Complete(held.Chain, length);
        }
    }

    /// <summary>Answers the held chains with a fuse_out_header made from their unique (a hostile daemon's reply).</summary>
    public void AnswerHeldWith(Func<ulong, FuseOutHeader> header)
    {
        while (_held.TryDequeue(out var held))
        {
            held.Ring.Complete(held.Chain, WriteHeader(held.Chain, header(held.Unique)));
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

    private int Handle(DescriptorChain chain) => _server.HandleRequest(chain.Readable, chain.Writable);

    private sealed class Handler : IVringHandler
    {
        private readonly TestFsDevice _device;
        private readonly int _index;

        public Handler(TestFsDevice device, int index)
        {
            _device = device;
            _index = index;
        }

        public void HandleChain(Vring vring, DescriptorChain chain)
        {
            var readable = chain.Readable;
            FuseInHeader header = default;
            if (readable.Length > 0 && readable[0].Length >= (nuint)FuseInHeader.Size)
            {
                // SAFETY: the first readable segment holds at least the in-header (checked above).
                header = MemoryMarshal.Read<FuseInHeader>(new ReadOnlySpan<byte>(readable[0].Base, FuseInHeader.Size));
            }
            var opcode = (FuseOpcode)header.Opcode;
            _device.Seen.Enqueue((_index, opcode, header.Unique));
            if (_device.Hold?.Invoke(_index, opcode) == true)
            {
                _device._held.Enqueue((vring, chain, header.Unique));
                return;
            }
            vring.Complete(chain, (uint)_device.Handle(chain));
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
