using System.Runtime.InteropServices;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Xunit;

namespace Vhostfsd.FusePassthrough.Tests;

/// <summary>INIT negotiation, request validation and reply bounds.</summary>
public class ProtocolTests
{
    private static FuseServer NewServer(out ShareFixture fixture)
    {
        fixture = new ShareFixture();
        return fixture.Server;
    }

    private static byte[] Request(FuseOpcode opcode, ulong nodeId, byte[] args, uint? lenOverride = null, ulong unique = 77)
    {
        var h = new FuseInHeader
        {
            Len = lenOverride ?? (uint)(FuseInHeader.Size + args.Length),
            Opcode = (uint)opcode,
            Unique = unique,
            NodeId = nodeId,
        };
        byte[] bytes = new byte[FuseInHeader.Size + args.Length];
        MemoryMarshal.Write(bytes, in h);
        args.CopyTo(bytes, FuseInHeader.Size);
        return bytes;
    }

    [Fact]
    public void InitGrantsOnlyOfferedImplementedAndAllowedFlags()
    {
        using var f = new ShareFixture(initFlags: FuseInitFlags.AsyncRead | FuseInitFlags.BigWrites | FuseInitFlags.SpliceMove
            | FuseInitFlags.InitExt | FuseInitFlags.CreateSuppGroup | FuseInitFlags.WritebackCache | FuseInitFlags.PosixAcl);
        FuseInitFlags granted = FuseConstants.JoinInitFlags(f.Init.Flags, f.Init.Flags2);
        // Offered and implemented.
        Assert.True(granted.HasFlag(FuseInitFlags.AsyncRead));
        Assert.True(granted.HasFlag(FuseInitFlags.BigWrites));
        Assert.True(granted.HasFlag(FuseInitFlags.InitExt));
        Assert.True(granted.HasFlag(FuseInitFlags.CreateSuppGroup));
        // Offered, not implemented (splice), or not allowed by default options (writeback, ACL).
        Assert.False(granted.HasFlag(FuseInitFlags.SpliceMove));
        Assert.False(granted.HasFlag(FuseInitFlags.WritebackCache));
        Assert.False(granted.HasFlag(FuseInitFlags.PosixAcl));
        // Implemented but not offered.
        Assert.False(granted.HasFlag(FuseInitFlags.ParallelDirops));
        Assert.False(granted.HasFlag(FuseInitFlags.DoReaddirplus));
        Assert.Equal(7u, f.Init.Major);
        Assert.Equal(FuseConstants.KernelMinorVersion, f.Init.Minor);
        Assert.Equal(1u << 20, f.Init.MaxWrite);
        Assert.Equal((ushort)((1 << 20) / Environment.SystemPageSize), f.Init.MaxPages);
        Assert.Equal(1u, f.Init.TimeGran);
        Assert.Equal(ushort.MaxValue, f.Init.MaxBackground);
        Assert.Equal(131072u, f.Init.MaxReadahead);
    }

    [Fact]
    public void InitAnswersTheSmallerMinorAndHandlesCompatInitIn()
    {
        using var f = new ShareFixture();
        // A 7.31 guest (Linux 5.4) sends the 16-byte fuse_init_in without flags2.
        var args = new FuseArgs().Add(7u).Add(31u).Add(65536u).Add((uint)(FuseInitFlags.AsyncRead | FuseInitFlags.DoReaddirplus));
        FuseReply reply = f.Client.Send(FuseOpcode.Init, 0, args).Ok();
        var init = reply.Read<FuseInitOut>();
        Assert.Equal(31u, init.Minor);
        Assert.Equal(31u, f.Server.NegotiatedMinor);
        Assert.Equal((uint)(FuseInitFlags.AsyncRead | FuseInitFlags.DoReaddirplus), init.Flags);
        Assert.Equal(0u, init.Flags2);
    }

    [Fact]
    public void InitRefusesOldProtocolsAndAnswersNewerMajorsWithOurs()
    {
        using var f = new ShareFixture();
        Assert.Equal(Errno.EPROTO, f.Client.Send(FuseOpcode.Init, 0, new FuseArgs().Add(new FuseInitIn { Major = 6, Minor = 40 })).Errno);
        Assert.Equal(Errno.EPROTO, f.Client.Send(FuseOpcode.Init, 0, new FuseArgs().Add(new FuseInitIn { Major = 7, Minor = 26 })).Errno);
        FuseReply newer = f.Client.Send(FuseOpcode.Init, 0, new FuseArgs().Add(new FuseInitIn { Major = 8, Minor = 0 })).Ok();
        Assert.Equal(7u, newer.Read<FuseInitOut>().Major);
        Assert.Equal(Errno.EINVAL, f.Client.Send(FuseOpcode.Init, 0, new FuseArgs().Add(7u)).Errno);
    }

    [Fact]
    public void PosixAclAndSecurityLabelRefuseGuestsWithoutTheirFlags()
    {
        using var acl = new ShareFixture(makeOptions: s => new PassthroughOptions { SharedDir = s, PosixAcl = true }, init: false);
        Assert.Equal(Errno.EPROTO, acl.Client.Send(FuseOpcode.Init, 0, new FuseArgs().Add(new FuseInitIn { Major = 7, Minor = 38, Flags = (uint)FuseInitFlags.PosixAcl })).Errno);
        FuseReply ok = acl.Client.Send(FuseOpcode.Init, 0, new FuseArgs().Add(new FuseInitIn { Major = 7, Minor = 38, Flags = (uint)(FuseInitFlags.PosixAcl | FuseInitFlags.DontMask | FuseInitFlags.SetxattrExt) })).Ok();
        Assert.Equal((uint)(FuseInitFlags.PosixAcl | FuseInitFlags.DontMask | FuseInitFlags.SetxattrExt), ok.Read<FuseInitOut>().Flags);

        using var label = new ShareFixture(makeOptions: s => new PassthroughOptions { SharedDir = s, SecurityLabel = true }, init: false);
        var (f1, f2) = FuseConstants.SplitInitFlags(FuseInitFlags.AsyncRead | FuseInitFlags.InitExt);
        Assert.Equal(Errno.EPROTO, label.Client.Send(FuseOpcode.Init, 0, new FuseArgs().Add(new FuseInitIn { Major = 7, Minor = 38, Flags = f1, Flags2 = f2 })).Errno);
        FuseInitOut granted = label.Client.Init(FuseInitFlags.AsyncRead | FuseInitFlags.InitExt | FuseInitFlags.SecurityCtx, 38);
        Assert.True(FuseConstants.JoinInitFlags(granted.Flags, granted.Flags2).HasFlag(FuseInitFlags.SecurityCtx));
    }

    [Fact]
    public void RequestsBeforeInitGetEio()
    {
        using var f = new ShareFixture();
        var server = new FuseServer(new PassthroughOptions { SharedDir = f.Share });
        var client = new FuseTestClient(server);
        Assert.Equal(Errno.EIO, client.Lookup(FuseConstants.RootId, "x").Errno);
        client.Init();
        Assert.Equal(Errno.ENOENT, client.Lookup(FuseConstants.RootId, "x").Errno);
        server.Dispose();
    }

    [Fact]
    public void UnknownAndUnimplementedOpcodesGetEnosys()
    {
        using var f = new ShareFixture();
        Assert.Equal(Errno.ENOSYS, f.Client.Send((FuseOpcode)999, FuseConstants.RootId).Errno);
        Assert.Equal(Errno.ENOSYS, f.Client.Send(FuseOpcode.Bmap, FuseConstants.RootId, new FuseArgs().Add(new FuseBmapIn())).Errno);
        Assert.Equal(Errno.ENOSYS, f.Client.Send(FuseOpcode.Poll, FuseConstants.RootId, new FuseArgs().Add(new FusePollIn())).Errno);
        Assert.Equal(Errno.ENOSYS, f.Client.Send(FuseOpcode.Setupmapping, FuseConstants.RootId, new FuseArgs().Add(new FuseSetupmappingIn())).Errno);
        Assert.Equal(Errno.ENOSYS, f.Client.Send(FuseOpcode.Removemapping, FuseConstants.RootId, new FuseArgs().Add(new FuseRemovemappingIn())).Errno);
        Assert.Equal(Errno.ENOSYS, f.Client.Send(FuseOpcode.Ioctl, FuseConstants.RootId, new FuseArgs().Add(new FuseIoctlIn())).Errno);
        // xattrs are off by default, as in virtiofsd.
        Assert.Equal(Errno.ENOSYS, f.Client.Getxattr(FuseConstants.RootId, "user.x", 0).Errno);
        Assert.True(f.Server.Stats.UnknownOpcodes >= 1);
    }

    [Fact]
    public void MalformedRequestsGetEinvalWithTheirUnique()
    {
        using var f = new ShareFixture();
        // Shorter than the header (but with the unique readable).
        byte[] shortHeader = Request(FuseOpcode.Lookup, 1, [])[..20];
        FuseReply r1 = f.Client.SendRaw(shortHeader);
        Assert.Equal(Errno.EINVAL, r1.Errno);
        Assert.Equal(77UL, r1.Header.Unique);
        // Too short to read even the unique.
        Assert.Equal(Errno.EINVAL, f.Client.SendRaw(new byte[5]).Errno);
        // len disagrees with the buffer.
        Assert.Equal(Errno.EINVAL, f.Client.SendRaw(Request(FuseOpcode.Lookup, 1, "a\0"u8.ToArray(), lenOverride: 100)).Errno);
        Assert.Equal(Errno.EINVAL, f.Client.SendRaw(Request(FuseOpcode.Lookup, 1, "a\0"u8.ToArray(), lenOverride: 41)).Errno);
        // Name without NUL.
        Assert.Equal(Errno.EINVAL, f.Client.SendRaw(Request(FuseOpcode.Lookup, 1, "abc"u8.ToArray())).Errno);
        // Fixed arguments cut short.
        Assert.Equal(Errno.EINVAL, f.Client.SendRaw(Request(FuseOpcode.Getattr, 1, new byte[8])).Errno);
        Assert.Equal(Errno.EINVAL, f.Client.SendRaw(Request(FuseOpcode.Read, 1, new byte[20])).Errno);
        Assert.Equal(Errno.EINVAL, f.Client.SendRaw(Request(FuseOpcode.Mkdir, 1, new byte[4])).Errno);
        // WRITE whose size disagrees with the payload.
        var w = new FuseArgs().Add(new FuseWriteIn { Fh = 1, Length = 100 }).Bytes(new byte[10]);
        Assert.Equal(Errno.EINVAL, f.Client.Send(FuseOpcode.Write, 1, w).Errno);
        // BATCH_FORGET whose count disagrees: no reply, counted.
        long before = f.Server.Stats.Malformed;
        var bf = new FuseArgs().Add(new FuseBatchForgetIn { Count = 5 }).Add(new FuseForgetOne { NodeId = 1, Nlookup = 1 });
        Assert.Equal(0, f.Client.Send(FuseOpcode.BatchForget, 0, bf).Returned);
        Assert.True(f.Server.Stats.Malformed > before);
        Assert.Equal(0, f.Server.Stats.Exceptions);
    }

    [Fact]
    public void OversizedRequestIsRefused()
    {
        using var f = new ShareFixture();
        var (e, fh) = f.Client.CreateOk(FuseConstants.RootId, "big");
        var args = new FuseArgs().Add(new FuseWriteIn { Fh = fh, Length = FuseServer.MaxWrite + 8192 }).Bytes(new byte[FuseServer.MaxWrite + 8192]);
        Assert.Equal(Errno.EINVAL, f.Client.Send(FuseOpcode.Write, e.NodeId, args).Errno);
        Assert.Equal(0, new FileInfo(f.HostPath("big")).Length);
    }

    [Fact]
    public void ReplySpaceIsNeverExceeded()
    {
        using var f = new ShareFixture();
        File.WriteAllText(f.HostPath("x"), "x");
        // No room for even the out header: nothing written, counted, request not executed.
        long tooSmall = f.Server.Stats.ReplyTooSmall;
        FuseReply none = f.Client.Send(FuseOpcode.Mkdir, FuseConstants.RootId, new FuseArgs().Add(new FuseMkdirIn { Mode = 0x1ED }).Name("d"), replyCapacity: 15);
        Assert.Equal(0, none.Returned);
        Assert.Equal(tooSmall + 1, f.Server.Stats.ReplyTooSmall);
        Assert.False(Directory.Exists(f.HostPath("d")));
        // Room for the header but not the entry: an error that fits, and no side effect.
        FuseReply small = f.Client.Send(FuseOpcode.Mkdir, FuseConstants.RootId, new FuseArgs().Add(new FuseMkdirIn { Mode = 0x1ED }).Name("d"), replyCapacity: 40);
        Assert.Equal(16, small.Returned);
        Assert.Equal(Errno.EIO, small.Errno);
        Assert.False(Directory.Exists(f.HostPath("d")));
        // READ never writes past the space given.
        FuseEntryOut e = f.Client.LookupOk(FuseConstants.RootId, "x");
        File.WriteAllBytes(f.HostPath("x"), new byte[10000]);
        ulong fh = f.Client.Open(e.NodeId, Libc.O_RDONLY).Ok().Read<FuseOpenOut>().Fh;
        f.Client.ReplyCapacity = 16 + 100;
        FuseReply partial = f.Client.Read(e.NodeId, fh, 0, 8192);
        Assert.Equal(116, partial.Returned);
        Assert.Equal(100, partial.Payload.Length);
    }

    [Fact]
    public void RequestsSplitAnywhereAreDecodedTheSame()
    {
        using var f = new ShareFixture();
        Directory.CreateDirectory(f.HostPath("dir"));
        File.WriteAllText(f.HostPath("dir/file"), "content!");
        FuseEntryOut dir = f.Client.LookupOk(FuseConstants.RootId, "dir");
        int requestLength = FuseInHeader.Size + "file".Length + 1;
        for (int split = 1; split < requestLength; split++)
        {
            f.Client.RequestSplits = [split, Math.Min(split + 3, requestLength - 1)];
            f.Client.ReplySplits = [split % 24 + 1, 50, 51];
            FuseEntryOut e = f.Client.LookupOk(dir.NodeId, "file");
            Assert.Equal(8UL, e.Attr.FileSize);
        }
        // WRITE data split across many small segments goes straight to pwritev2.
        var (ce, fh) = f.Client.CreateOk(dir.NodeId, "w");
        byte[] data = new byte[5000];
        new Random(1).NextBytes(data);
        f.Client.RequestSplits = Enumerable.Range(1, 200).Select(i => i * 23).ToArray();
        f.Client.ReplySplits = [3, 7];
        Assert.Equal(5000u, f.Client.Write(ce.NodeId, fh, 0, data).Ok().Read<FuseWriteOut>().Length);
        f.Client.ReplySplits = Enumerable.Range(1, 300).Select(i => i * 17).ToArray();
        Assert.Equal(data, f.Client.Read(ce.NodeId, fh, 0, 5000).Ok().Payload);
        Assert.Equal(data, File.ReadAllBytes(f.HostPath("dir/w")));
    }

    [Fact]
    public void RandomGarbageNeverThrows()
    {
        using var f = new ShareFixture();
        var rng = new Random(12345);
        for (int i = 0; i < 3000; i++)
        {
            int length = rng.Next(0, 200);
            byte[] bytes = new byte[length];
            rng.NextBytes(bytes);
            if (length >= 8)
            {
                // Mostly valid lengths and known opcodes, so decoding goes deep.
                BitConverter.TryWriteBytes(bytes.AsSpan(0, 4), (uint)length);
                BitConverter.TryWriteBytes(bytes.AsSpan(4, 4), (uint)rng.Next(1, 54));
            }
            if (length >= 24 && rng.Next(2) == 0)
            {
                BitConverter.TryWriteBytes(bytes.AsSpan(16, 8), (ulong)rng.Next(0, 4));
            }
            f.Client.RequestSplits = rng.Next(3) == 0 ? [rng.Next(1, Math.Max(2, length))] : null;
            f.Client.ReplyCapacity = rng.Next(4) == 0 ? rng.Next(0, 64) : 65536;
            FuseReply reply = f.Client.SendRaw(bytes);
            Assert.True(reply.Returned >= 0 && reply.Returned <= Math.Max(f.Client.ReplyCapacity, 0));
        }
        Assert.Equal(0, f.Server.Stats.Exceptions);
        // Still serving.
        f.Client.ReplyCapacity = 65536;
        f.Client.RequestSplits = null;
        f.Client.Init();
        Assert.Equal(Errno.ENOENT, f.Client.Lookup(FuseConstants.RootId, "nothing").Errno);
    }

    [Fact]
    public void MayBlockFlagsSlowOpcodesOnly()
    {
        static bool Check(FuseOpcode op)
        {
            byte[] req = Request(op, 1, new byte[16]);
            unsafe
            {
                fixed (byte* p = req)
                {
                    var header = FuseRequestHeader.Read([new IoVec(p, 5), new IoVec(p + 5, (nuint)(req.Length - 5))]);
                    return FuseServer.Triage(in header, int.MaxValue) == RequestTriage.MayBlock;
                }
            }
        }
        Assert.True(Check(FuseOpcode.Setlkw));
        Assert.True(Check(FuseOpcode.Fsync));
        Assert.True(Check(FuseOpcode.Syncfs));
        Assert.True(Check(FuseOpcode.Flush));
        Assert.False(Check(FuseOpcode.Lookup));
        Assert.False(Check(FuseOpcode.Read));
        Assert.False(Check(FuseOpcode.Setlk));
        unsafe
        {
            byte b = 0;
            var header = FuseRequestHeader.Read([new IoVec(&b, 1)]);
            Assert.False(header.IsComplete);
            Assert.Equal(RequestTriage.Short, FuseServer.Triage(in header, int.MaxValue));
        }
    }

    [Fact]
    public void TriageFindsBigReadsBySizeAndSlowOpcodes()
    {
        static RequestTriage Check(FuseOpcode op, byte[] args, int split, int largeRead = 1 << 20)
        {
            byte[] req = Request(op, 1, args);
            unsafe
            {
                fixed (byte* p = req)
                {
                    // Split inside the header or inside the size field: the reader must join segments.
                    var header = FuseRequestHeader.Read([new IoVec(p, (nuint)split), new IoVec(p + split, (nuint)(req.Length - split))]);
                    return FuseServer.Triage(in header, largeRead);
                }
            }
        }
        var read = new FuseReadIn { Fh = 3, Offset = 1 << 30, Length = 1 << 20 };
        byte[] readArgs = new byte[FuseReadIn.Size];
        MemoryMarshal.Write(readArgs, in read);
        Assert.Equal(RequestTriage.LargeRead, Check(FuseOpcode.Read, readArgs, 5));
        Assert.Equal(RequestTriage.LargeRead, Check(FuseOpcode.Read, readArgs, FuseInHeader.Size + 18));
        Assert.Equal(RequestTriage.Short, Check(FuseOpcode.Read, readArgs, 5, largeRead: (1 << 20) + 1));

        // A WRITE, or another opcode, with the same size in the same place.
        var write = new FuseWriteIn { Fh = 3, Offset = 4096, Length = 1 << 20 };
        byte[] writeArgs = new byte[FuseWriteIn.Size + 64];
        MemoryMarshal.Write(writeArgs, in write);
        Assert.Equal(RequestTriage.Short, Check(FuseOpcode.Write, writeArgs, FuseInHeader.Size + 18));
        Assert.Equal(RequestTriage.Short, Check(FuseOpcode.Getattr, readArgs, 5));
        Assert.Equal(RequestTriage.MayBlock, Check(FuseOpcode.Fsync, readArgs, 5));
        // A READ cut short before its size field says nothing.
        Assert.Equal(RequestTriage.Short, Check(FuseOpcode.Read, readArgs[..16], 5));
        Assert.Equal(RequestTriage.Short, Check(FuseOpcode.Read, readArgs[..16], 5, largeRead: 0));
    }

    [Fact]
    public void InterruptAndForgetGetNoReply()
    {
        using var f = new ShareFixture();
        Assert.Equal(0, f.Client.Send(FuseOpcode.Interrupt, 0, new FuseArgs().Add(new FuseInterruptIn { Unique = 5 })).Returned);
        Assert.Equal(0, f.Client.Send(FuseOpcode.Forget, 12345, new FuseArgs().Add(new FuseForgetIn { Nlookup = 1 })).Returned);
        Assert.Equal(0, f.Client.BatchForget((999, 1), (1000, 2)).Returned);
        Assert.Equal(1, f.Server.Stats.Interrupts);
    }
}
