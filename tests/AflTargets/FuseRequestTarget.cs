using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using Vhostfsd.FusePassthrough;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Vhostfsd.Testing;

namespace Vhostfsd.AflTargets;

/// <summary>FUSE request decoding: the FUSE server over the in-memory file system (no host directory),
/// so that coverage is the server's own — the header and length checks, INIT, every opcode's argument
/// and name decoding, the extensions (supplementary groups, security contexts in both formats), the
/// reply encoding. Input: byte 0 picks what the file system asks at INIT (security contexts, POSIX
/// ACLs, read-only, an old protocol minor), byte 1 the reply space and how each request is split in
/// two segments; the rest is up to 8 requests, each cut at its own len field. Rules: nothing escapes
/// HandleRequest and no internal exception is caught (answered EIO); the reply fits the space, has a
/// well-formed out header (len, errno in range, the request's unique) and is absent only for
/// FORGET, BATCH_FORGET and INTERRUPT or when the space cannot hold an out header.</summary>
public sealed unsafe class FuseRequestTarget : AflTarget
{
    private const int MaxRequests = 8;
    private static readonly byte[] Reply = GC.AllocateArray<byte>(FuseServer.MaxRequestSize + 4096, pinned: true);
    private static readonly byte[] Request = GC.AllocateArray<byte>(FuseServer.MaxRequestSize + 4096, pinned: true);
    private static readonly int[] Capacities = [0, 15, 16, 40, 128, 144, 4096, 65536];

    public override string Name => "fuse-request";

    public override string[] Instrument => ["Vhostfsd.FusePassthrough.dll Vhostfsd.FusePassthrough.FuseServer", "Vhostfsd.FuseProtocol.dll"];

    public override void Run(ReadOnlySpan<byte> input)
    {
        if (input.Length < 2)
        {
            return;
        }
        byte config = input[0];
        byte shape = input[1];
        var tree = new MemoryTree
        {
            Wanted = FuseInitFlags.DoReaddirplus
                | ((config & 1) != 0 ? FuseInitFlags.SecurityCtx | FuseInitFlags.CreateSuppGroup : 0)
                | ((config & 2) != 0 ? FuseInitFlags.PosixAcl | FuseInitFlags.DontMask | FuseInitFlags.SetxattrExt : 0),
            ReadOnly = (config & 4) != 0,
        };
        string? internalError = null;
        using var server = new FuseServer<MemoryFs>(new MemoryFs(tree), message => internalError ??= message);
        uint minor = (config & 8) != 0 ? 31u : FuseConstants.KernelMinorVersion;
        Init(server, minor, () => internalError);
        var rest = input[2..];
        int capacity = (shape & 0x8) != 0 ? Reply.Length : Capacities[shape & 0x7];
        int split = shape >> 4;
        for (int i = 0; i < MaxRequests && rest.Length > 0; i++)
        {
            int take = rest.Length;
            if (rest.Length >= FuseInHeader.Size)
            {
                uint len = BinaryPrimitives.ReadUInt32LittleEndian(rest);
                if (len >= FuseInHeader.Size && len <= (uint)rest.Length)
                {
                    take = (int)len;
                }
            }
            Handle(server, rest[..take], capacity, split, () => internalError);
            rest = rest[take..];
        }
    }

    private static void Init(FuseServer<MemoryFs> server, uint minor, Func<string?> internalError)
    {
        var init = new byte[FuseInHeader.Size + FuseInitIn.Size];
        MemoryMarshal.Write(init, new FuseInHeader { Len = (uint)init.Length, Opcode = (uint)FuseOpcode.Init, Unique = 1 });
        MemoryMarshal.Write(init.AsSpan(FuseInHeader.Size), new FuseInitIn { Major = 7, Minor = minor, MaxReadahead = 131072, Flags = 0xFFFF_FFFF, Flags2 = 0x7 });
        Handle(server, init, 4096, 0, internalError);
    }

    private static void Handle(FuseServer<MemoryFs> server, ReadOnlySpan<byte> request, int capacity, int split, Func<string?> internalError)
    {
        request.CopyTo(Request);
        long exceptions = server.Stats.Exceptions;
        int n;
        // SAFETY: both arrays are pinned for the process's lifetime; the vectors cover request.Length and capacity bytes of them.
        fixed (byte* req = Request)
        fixed (byte* rep = Reply)
        {
            int first = split == 0 ? request.Length : request.Length * split / 16;
            IoVec* readable = stackalloc IoVec[2];
            readable[0] = new IoVec(req, (nuint)first);
            readable[1] = new IoVec(req + first, (nuint)(request.Length - first));
            var segments = new ReadOnlySpan<IoVec>(readable, first == request.Length ? 1 : 2);
            IoVec writable = new(rep, (nuint)capacity);
            var header = FuseRequestHeader.Read(segments);
            n = server.HandleRequest(in header, segments, new ReadOnlySpan<IoVec>(&writable, 1));
        }
        if (server.Stats.Exceptions != exceptions)
        {
            throw new BrokenRuleException("the server caught an internal exception (answered EIO): " + internalError());
        }
        if (n < 0 || n > capacity)
        {
            throw new BrokenRuleException($"HandleRequest returned {n} with {capacity} bytes of reply space");
        }
        uint opcode = request.Length >= 8 ? BinaryPrimitives.ReadUInt32LittleEndian(request[4..]) : 0;
        bool honest = request.Length >= FuseInHeader.Size && BinaryPrimitives.ReadUInt32LittleEndian(request) == (uint)request.Length;
        bool noReply = opcode is (uint)FuseOpcode.Forget or (uint)FuseOpcode.BatchForget or (uint)FuseOpcode.Interrupt;
        if (n == 0)
        {
            if (capacity >= FuseOutHeader.Size && !(noReply && request.Length >= FuseInHeader.Size))
            {
                throw new BrokenRuleException($"no reply to a {request.Length}-byte request (opcode {opcode}) with {capacity} bytes of space");
            }
            return;
        }
        if (noReply && honest)
        {
            throw new BrokenRuleException($"opcode {opcode} takes no reply but got {n} bytes");
        }
        if (n < FuseOutHeader.Size)
        {
            throw new BrokenRuleException($"a {n}-byte reply is shorter than fuse_out_header");
        }
        var header2 = MemoryMarshal.Read<FuseOutHeader>(Reply);
        if (header2.Len != (uint)n || header2.Error > 0 || header2.Error < -4095 || (header2.Error != 0 && n != FuseOutHeader.Size))
        {
            throw new BrokenRuleException($"malformed out header: len {header2.Len} (returned {n}), error {header2.Error}");
        }
        if (request.Length >= 16 && header2.Unique != BinaryPrimitives.ReadUInt64LittleEndian(request[8..]))
        {
            throw new BrokenRuleException($"reply unique {header2.Unique} for request {BinaryPrimitives.ReadUInt64LittleEndian(request[8..])}");
        }
    }

    public override IEnumerable<(string Name, byte[] Bytes)> SeedCorpus()
    {
        const ulong Root = FuseConstants.RootId;
        // MemoryTree numbers new nodes from 2 and handles from 1.
        yield return ("lookup-getattr-statfs", Input(0, 0x8,
            Req(FuseOpcode.Lookup, Root, b => b.Name("a")),
            Req(FuseOpcode.Getattr, Root, b => b.U32(0).U32(0).U64(0)),
            Req(FuseOpcode.Statfs, Root, _ => { })));
        yield return ("mkdir-create-write-read", Input(1, 0x8,
            Req(FuseOpcode.Mkdir, Root, b => b.U32(0x1ED).U32(0x12).Name("d")),
            Req(FuseOpcode.Create, 2, b => b.U32(0x42).U32(0x81A4).U32(0x12).U32(0).Name("f").Groups(1000), uid: 1000, gid: 1000),
            Req(FuseOpcode.Write, 3, b => b.U64(1).U64(0).U32(5).U32(0).U64(0).U32(2).U32(0).Raw("hello"u8)),
            Req(FuseOpcode.Read, 3, b => b.U64(1).U64(0).U32(4096).U32(0).U64(0).U32(2).U32(0)),
            Req(FuseOpcode.Release, 3, b => b.U64(1).U32(2).U32(0).U64(0))));
        yield return ("security-context", Input(1, 0x8,
            Req(FuseOpcode.Mkdir, Root, b => b.U32(0x1ED).U32(0x12).Name("l").Context("security.selinux", "system_u:object_r:x_t:s0\0"u8)),
            Req(FuseOpcode.Symlink, Root, b => b.Name("s").Name("l").Context("security.capability", new byte[20]))));
        yield return ("security-context-7.36", Input(1, 0x8,
            Req(FuseOpcode.Create, Root, b => b.U32(0x42).U32(0x81A4).U32(0x12).U32(0).Name("o").OldContext("security.x", "lbl\0"u8))));
        yield return ("xattrs-acl", Input(3, 0x8,
            Req(FuseOpcode.Setxattr, Root, b => b.U32(4).U32(0).U32(1).U32(0).Name("user.a").Raw("abcd"u8)),
            Req(FuseOpcode.Getxattr, Root, b => b.U32(64).U32(0).Name("user.a")),
            Req(FuseOpcode.Listxattr, Root, b => b.U32(4096).U32(0)),
            Req(FuseOpcode.Removexattr, Root, b => b.Name("user.a"))));
        yield return ("readdirplus", Input(0, 0x8,
            Req(FuseOpcode.Mknod, Root, b => b.U32(0x81A4).U32(0).U32(0x12).U32(0).Name("n")),
            Req(FuseOpcode.Opendir, Root, b => b.U32(0).U32(0)),
            Req(FuseOpcode.Readdirplus, Root, b => b.U64(1).U64(0).U32(4096).U32(0).U64(0).U32(0).U32(0)),
            Req(FuseOpcode.Readdir, Root, b => b.U64(1).U64(0).U32(4096).U32(0).U64(0).U32(0).U32(0)),
            Req(FuseOpcode.Releasedir, Root, b => b.U64(1).U32(0).U32(0).U64(0))));
        yield return ("rename-link-unlink", Input(0, 0x38,
            Req(FuseOpcode.Create, Root, b => b.U32(0xC2).U32(0x81A4).U32(0x12).U32(0).Name("x")),
            Req(FuseOpcode.Link, Root, b => b.U64(2).Name("y")),
            Req(FuseOpcode.Rename2, Root, b => b.U64(Root).U32(1).U32(0).Name("y").Name("z")),
            Req(FuseOpcode.Unlink, Root, b => b.Name("z")),
            Req(FuseOpcode.Rmdir, Root, b => b.Name("x"))));
        yield return ("forget-interrupt", Input(0, 0x8,
            Req(FuseOpcode.Lookup, Root, b => b.Name("a")),
            Req(FuseOpcode.Forget, 2, b => b.U64(1)),
            Req(FuseOpcode.BatchForget, 0, b => b.U32(2).U32(0).U64(2).U64(1).U64(3).U64(1)),
            Req(FuseOpcode.Interrupt, 0, b => b.U64(5))));
        yield return ("setattr-statx-lseek", Input(0, 0x8,
            Req(FuseOpcode.Create, Root, b => b.U32(0x42).U32(0x81A4).U32(0x12).U32(0).Name("t")),
            Req(FuseOpcode.Setattr, 2, b => b.U32(0x9).U32(0).U64(1).U64(100).U64(0).U64(0).U64(0).U64(0).U32(0).U32(0).U32(0).U32(0x81ED).U32(0).U32(0).U32(0).U32(0)),
            Req(FuseOpcode.Statx, 2, b => b.U32(0).U32(0).U64(1).U32(0).U32(0xFFF)),
            Req(FuseOpcode.Lseek, 2, b => b.U64(1).U64(0).U32(3).U32(0)),
            Req(FuseOpcode.Readlink, 2, _ => { })));
        yield return ("short-and-unknown", Input(4, 0x3,
            [0x28, 0, 0, 0, 1, 0, 0, 0],
            Req((FuseOpcode)4096, Root, b => b.U64(0))));
    }

    private static byte[] Input(byte config, byte shape, params byte[][] requests)
    {
        var all = new List<byte> { config, shape };
        foreach (byte[] r in requests)
        {
            all.AddRange(r);
        }
        return all.ToArray();
    }

    private static ulong _unique = 100;

    private static byte[] Req(FuseOpcode opcode, ulong node, Action<Args> body, uint uid = 0, uint gid = 0)
    {
        var args = new Args();
        body(args);
        byte[] tail = args.Bytes.ToArray();
        var request = new byte[FuseInHeader.Size + tail.Length];
        MemoryMarshal.Write(request, new FuseInHeader
        {
            Len = (uint)request.Length, Opcode = (uint)opcode, Unique = _unique++, NodeId = node, Uid = uid, Gid = gid, Pid = 42,
            TotalExtLen = (ushort)(args.ExtensionBytes / 8),
        });
        tail.CopyTo(request, FuseInHeader.Size);
        return request;
    }

    /// <summary>Arguments of a seed request, little-endian, with the extensions FUSE puts after the names.</summary>
    private sealed class Args
    {
        public List<byte> Bytes { get; } = new();
        public int ExtensionBytes { get; private set; }

        public Args U32(uint v)
        {
            Span<byte> b = stackalloc byte[4];
            BinaryPrimitives.WriteUInt32LittleEndian(b, v);
            Bytes.AddRange(b.ToArray());
            return this;
        }

        public Args U64(ulong v)
        {
            Span<byte> b = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(b, v);
            Bytes.AddRange(b.ToArray());
            return this;
        }

        public Args Name(string name)
        {
            Bytes.AddRange(Encoding.UTF8.GetBytes(name));
            Bytes.Add(0);
            return this;
        }

        public Args Raw(ReadOnlySpan<byte> bytes)
        {
            Bytes.AddRange(bytes.ToArray());
            return this;
        }

        /// <summary>fuse_ext_header { size, FUSE_EXT_GROUPS } + fuse_supp_groups { 1 } + the group, padded to 8.</summary>
        public Args Groups(uint group)
        {
            int start = Bytes.Count;
            U32(16).U32((uint)FuseExtType.Groups).U32(1).U32(group);
            ExtensionBytes += Bytes.Count - start;
            return this;
        }

        /// <summary>fuse_secctx_header { size, nr = 1 } + fuse_secctx { size, 0 } + name + value, padded to 8.</summary>
        public Args Context(string name, ReadOnlySpan<byte> value)
        {
            int start = Bytes.Count;
            AppendContext(name, value);
            ExtensionBytes += Bytes.Count - start;
            return this;
        }

        /// <summary>The 7.36 form: the context after the names, not counted in total_extlen.</summary>
        public Args OldContext(string name, ReadOnlySpan<byte> value)
        {
            AppendContext(name, value);
            return this;
        }

        private void AppendContext(string name, ReadOnlySpan<byte> value)
        {
            int size = 16 + Encoding.UTF8.GetByteCount(name) + 1 + value.Length;
            int padded = (size + 7) & ~7;
            U32((uint)padded).U32(1).U32((uint)value.Length).U32(0).Name(name).Raw(value);
            Bytes.AddRange(new byte[padded - size]);
        }
    }
}
