using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using Vhostfsd.FusePassthrough;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.Testing;

/// <summary>A reply as the client saw it: the out header's error and the payload after it.</summary>
public sealed class FuseReply
{
    public FuseReply(int returned, FuseOutHeader header, byte[] payload)
    {
        Returned = returned;
        Header = header;
        Payload = payload;
    }

    /// <summary>What the handler returned (bytes written).</summary>
    public int Returned { get; }
    public FuseOutHeader Header { get; }
    /// <summary>0 or a negative errno.</summary>
    public int Error => Header.Error;
    public Errno Errno => (Errno)(-Header.Error);
    public byte[] Payload { get; }

    /// <summary>The payload's first bytes as <typeparamref name="T"/>; throws when it is shorter.</summary>
    public T Read<T>(int offset = 0) where T : unmanaged
    {
        if (Payload.Length < offset + Unsafe.SizeOf<T>())
        {
            throw new InvalidOperationException($"reply payload is {Payload.Length} bytes; {typeof(T).Name} at {offset} needs {Unsafe.SizeOf<T>()} (error {Error})");
        }
        return MemoryMarshal.Read<T>(Payload.AsSpan(offset));
    }

    /// <summary>Throws with the errno when the reply is an error.</summary>
    public FuseReply Ok()
    {
        if (Error != 0)
        {
            throw new InvalidOperationException($"FUSE error {Errno} ({Error})");
        }
        return this;
    }
}

/// <summary>One entry of a READDIR / READDIRPLUS reply.</summary>
public sealed record FuseDirEntry(string Name, ulong Ino, ulong Offset, uint Type, FuseEntryOut Entry);

/// <summary>Builds the argument bytes of a request.</summary>
public sealed class FuseArgs
{
    private readonly List<byte> _bytes = new();

    public FuseArgs Add<T>(T value) where T : unmanaged
    {
        var span = MemoryMarshal.AsBytes(new ReadOnlySpan<T>(in value));
        foreach (byte b in span)
        {
            _bytes.Add(b);
        }
        return this;
    }

    /// <summary>Adds a name and its NUL.</summary>
    public FuseArgs Name(string name) => Bytes(Encoding.UTF8.GetBytes(name)).Bytes([0]);

    public FuseArgs Bytes(ReadOnlySpan<byte> bytes)
    {
        foreach (byte b in bytes)
        {
            _bytes.Add(b);
        }
        return this;
    }

    public int Length => _bytes.Count;
    public byte[] ToArray() => _bytes.ToArray();
}

/// <summary>A FUSE client for tests that drives a request handler directly (no transport): it
/// encodes requests into pinned buffers, optionally split into segments at chosen points (even
/// inside headers), hands them over as IoVecs and decodes the reply.</summary>
public sealed unsafe class FuseTestClient
{
    /// <summary>The handler under test (FuseServer.HandleRequest).</summary>
    public delegate int RequestHandler(ReadOnlySpan<IoVec> readable, ReadOnlySpan<IoVec> writable);

    private readonly RequestHandler _handler;
    private long _unique;

    public FuseTestClient(RequestHandler handler)
    {
        _handler = handler;
    }

    /// <summary>A client that calls <paramref name="server"/> directly, as a transport does: the
    /// header copied out of the request once, then the request handled as that copy says.</summary>
    public FuseTestClient(FuseServer server)
        : this((readable, writable) =>
        {
            var header = FuseRequestHeader.Read(readable);
            return server.HandleRequest(in header, readable, writable);
        })
    {
    }

    public uint Uid { get; set; }
    public uint Gid { get; set; }
    public uint Pid { get; set; } = 1;

    /// <summary>Split points (byte offsets) for the readable side of the next requests; null: one segment.</summary>
    public int[]? RequestSplits { get; set; }

    /// <summary>Split points for the writable side; null: one segment.</summary>
    public int[]? ReplySplits { get; set; }

    /// <summary>Writable bytes offered per request.</summary>
    public int ReplyCapacity { get; set; } = (1 << 20) + 4096;

    /// <summary>Total extension length (8-byte units) put in the next headers, for extension tests.</summary>
    public ushort TotalExtLen { get; set; }

    public ulong LastUnique => (ulong)Interlocked.Read(ref _unique);

    /// <summary>Sends raw request bytes (header included) as-is.</summary>
    public FuseReply SendRaw(byte[] request, int replyCapacity = -1)
    {
        int capacity = replyCapacity >= 0 ? replyCapacity : ReplyCapacity;
        byte[] reply = GC.AllocateArray<byte>(Math.Max(capacity, 1), pinned: true);
        byte[] pinnedRequest = GC.AllocateArray<byte>(Math.Max(request.Length, 1), pinned: true);
        request.CopyTo(pinnedRequest, 0);
        fixed (byte* req = pinnedRequest)
        fixed (byte* rep = reply)
        {
            IoVec[] readable = Segments(req, request.Length, RequestSplits);
            IoVec[] writable = Segments(rep, capacity, ReplySplits);
            int n = _handler(readable, writable);
            FuseOutHeader header = default;
            byte[] payload = [];
            if (n >= FuseOutHeader.Size)
            {
                header = MemoryMarshal.Read<FuseOutHeader>(reply);
                if (header.Len != n)
                {
                    throw new InvalidOperationException($"out header len {header.Len} but handler returned {n}");
                }
                payload = reply.AsSpan(FuseOutHeader.Size, n - FuseOutHeader.Size).ToArray();
            }
            return new FuseReply(n, header, payload);
        }
    }

    private static IoVec[] Segments(byte* start, int length, int[]? splits)
    {
        var list = new List<IoVec>();
        int at = 0;
        if (splits is not null)
        {
            foreach (int split in splits)
            {
                if (split > at && split < length)
                {
                    list.Add(new IoVec(start + at, (nuint)(split - at)));
                    at = split;
                }
            }
        }
        list.Add(new IoVec(start + at, (nuint)(length - at)));
        return list.ToArray();
    }

    /// <summary>Builds the header (len, opcode, a fresh unique, node id, the client's uid/gid/pid) and sends.</summary>
    public FuseReply Send(FuseOpcode opcode, ulong nodeId, FuseArgs? args = null, int replyCapacity = -1)
    {
        byte[] body = args?.ToArray() ?? [];
        var header = new FuseInHeader
        {
            Len = (uint)(FuseInHeader.Size + body.Length),
            Opcode = (uint)opcode,
            Unique = (ulong)Interlocked.Increment(ref _unique),
            NodeId = nodeId,
            Uid = Uid,
            Gid = Gid,
            Pid = Pid,
            TotalExtLen = TotalExtLen,
        };
        byte[] request = new byte[header.Len];
        MemoryMarshal.Write(request, in header);
        body.CopyTo(request, FuseInHeader.Size);
        return SendRaw(request, replyCapacity);
    }

    // ---- typed helpers ----

    public FuseInitOut Init(FuseInitFlags flags = (FuseInitFlags)ulong.MaxValue & ~FuseInitFlags.InitReserved, uint minor = FuseConstants.KernelMinorVersion)
    {
        var (f, f2) = FuseConstants.SplitInitFlags(flags);
        var args = new FuseArgs().Add(new FuseInitIn { Major = 7, Minor = minor, MaxReadahead = 131072, Flags = f, Flags2 = f2 });
        return Send(FuseOpcode.Init, 0, args).Ok().Read<FuseInitOut>();
    }

    public FuseReply Lookup(ulong parent, string name) => Send(FuseOpcode.Lookup, parent, new FuseArgs().Name(name));

    public FuseEntryOut LookupOk(ulong parent, string name) => Lookup(parent, name).Ok().Read<FuseEntryOut>();

    public void Forget(ulong node, ulong count) => Send(FuseOpcode.Forget, node, new FuseArgs().Add(new FuseForgetIn { Nlookup = count }));

    public FuseReply BatchForget(params (ulong Node, ulong Count)[] items)
    {
        var args = new FuseArgs().Add(new FuseBatchForgetIn { Count = (uint)items.Length });
        foreach (var (node, count) in items)
        {
            args.Add(new FuseForgetOne { NodeId = node, Nlookup = count });
        }
        return Send(FuseOpcode.BatchForget, 0, args);
    }

    public FuseReply Getattr(ulong node) => Send(FuseOpcode.Getattr, node, new FuseArgs().Add(new FuseGetattrIn()));

    public FuseReply Setattr(ulong node, FuseSetattrIn attr) => Send(FuseOpcode.Setattr, node, new FuseArgs().Add(attr));

    public FuseReply Mkdir(ulong parent, string name, uint mode = 0x1ED, uint umask = 0)
        => Send(FuseOpcode.Mkdir, parent, new FuseArgs().Add(new FuseMkdirIn { Mode = mode, Umask = umask }).Name(name));

    public FuseReply Mknod(ulong parent, string name, uint mode, uint rdev = 0, uint umask = 0)
        => Send(FuseOpcode.Mknod, parent, new FuseArgs().Add(new FuseMknodIn { Mode = mode, Rdev = rdev, Umask = umask }).Name(name));

    public FuseReply Symlink(ulong parent, string name, string target)
        => Send(FuseOpcode.Symlink, parent, new FuseArgs().Name(name).Name(target));

    public FuseReply Readlink(ulong node) => Send(FuseOpcode.Readlink, node);

    public FuseReply Unlink(ulong parent, string name) => Send(FuseOpcode.Unlink, parent, new FuseArgs().Name(name));

    public FuseReply Rmdir(ulong parent, string name) => Send(FuseOpcode.Rmdir, parent, new FuseArgs().Name(name));

    public FuseReply Rename(ulong parent, string name, ulong newParent, string newName, uint flags = 0, bool rename2 = true)
        => rename2
            ? Send(FuseOpcode.Rename2, parent, new FuseArgs().Add(new FuseRename2In { NewDir = newParent, Flags = flags }).Name(name).Name(newName))
            : Send(FuseOpcode.Rename, parent, new FuseArgs().Add(new FuseRenameIn { NewDir = newParent }).Name(name).Name(newName));

    public FuseReply Link(ulong target, ulong newParent, string newName)
        => Send(FuseOpcode.Link, newParent, new FuseArgs().Add(new FuseLinkIn { OldNodeId = target }).Name(newName));

    public FuseReply Open(ulong node, int flags) => Send(FuseOpcode.Open, node, new FuseArgs().Add(new FuseOpenIn { Flags = (uint)flags }));

    public FuseReply Opendir(ulong node) => Send(FuseOpcode.Opendir, node, new FuseArgs().Add(new FuseOpenIn { Flags = (uint)Libc.O_RDONLY }));

    public FuseReply Create(ulong parent, string name, int flags, uint mode = 0x1A4, uint umask = 0, FuseArgs? extensions = null)
    {
        var args = new FuseArgs().Add(new FuseCreateIn { Flags = (uint)flags, Mode = Libc.S_IFREG | mode, Umask = umask }).Name(name);
        if (extensions is not null)
        {
            args.Bytes(extensions.ToArray());
        }
        return Send(FuseOpcode.Create, parent, args);
    }

    /// <summary>CREATE; returns (entry, fh).</summary>
    public (FuseEntryOut Entry, ulong Fh) CreateOk(ulong parent, string name, int flags = 0x42 /* O_RDWR|O_CREAT */, uint mode = 0x1A4)
    {
        FuseReply reply = Create(parent, name, flags, mode).Ok();
        return (reply.Read<FuseEntryOut>(), reply.Read<FuseOpenOut>(FuseEntryOut.Size).Fh);
    }

    public FuseReply Read(ulong node, ulong fh, ulong offset, uint size)
        => Send(FuseOpcode.Read, node, new FuseArgs().Add(new FuseReadIn { Fh = fh, Offset = offset, Length = size }));

    public FuseReply Write(ulong node, ulong fh, ulong offset, ReadOnlySpan<byte> data, uint writeFlags = 0, int openFlags = 0)
        => Send(FuseOpcode.Write, node, new FuseArgs().Add(new FuseWriteIn { Fh = fh, Offset = offset, Length = (uint)data.Length, WriteFlags = writeFlags, Flags = (uint)openFlags }).Bytes(data));

    public FuseReply Release(ulong node, ulong fh, bool directory = false, uint releaseFlags = 0, ulong lockOwner = 0)
        => Send(directory ? FuseOpcode.Releasedir : FuseOpcode.Release, node, new FuseArgs().Add(new FuseReleaseIn { Fh = fh, ReleaseFlags = releaseFlags, LockOwner = lockOwner }));

    public FuseReply Flush(ulong node, ulong fh, ulong lockOwner)
        => Send(FuseOpcode.Flush, node, new FuseArgs().Add(new FuseFlushIn { Fh = fh, LockOwner = lockOwner }));

    public FuseReply Fsync(ulong node, ulong fh, bool datasync = false, bool directory = false)
        => Send(directory ? FuseOpcode.Fsyncdir : FuseOpcode.Fsync, node, new FuseArgs().Add(new FuseFsyncIn { Fh = fh, FsyncFlags = datasync ? 1u : 0u }));

    public FuseReply Readdir(ulong node, ulong fh, ulong offset, uint size, bool plus)
        => Send(plus ? FuseOpcode.Readdirplus : FuseOpcode.Readdir, node, new FuseArgs().Add(new FuseReadIn { Fh = fh, Offset = offset, Length = size }));

    /// <summary>Decodes a READDIR (plus=false) or READDIRPLUS reply.</summary>
    public static List<FuseDirEntry> ParseDirents(FuseReply reply, bool plus)
    {
        var list = new List<FuseDirEntry>();
        ReadOnlySpan<byte> p = reply.Payload;
        int pos = 0;
        while (pos < p.Length)
        {
            FuseEntryOut entry = default;
            if (plus)
            {
                entry = MemoryMarshal.Read<FuseEntryOut>(p[pos..]);
                pos += FuseEntryOut.Size;
            }
            var d = MemoryMarshal.Read<FuseDirent>(p[pos..]);
            string name = Encoding.UTF8.GetString(p.Slice(pos + FuseDirent.Size, (int)d.NameLen));
            list.Add(new FuseDirEntry(name, d.Ino, d.Off, d.Type, entry));
            pos += FuseConstants.RecordAlign(FuseDirent.Size + (int)d.NameLen);
        }
        return list;
    }

    /// <summary>Reads a whole directory with repeated READDIR(PLUS) calls of <paramref name="size"/> bytes.</summary>
    public List<FuseDirEntry> ReadAll(ulong node, ulong fh, bool plus, uint size = 4096)
    {
        var all = new List<FuseDirEntry>();
        ulong offset = 0;
        while (true)
        {
            FuseReply reply = Readdir(node, fh, offset, size, plus).Ok();
            var batch = ParseDirents(reply, plus);
            if (batch.Count == 0)
            {
                return all;
            }
            all.AddRange(batch);
            offset = batch[^1].Offset;
        }
    }

    public FuseReply Statfs(ulong node) => Send(FuseOpcode.Statfs, node);

    public FuseReply Access(ulong node, int mask) => Send(FuseOpcode.Access, node, new FuseArgs().Add(new FuseAccessIn { Mask = (uint)mask }));

    public FuseReply Setxattr(ulong node, string name, ReadOnlySpan<byte> value, int flags = 0, bool extended = false)
    {
        var args = new FuseArgs();
        if (extended)
        {
            args.Add(new FuseSetxattrIn { Length = (uint)value.Length, Flags = (uint)flags });
        }
        else
        {
            args.Add((uint)value.Length).Add((uint)flags);
        }
        return Send(FuseOpcode.Setxattr, node, args.Name(name).Bytes(value));
    }

    public FuseReply Getxattr(ulong node, string name, uint size)
        => Send(FuseOpcode.Getxattr, node, new FuseArgs().Add(new FuseGetxattrIn { Length = size }).Name(name));

    public FuseReply Listxattr(ulong node, uint size) => Send(FuseOpcode.Listxattr, node, new FuseArgs().Add(new FuseGetxattrIn { Length = size }));

    public FuseReply Removexattr(ulong node, string name) => Send(FuseOpcode.Removexattr, node, new FuseArgs().Name(name));

    public FuseReply Lock(FuseOpcode opcode, ulong node, ulong fh, ulong owner, short type, ulong start = 0, ulong end = long.MaxValue, bool flock = false)
        => Send(opcode, node, new FuseArgs().Add(new FuseLkIn
        {
            Fh = fh,
            Owner = owner,
            Lk = new FuseFileLock { Start = start, End = end, Type = (uint)type, Pid = Pid },
            LkFlags = flock ? (uint)FuseLkFlags.Flock : 0,
        }));
}
