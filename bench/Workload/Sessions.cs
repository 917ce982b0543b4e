using System.Runtime.InteropServices;
using Vhostfsd.FuseProtocol;
using Vhostfsd.GuestKernelShim;
using Vhostfsd.Posix;

namespace Vhostfsd.Bench;

/// <summary>A request the daemon refused, or a syscall that failed: the cell is aborted with this message.</summary>
public sealed class BenchFailure : Exception
{
    public BenchFailure(string message)
        : base(message)
    {
    }
}

/// <summary>Typed FUSE requests on the shim's <see cref="FuseConn"/>, below the shim's mount layer: no dentry or
/// attribute cache exists at this level, so every call is one request to the daemon (as a guest with
/// cache=none, whose entry and attribute timeouts are 0, sends them). Nothing here allocates.</summary>
public sealed class FuseOps
{
    public const ulong RootNode = 1;

    private readonly FuseConn _conn;
    private readonly FuseCaller _caller = FuseCaller.Root;

    public FuseOps(FuseConn conn)
    {
        _conn = conn;
    }

    private static void Check(FuseReply reply, FuseOpcode opcode)
    {
        if (!reply.IsOk)
        {
            throw new BenchFailure($"{opcode} failed: {reply.Errno}");
        }
    }

    public FuseEntryOut Lookup(ulong parent, ReadOnlySpan<byte> nameWithNul)
    {
        FuseEntryOut entry = default;
        var reply = _conn.Send(FuseOpcode.Lookup, parent, _caller, new FuseArgs(nameWithNul),
            MemoryMarshal.AsBytes(new Span<FuseEntryOut>(ref entry)), FuseReplyShape.Fixed);
        Check(reply, FuseOpcode.Lookup);
        return entry;
    }

    public FuseAttrOut GetAttr(ulong node)
    {
        var input = new FuseGetattrIn();
        FuseAttrOut attr = default;
        var reply = _conn.Send(FuseOpcode.Getattr, node, _caller, new FuseArgs(MemoryMarshal.AsBytes(new ReadOnlySpan<FuseGetattrIn>(in input))),
            MemoryMarshal.AsBytes(new Span<FuseAttrOut>(ref attr)), FuseReplyShape.Fixed);
        Check(reply, FuseOpcode.Getattr);
        return attr;
    }

    public ulong Open(ulong node, int flags, bool directory = false)
    {
        var input = new FuseOpenIn { Flags = (uint)flags };
        FuseOpenOut output = default;
        var opcode = directory ? FuseOpcode.Opendir : FuseOpcode.Open;
        var reply = _conn.Send(opcode, node, _caller, new FuseArgs(MemoryMarshal.AsBytes(new ReadOnlySpan<FuseOpenIn>(in input))),
            MemoryMarshal.AsBytes(new Span<FuseOpenOut>(ref output)), FuseReplyShape.Fixed);
        Check(reply, opcode);
        return output.Fh;
    }

    public void Release(ulong node, ulong fh, int flags, bool directory = false)
    {
        var input = new FuseReleaseIn { Fh = fh, Flags = (uint)flags };
        var opcode = directory ? FuseOpcode.Releasedir : FuseOpcode.Release;
        var reply = _conn.Send(opcode, node, _caller, new FuseArgs(MemoryMarshal.AsBytes(new ReadOnlySpan<FuseReleaseIn>(in input))),
            Span<byte>.Empty, FuseReplyShape.Fixed);
        Check(reply, opcode);
    }

    /// <summary>READ of buffer.Length bytes at <paramref name="offset"/>; the bytes read.</summary>
    public int Read(ulong node, ulong fh, long offset, Span<byte> buffer)
    {
        var input = new FuseReadIn { Fh = fh, Offset = (ulong)offset, Length = (uint)buffer.Length, Flags = Libc.O_RDONLY };
        var reply = _conn.Send(FuseOpcode.Read, node, _caller, new FuseArgs(MemoryMarshal.AsBytes(new ReadOnlySpan<FuseReadIn>(in input))),
            buffer, FuseReplyShape.Variable);
        Check(reply, FuseOpcode.Read);
        return reply.Length;
    }

    /// <summary>WRITE of <paramref name="data"/> at <paramref name="offset"/>; the bytes written.</summary>
    public int Write(ulong node, ulong fh, long offset, ReadOnlySpan<byte> data, int openFlags)
    {
        var input = new FuseWriteIn { Fh = fh, Offset = (ulong)offset, Length = (uint)data.Length, Flags = (uint)openFlags };
        FuseWriteOut output = default;
        var reply = _conn.Send(FuseOpcode.Write, node, _caller, new FuseArgs(MemoryMarshal.AsBytes(new ReadOnlySpan<FuseWriteIn>(in input)), data),
            MemoryMarshal.AsBytes(new Span<FuseWriteOut>(ref output)), FuseReplyShape.Fixed);
        Check(reply, FuseOpcode.Write);
        return (int)output.Length;
    }

    /// <summary>A buffer in guest memory (a guest process's own pages) for direct I/O: READ and WRITE with it carry no
    /// copy in the shim, as a Linux guest with cache=none pins the caller's pages into the request.</summary>
    public GuestBuffer AllocateUserBuffer(int bytes) => _conn.AllocateUserBuffer(bytes);

    /// <summary>READ of <paramref name="length"/> bytes at <paramref name="offset"/> straight into <paramref name="buffer"/>; the bytes read.</summary>
    public int Read(ulong node, ulong fh, long offset, GuestBuffer buffer, int length)
    {
        var reply = _conn.Read(node, fh, offset, buffer, 0, length, _caller, Libc.O_RDONLY);
        Check(reply, FuseOpcode.Read);
        return reply.Length;
    }

    /// <summary>WRITE of the first <paramref name="length"/> bytes of <paramref name="buffer"/> at <paramref name="offset"/>,
    /// the daemon reading them from the buffer; the bytes written.</summary>
    public int Write(ulong node, ulong fh, long offset, GuestBuffer buffer, int length, int openFlags)
    {
        var reply = _conn.Write(node, fh, offset, buffer, 0, length, _caller, out int written, (uint)openFlags);
        Check(reply, FuseOpcode.Write);
        return written;
    }

    /// <summary>CREATE: the new entry and its open handle.</summary>
    public (FuseEntryOut Entry, ulong Fh) Create(ulong parent, ReadOnlySpan<byte> nameWithNul, int flags, uint mode)
    {
        var input = new FuseCreateIn { Flags = (uint)flags, Mode = mode, Umask = 0x12 };
        CreateReply output = default;
        var reply = _conn.Send(FuseOpcode.Create, parent, _caller,
            new FuseArgs(MemoryMarshal.AsBytes(new ReadOnlySpan<FuseCreateIn>(in input)), nameWithNul),
            MemoryMarshal.AsBytes(new Span<CreateReply>(ref output)), FuseReplyShape.Fixed);
        Check(reply, FuseOpcode.Create);
        return (output.Entry, output.Open.Fh);
    }

    public void Unlink(ulong parent, ReadOnlySpan<byte> nameWithNul)
    {
        var reply = _conn.Send(FuseOpcode.Unlink, parent, _caller, new FuseArgs(nameWithNul), Span<byte>.Empty, FuseReplyShape.Fixed);
        Check(reply, FuseOpcode.Unlink);
    }

    /// <summary>READDIR or READDIRPLUS into <paramref name="buffer"/>; the reply length (0 at the end), or a
    /// negative errno for ENOSYS (so the caller can fall back).</summary>
    public int ReadDir(ulong node, ulong fh, ulong offset, Span<byte> buffer, bool plus)
    {
        var input = new FuseReadIn { Fh = fh, Offset = offset, Length = (uint)buffer.Length };
        var opcode = plus ? FuseOpcode.Readdirplus : FuseOpcode.Readdir;
        var reply = _conn.Send(opcode, node, _caller, new FuseArgs(MemoryMarshal.AsBytes(new ReadOnlySpan<FuseReadIn>(in input))),
            buffer, FuseReplyShape.Variable);
        if (reply.Errno == Errno.ENOSYS)
        {
            return reply.Error;
        }
        Check(reply, opcode);
        return reply.Length;
    }

    /// <summary>The kernel forgets a looked-up inode (a dropped dentry): FORGET on the hiprio queue.</summary>
    public void Forget(ulong node, ulong count) => _conn.QueueForget(node, count);

    [StructLayout(LayoutKind.Sequential)]
    private struct CreateReply
    {
        public FuseEntryOut Entry;
        public FuseOpenOut Open;
    }
}

/// <summary>The shim connected to one daemon: the virtio-fs device with the requested number of request queues,
/// an initialised FUSE connection, and the node ids of the dataset's directories and files.</summary>
public sealed class FuseSession : IDisposable
{
    private readonly VirtioFsBackend _backend;
    private readonly FuseConn _conn;

    private FuseSession(VirtioFsBackend backend, FuseConn conn, FuseFs? fs, Dataset dataset)
    {
        InitDoneTimestamp = System.Diagnostics.Stopwatch.GetTimestamp();
        _backend = backend;
        _conn = conn;
        Fs = fs;
        Ops = new FuseOps(conn);
        Dataset = dataset;
        ulong treeNode = Ops.Lookup(FuseOps.RootNode, Dataset.TreeName).NodeId;
        DirNodes = new ulong[dataset.Shape.TreeDirs];
        for (int d = 0; d < DirNodes.Length; d++)
        {
            DirNodes[d] = Ops.Lookup(treeNode, dataset.DirNames[d]).NodeId;
        }
        FlatNode = Ops.Lookup(FuseOps.RootNode, Dataset.FlatName).NodeId;
        BigNode = Ops.Lookup(FuseOps.RootNode, Dataset.BigName).NodeId;
        SmallNode = Ops.Lookup(FuseOps.RootNode, Dataset.SmallName).NodeId;
    }

    public FuseOps Ops { get; }
    public Dataset Dataset { get; }

    /// <summary>The shim's mount (page cache and all), for the cached workloads; null when the session drives the
    /// connection directly.</summary>
    public FuseFs? Fs { get; }

    /// <summary>When INIT was answered.</summary>
    public long InitDoneTimestamp { get; }

    /// <summary>Milliseconds from the timestamp <paramref name="start"/> to INIT answered.</summary>
    public double ReadyAfter(long start) => (InitDoneTimestamp - start) * 1000.0 / System.Diagnostics.Stopwatch.Frequency;
    public ulong[] DirNodes { get; }
    public ulong FlatNode { get; }
    public ulong BigNode { get; }
    public ulong SmallNode { get; }

    /// <summary>Request queues the device really has (the daemon may offer fewer than asked).</summary>
    public int Queues => _backend.NumRequestQueues;

    /// <summary>Largest READ / WRITE payload the connection allows.</summary>
    public int MaxRead => _conn.MaxReadSize;
    public int MaxWrite => _conn.MaxWriteSize;

    public bool ReaddirplusGranted => _conn.Has(FuseInitFlags.DoReaddirplus);

    /// <summary>Connects with <paramref name="queues"/> request queues; with <paramref name="mount"/>, through a
    /// <see cref="FuseFs"/> mounted with those options (the cached workloads), else on the bare connection.</summary>
    public static FuseSession Connect(string socket, int queues, Dataset dataset, MountOptions? mount = null)
    {
        var backend = VirtioFsBackend.Connect(socket, new VirtioFsBackendOptions
        {
            Register = false,
            NumRequestQueues = queues,
            QueueSize = 1024,
            MemorySize = 256UL << 20,
        });
        FuseConn? conn = null;
        FuseFs? fs = null;
        try
        {
            if (mount != null)
            {
                fs = FuseFs.Mount(backend, mount);
                conn = fs.Conn;
            }
            else
            {
                conn = new FuseConn(backend, new FuseConnOptions());
                conn.Init();
            }
            return new FuseSession(backend, conn, fs, dataset);
        }
        catch
        {
            fs?.Dispose();
            conn?.Dispose();
            backend.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        Fs?.Dispose();
        _conn.Dispose();
        _backend.Dispose();
    }
}

/// <summary>The native floor: the same directory opened by the benchmark process itself.</summary>
public sealed unsafe class NativeSession : IDisposable
{
    /// <param name="root">Where the dataset is reached: its own directory (the native floor), or a mount
    /// of it (the host FUSE mount).</param>
    public NativeSession(Dataset dataset, string? root = null)
    {
        Dataset = dataset;
        root ??= dataset.Root;
        DirFds = new int[dataset.Shape.TreeDirs];
        for (int d = 0; d < DirFds.Length; d++)
        {
            DirFds[d] = OpenPath(Path.Combine(root, "tree", $"d{d:D3}"), Libc.O_RDONLY | Libc.O_DIRECTORY);
        }
        FlatPath = Path.Combine(root, "flat");
        SmallFd = OpenPath(Path.Combine(root, "small"), Libc.O_RDONLY | Libc.O_DIRECTORY);
        BigPath = Path.Combine(root, "big");
    }

    public Dataset Dataset { get; }
    public int[] DirFds { get; }
    public int SmallFd { get; }
    public string FlatPath { get; }
    public string BigPath { get; }

    public static int OpenPath(string path, int flags)
    {
        byte[] bytes = System.Text.Encoding.UTF8.GetBytes(path + "\0");
        fixed (byte* p = bytes)
        {
            // SAFETY: NUL-terminated and pinned.
            int fd = Libc.OpenAt(Libc.AT_FDCWD, p, flags | Libc.O_CLOEXEC, 0);
            if (fd < 0)
            {
                throw new BenchFailure($"open {path}: {Libc.LastErrno}");
            }
            return fd;
        }
    }

    public void Dispose()
    {
        foreach (int fd in DirFds)
        {
            Libc.Close(fd);
        }
        Libc.Close(SmallFd);
    }
}
