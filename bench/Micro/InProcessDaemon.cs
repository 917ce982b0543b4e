using System.Runtime.InteropServices;
using Vhostfsd.Device;
using Vhostfsd.FusePassthrough;
using Vhostfsd.FuseProtocol;
using Vhostfsd.GuestKernelShim;
using Vhostfsd.Posix;
using Vhostfsd.VhostUser;

namespace Vhostfsd.Bench.Micro;

/// <summary>The whole request path in one process: vhostfsd's device (vhost-user back-end, ring workers, FUSE
/// server) on one end of a UNIX socket and the shim (vhost-user front-end, driver queues, FuseConn) on the other,
/// as the workload benchmark runs them in two processes. A round trip includes both wake-ups (kick, call), so
/// its time is dominated by them; its allocation count covers every thread of both sides.</summary>
public sealed class InProcessDaemon : IDisposable
{
    private readonly string _dir;
    private readonly string _socketDir;
    private readonly FuseServer _server;
    private readonly BlockingRequestPool _pool;
    private readonly Thread _serveThread;
    private readonly VirtioFsBackend _backend;
    private VhostUserBackend? _vhostBackend;

    public InProcessDaemon(int queues = 1)
    {
        _dir = Path.Combine("/dev/shm", "vhostfs-micro-rt-" + Environment.ProcessId + "-" + Guid.NewGuid().ToString("N")[..6]);
        Directory.CreateDirectory(_dir);
        File.WriteAllBytes(Path.Combine(_dir, "file"), new byte[64 * 1024]);
        _socketDir = Directory.CreateTempSubdirectory("vhostfs-micro-sock-").FullName;
        string socketPath = Path.Combine(_socketDir, "vfs.sock");
        _server = new FuseServer(new PassthroughOptions { SharedDir = _dir, Cache = CachePolicy.Never });
        _pool = new BlockingRequestPool(_server, 1);
        var device = new Vhostfsd.Device.VirtioFsDevice(_server, null, 16, _pool);
        var listener = UnixSocket.Listen(socketPath);
        _serveThread = new Thread(() =>
        {
            using var connection = listener.Accept();
            listener.Dispose();
            using var backend = new VhostUserBackend(connection, device, new VhostUserBackendOptions());
            _vhostBackend = backend;
            backend.Run();
        })
        { IsBackground = true, Name = "micro-daemon" };
        _serveThread.Start();
        _backend = VirtioFsBackend.Connect(socketPath, new VirtioFsBackendOptions { Register = false, NumRequestQueues = queues });
        Conn = new FuseConn(_backend);
        Conn.Init();

        FuseEntryOut entry = default;
        Check(Conn.Send(FuseOpcode.Lookup, 1, FuseCaller.Root, new FuseArgs("file\0"u8), MemoryMarshal.AsBytes(new Span<FuseEntryOut>(ref entry)), FuseReplyShape.Fixed));
        FileNode = entry.NodeId;
        var openIn = new FuseOpenIn { Flags = Libc.O_RDONLY };
        FuseOpenOut openOut = default;
        Check(Conn.Send(FuseOpcode.Open, FileNode, FuseCaller.Root, new FuseArgs(MemoryMarshal.AsBytes(new ReadOnlySpan<FuseOpenIn>(in openIn))),
            MemoryMarshal.AsBytes(new Span<FuseOpenOut>(ref openOut)), FuseReplyShape.Fixed));
        FileHandle = openOut.Fh;
    }

    public FuseConn Conn { get; }
    public ulong FileNode { get; }
    public ulong FileHandle { get; }

    private static void Check(FuseReply reply)
    {
        if (!reply.IsOk)
        {
            throw new InvalidOperationException($"request failed: {reply.Errno}");
        }
    }

    public int Getattr()
    {
        var input = new FuseGetattrIn();
        FuseAttrOut attr = default;
        return Conn.Send(FuseOpcode.Getattr, 1, FuseCaller.Root, new FuseArgs(MemoryMarshal.AsBytes(new ReadOnlySpan<FuseGetattrIn>(in input))),
            MemoryMarshal.AsBytes(new Span<FuseAttrOut>(ref attr)), FuseReplyShape.Fixed).Error;
    }

    public int Read(Span<byte> buffer)
    {
        var input = new FuseReadIn { Fh = FileHandle, Offset = 4096, Length = (uint)buffer.Length };
        return Conn.Send(FuseOpcode.Read, FileNode, FuseCaller.Root, new FuseArgs(MemoryMarshal.AsBytes(new ReadOnlySpan<FuseReadIn>(in input))),
            buffer, FuseReplyShape.Variable).Error;
    }

    public void Dispose()
    {
        Conn.Dispose();
        _backend.Dispose();
        _vhostBackend?.RequestStop();
        _serveThread.Join(TimeSpan.FromSeconds(10));
        _pool.Dispose();
        _server.Dispose();
        try
        {
            Directory.Delete(_dir, recursive: true);
            Directory.Delete(_socketDir, recursive: true);
        }
        catch (IOException)
        {
        }
    }
}
