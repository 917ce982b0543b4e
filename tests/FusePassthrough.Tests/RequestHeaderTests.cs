using System.Runtime.InteropServices;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Xunit;

namespace Vhostfsd.FusePassthrough.Tests;

/// <summary>The header is read from guest memory once: what the server runs is what that copy says,
/// whatever the guest writes into its buffer between the copy and the run.</summary>
public unsafe class RequestHeaderTests
{
    private const ulong Unique = 0x1234;

    private static byte[] Pinned(FuseOpcode opcode, ulong nodeId, ReadOnlySpan<byte> args)
    {
        byte[] bytes = GC.AllocateArray<byte>(FuseInHeader.Size + args.Length, pinned: true);
        var h = new FuseInHeader { Len = (uint)bytes.Length, Opcode = (uint)opcode, Unique = Unique, NodeId = nodeId };
        MemoryMarshal.Write(bytes, in h);
        args.CopyTo(bytes.AsSpan(FuseInHeader.Size));
        return bytes;
    }

    [Fact]
    public void HandleRequestRunsTheCopiedHeaderNotWhatTheGuestWroteAfterwards()
    {
        using var f = new ShareFixture();
        var (entry, fh) = f.Client.CreateOk(FuseConstants.RootId, "file");
        f.Client.Release(entry.NodeId, fh).Ok();
        byte[] request = Pinned(FuseOpcode.Getattr, entry.NodeId, new byte[FuseGetattrIn.Size]);
        byte[] reply = GC.AllocateArray<byte>(4096, pinned: true);
        fixed (byte* req = request)
        fixed (byte* rep = reply)
        {
            IoVec[] readable = [new IoVec(req, 7), new IoVec(req + 7, (nuint)(request.Length - 7))];
            IoVec[] writable = [new IoVec(rep, (nuint)reply.Length)];
            var header = FuseRequestHeader.Read(readable);
            Assert.Equal(RequestTriage.Short, FuseServer.Triage(in header, int.MaxValue));

            // The guest rewrites every field of the header once the device has copied it: a blocking
            // opcode, another request's unique, the root instead of the file, a wrong length.
            var forged = new FuseInHeader { Len = 9999, Opcode = (uint)FuseOpcode.Setlkw, Unique = 99, NodeId = FuseConstants.RootId, Uid = 1, Gid = 1, Pid = 1 };
            MemoryMarshal.Write(request, in forged);

            int n = f.Server.HandleRequest(in header, readable, writable);
            var out_ = MemoryMarshal.Read<FuseOutHeader>(reply);
            Assert.Equal(0, out_.Error);
            Assert.Equal(Unique, out_.Unique);
            Assert.Equal(FuseOutHeader.Size + FuseAttrOut.Size, n);
            var attr = MemoryMarshal.Read<FuseAttrOut>(reply.AsSpan(FuseOutHeader.Size)).Attr;
            Assert.Equal(new FileInfo(f.HostPath("file")).Length, (long)attr.FileSize);
            Assert.Equal(0x8000u, attr.Mode & 0xF000u);
        }
        Assert.Equal(0, f.Server.Stats.Malformed);
    }

    [Fact]
    public void TriageFollowsTheCopyOfAReadsSize()
    {
        var read = new FuseReadIn { Fh = 3, Offset = 0, Length = 1 << 20 };
        byte[] args = new byte[FuseReadIn.Size];
        MemoryMarshal.Write(args, in read);
        byte[] request = Pinned(FuseOpcode.Read, 5, args);
        fixed (byte* req = request)
        {
            IoVec[] readable = [new IoVec(req, (nuint)request.Length)];
            var header = FuseRequestHeader.Read(readable);
            request.AsSpan().Clear();
            Assert.True(header.IsComplete);
            Assert.Equal(FuseOpcode.Read, header.Opcode);
            Assert.True(header.HasReadSize);
            Assert.Equal(1u << 20, header.ReadSize);
            Assert.Equal(RequestTriage.LargeRead, FuseServer.Triage(in header, 128 * 1024));
        }
    }

    [Fact]
    public void ARequestTooShortForAHeaderIsAnsweredEinvalWithItsUnique()
    {
        using var f = new ShareFixture();
        byte[] request = Pinned(FuseOpcode.Getattr, FuseConstants.RootId, []);
        byte[] reply = GC.AllocateArray<byte>(64, pinned: true);
        fixed (byte* req = request)
        fixed (byte* rep = reply)
        {
            // 20 bytes, split inside the unique: no whole header, but its unique is there.
            IoVec[] readable = [new IoVec(req, 11), new IoVec(req + 11, 9)];
            var header = FuseRequestHeader.Read(readable);
            Assert.False(header.IsComplete);
            Assert.Equal(Unique, header.Unique);
            Assert.Equal(FuseOutHeader.Size, f.Server.HandleRequest(in header, readable, [new IoVec(rep, 64)]));
            var out_ = MemoryMarshal.Read<FuseOutHeader>(reply);
            Assert.Equal(-(int)Errno.EINVAL, out_.Error);
            Assert.Equal(Unique, out_.Unique);
        }
    }

    [Fact]
    public void AHeaderCopiedFromOtherSegmentsIsRefused()
    {
        using var f = new ShareFixture();
        byte[] request = Pinned(FuseOpcode.Getattr, FuseConstants.RootId, new byte[FuseGetattrIn.Size]);
        byte[] reply = GC.AllocateArray<byte>(4096, pinned: true);
        fixed (byte* req = request)
        fixed (byte* rep = reply)
        {
            var header = FuseRequestHeader.Read([new IoVec(req, (nuint)request.Length)]);
            long malformed = f.Server.Stats.Malformed;
            int n = f.Server.HandleRequest(in header, [new IoVec(req, FuseInHeader.Size)], [new IoVec(rep, 4096)]);
            Assert.Equal(FuseOutHeader.Size, n);
            Assert.Equal(-(int)Errno.EINVAL, MemoryMarshal.Read<FuseOutHeader>(reply).Error);
            Assert.Equal(malformed + 1, f.Server.Stats.Malformed);
        }
    }
}
