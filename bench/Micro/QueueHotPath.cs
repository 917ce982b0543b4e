using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Vhostfsd.FusePassthrough;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Vhostfsd.Virtqueue;

namespace Vhostfsd.Bench.Micro;

/// <summary>The daemon's per-request work without any thread or notification: a split queue fabricated in memfd
/// guest memory (the tests' mock driver lays it out), requests pre-written as chains, and per request the driver
/// publishing an avail entry, then what a queue worker does — pop the chain (descriptor walk + address
/// translation), <see cref="FuseServer.HandleRequest"/> (FUSE decode, the syscall, the reply written into guest
/// memory), push the used element and decide on a notification.</summary>
public sealed unsafe class QueueHotPath : IDisposable
{
    public const ushort QueueSize = 256;
    private const int SlotBytes = 8192;

    private readonly QueueTestMemory _memory;
    private readonly QueueMockDriver _driver;
    private readonly DeviceQueue _queue;
    private readonly DescriptorChain _chain = new(64);
    private readonly FuseServer _server;
    private readonly string _dir;
    private readonly ushort* _availIdx;
    private readonly ushort* _availRing;
    private ushort _nextHead;
    private ulong _unique = 2;

    public QueueHotPath(InodeFileHandles fileHandles = InodeFileHandles.Never)
    {
        _dir = Path.Combine("/dev/shm", "vhostfs-micro-" + Environment.ProcessId + "-" + Guid.NewGuid().ToString("N")[..6]);
        Directory.CreateDirectory(_dir);
        File.WriteAllBytes(Path.Combine(_dir, "file"), new byte[64 * 1024]);
        _server = new FuseServer(new PassthroughOptions { SharedDir = _dir, Cache = CachePolicy.Never, InodeFileHandles = fileHandles });
        _memory = QueueTestMemory.Create(16UL << 20);
        _driver = new QueueMockDriver(_memory, QueueSize);
        _queue = _driver.CreateDeviceQueue(eventIdx: true, indirect: false);
        _availIdx = (ushort*)_memory.Host(_driver.AvailGpa + 2, 2);
        _availRing = (ushort*)_memory.Host(_driver.AvailGpa + 4, 2UL * QueueSize);

        var init = new FuseInitIn { Major = 7, Minor = FuseConstants.KernelMinorVersion, MaxReadahead = 128 * 1024, Flags = (uint)FuseInitFlags.MaxPages };
        Check(Process(Chain(FuseOpcode.Init, 0, Bytes(init))), "INIT");
        ushort lookup = Chain(FuseOpcode.Lookup, 1, "file\0"u8.ToArray());
        Check(Process(lookup), "LOOKUP");
        FileNode = _memory.ReadObj<FuseEntryOut>(ReplyGpa(lookup) + FuseOutHeader.Size).NodeId;
        ushort open = Chain(FuseOpcode.Open, FileNode, Bytes(new FuseOpenIn { Flags = Libc.O_RDONLY }));
        Check(Process(open), "OPEN");
        FileHandle = _memory.ReadObj<FuseOpenOut>(ReplyGpa(open) + FuseOutHeader.Size).Fh;

        GetattrRoot = Chain(FuseOpcode.Getattr, 1, Bytes(new FuseGetattrIn()));
        GetattrFile = Chain(FuseOpcode.Getattr, FileNode, Bytes(new FuseGetattrIn()));
        Unknown = Chain((FuseOpcode)9999, 1, []);
        Read4K = Chain(FuseOpcode.Read, FileNode, Bytes(new FuseReadIn { Fh = FileHandle, Offset = 4096, Length = 4096 }), replyBytes: 4096);
        LookupFile = Chain(FuseOpcode.Lookup, 1, "file\0"u8.ToArray());
        Forget = Chain(FuseOpcode.Forget, FileNode, Bytes(new FuseForgetIn { Nlookup = 1 }), replyBytes: -1);
    }

    public ulong FileNode { get; }
    public ulong FileHandle { get; }

    /// <summary>Chain heads of the prepared requests.</summary>
    public ushort GetattrRoot { get; }
    public ushort GetattrFile { get; }
    public ushort Unknown { get; }
    public ushort Read4K { get; }
    public ushort LookupFile { get; }
    public ushort Forget { get; }

    private static byte[] Bytes<T>(T value) where T : unmanaged => MemoryMarshal.AsBytes(new ReadOnlySpan<T>(in value)).ToArray();

    private ulong ReplyGpa(ushort head) => _slots[head / 2].Reply;

    private readonly List<(ulong Request, ulong Reply)> _slots = new();

    /// <summary>Writes one request as a two-descriptor chain (request readable, reply writable) and returns its head.
    /// <paramref name="replyBytes"/> -1: no reply buffer (FORGET).</summary>
    private ushort Chain(FuseOpcode opcode, ulong node, byte[] args, int replyBytes = 256)
    {
        ushort head = _nextHead;
        _nextHead += 2;
        ulong request = _driver.AllocBuffer(SlotBytes / 2, 64);
        ulong reply = _driver.AllocBuffer(SlotBytes, 64);
        _slots.Add((request, reply));
        var header = new FuseInHeader { Len = (uint)(FuseInHeader.Size + args.Length), Opcode = (uint)opcode, Unique = _unique += 2, NodeId = node };
        _memory.WriteObj(request, header);
        _memory.Write(request + FuseInHeader.Size, args);
        if (replyBytes < 0)
        {
            _driver.WriteChain(head, [new VirtqDesc(request, header.Len, 0, 0)]);
        }
        else
        {
            _driver.WriteChain(head, [new VirtqDesc(request, header.Len, 0, 0), new VirtqDesc(reply, (uint)(FuseOutHeader.Size + replyBytes), VirtqDesc.FlagWrite, 0)]);
        }
        return head;
    }

    private void Check(int written, string what)
    {
        if (written < FuseOutHeader.Size)
        {
            throw new InvalidOperationException($"{what}: the server wrote {written} bytes");
        }
    }

    /// <summary>One request: the driver publishes <paramref name="head"/>, the device pops, serves and completes it.
    /// Returns the bytes the server wrote.</summary>
    [MethodImpl(MethodImplOptions.AggressiveInlining)]
    public int Process(ushort head)
    {
        // Driver side: avail ring entry, then the index (release).
        ushort idx = *_availIdx;
        _availRing[idx & (QueueSize - 1)] = head;
        Volatile.Write(ref *_availIdx, (ushort)(idx + 1));

        // Device side, as the queue worker does it.
        if (_queue.TryPop(_chain) != PopResult.Popped)
        {
            throw new InvalidOperationException($"pop failed: {_chain.Error}");
        }
        var header = FuseRequestHeader.Read(_chain.Readable);
        FuseServer.Triage(in header, int.MaxValue);
        int written = _server.HandleRequest(in header, _chain.Readable, _chain.Writable);
        _queue.PushUsed(_chain.Head, (uint)written);
        _queue.NeedsNotification();
        _chain.Release();
        return written;
    }

    public void Dispose()
    {
        _server.Dispose();
        _memory.Dispose();
        try
        {
            Directory.Delete(_dir, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
