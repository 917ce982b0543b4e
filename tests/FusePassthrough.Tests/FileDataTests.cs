using System.Runtime.InteropServices;
using System.Security.Cryptography;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Xunit;

namespace Vhostfsd.FusePassthrough.Tests;

/// <summary>READ and WRITE data by reference (<see cref="ReplyFileData"/>, <see cref="RequestFileData"/>),
/// as a transport that offers them sees the server: stand-ins that pread and pwrite where the
/// /dev/fuse transport splices, so that what the server asks of a transport, and its fallbacks to
/// the segments, are checked without /dev/fuse.</summary>
public sealed unsafe class FileDataTests
{
    private const ulong Root = FuseConstants.RootId;

    /// <summary>Takes READ data by pread into its own memory.</summary>
    private sealed class TakenReplyData(int capacity) : ReplyFileData
    {
        public byte[] Taken { get; } = GC.AllocateArray<byte>(2 << 20, pinned: true);
        public bool Fail { get; set; }
        public int Moves { get; private set; }

        public override int Capacity => capacity;

        protected override int Move(int fd, long offset, int length)
        {
            if (Fail)
            {
                return -(int)Errno.EINVAL;
            }
            Moves++;
            fixed (byte* p = Taken)
            {
                nint n = Libc.Pread(fd, p + Length, (nuint)length, offset);
                return n < 0 ? Libc.NegErrno : (int)n;
            }
        }
    }

    /// <summary>Holds WRITE data; moves it by pwrite, or hands it over as a segment.</summary>
    private sealed class HeldRequestData : RequestFileData
    {
        private readonly byte[] _data;
        private readonly GCHandle _pin;
        private int _taken;
        private readonly IoVec[] _segment = new IoVec[1];

        public HeldRequestData(byte[] data)
        {
            _data = data;
            _pin = GCHandle.Alloc(data, GCHandleType.Pinned);
            Hold(data.Length);
        }

        public bool Fail { get; set; }
        public int Moves { get; private set; }
        public int Fetches { get; private set; }

        protected override int Move(int fd, long offset, int length)
        {
            if (Fail)
            {
                return -(int)Errno.EINVAL;
            }
            Moves++;
            nint n = Libc.Pwrite(fd, (byte*)_pin.AddrOfPinnedObject() + _taken, (nuint)length, offset);
            if (n > 0)
            {
                _taken += (int)n;
            }
            return n < 0 ? Libc.NegErrno : (int)n;
        }

        protected override bool Fetch(int length, out ReadOnlySpan<IoVec> segments)
        {
            Fetches++;
            _segment[0] = new IoVec((byte*)_pin.AddrOfPinnedObject() + _taken, (nuint)length);
            segments = _segment;
            return true;
        }
    }

    private static FuseReply Send(ShareFixture f, byte[] request, ReplyFileData? reply, RequestFileData? held)
    {
        var client = new FuseTestClient((readable, writable) =>
        {
            var header = FuseRequestHeader.Read(readable);
            return f.Server.HandleRequest(in header, readable, writable, reply, held);
        });
        return client.SendRaw(request);
    }

    private static byte[] ReadRequest(ulong node, ulong fh, ulong offset, uint size)
    {
        var read = new FuseReadIn { Fh = fh, Offset = offset, Length = size };
        return Request(FuseOpcode.Read, node, MemoryMarshal.AsBytes(new ReadOnlySpan<FuseReadIn>(in read)), 0);
    }

    /// <summary>A WRITE of <paramref name="held"/> bytes whose data is not in the request's bytes.</summary>
    private static byte[] WriteHeaders(ulong node, ulong fh, ulong offset, int held, int openFlags = 0)
    {
        var write = new FuseWriteIn { Fh = fh, Offset = offset, Length = (uint)held, Flags = (uint)openFlags };
        return Request(FuseOpcode.Write, node, MemoryMarshal.AsBytes(new ReadOnlySpan<FuseWriteIn>(in write)), held);
    }

    /// <summary>A file "f" of <paramref name="length"/> random bytes, looked up and opened read-only.</summary>
    private static (ulong Node, ulong Fh, byte[] Data) OpenRandomFile(ShareFixture f, int length)
    {
        byte[] data = RandomNumberGenerator.GetBytes(length);
        File.WriteAllBytes(f.HostPath("f"), data);
        ulong node = f.Client.LookupOk(Root, "f").NodeId;
        return (node, f.Client.Open(node, Libc.O_RDONLY).Ok().Read<FuseOpenOut>().Fh, data);
    }

    private static byte[] Request(FuseOpcode opcode, ulong node, ReadOnlySpan<byte> arguments, int held)
    {
        var header = new FuseInHeader { Len = (uint)(FuseInHeader.Size + arguments.Length + held), Opcode = (uint)opcode, Unique = 7, NodeId = node };
        byte[] request = new byte[FuseInHeader.Size + arguments.Length];
        MemoryMarshal.Write(request, in header);
        arguments.CopyTo(request.AsSpan(FuseInHeader.Size));
        return request;
    }

    [Fact]
    public void A_read_appends_the_file_data_to_the_transport_and_counts_it_in_the_reply_length()
    {
        using var f = new ShareFixture();
        var (node, fh, data) = OpenRandomFile(f, 300_000);

        var taken = new TakenReplyData(FuseServer.MaxWrite);
        FuseReply reply = Send(f, ReadRequest(node, fh, 4097, 200_000), taken, null);
        Assert.Equal(0, reply.Header.Error);
        Assert.Equal(FuseOutHeader.Size + 200_000, reply.Returned);
        Assert.Equal(FuseOutHeader.Size, taken.Start);
        Assert.Equal(200_000, taken.Length);
        Assert.True(data.AsSpan(4097, 200_000).SequenceEqual(taken.Taken.AsSpan(0, 200_000)));

        // Across the end of the file: short, as a copied read.
        taken.Reset();
        reply = Send(f, ReadRequest(node, fh, 250_000, 100_000), taken, null);
        Assert.Equal(FuseOutHeader.Size + 50_000, reply.Returned);
        Assert.Equal(50_000, taken.Length);
        Assert.True(data.AsSpan(250_000).SequenceEqual(taken.Taken.AsSpan(0, 50_000)));

        // Past it: an empty reply, nothing appended.
        taken.Reset();
        reply = Send(f, ReadRequest(node, fh, 400_000, 4096), taken, null);
        Assert.Equal(FuseOutHeader.Size, reply.Returned);
        Assert.Equal(-1, taken.Start);
    }

    [Fact]
    public void A_read_the_transport_cannot_take_is_copied_into_the_reply()
    {
        using var f = new ShareFixture();
        var (node, fh, data) = OpenRandomFile(f, 100_000);

        // The move fails: nothing appended, the bytes come in the reply.
        var failing = new TakenReplyData(FuseServer.MaxWrite) { Fail = true };
        FuseReply reply = Send(f, ReadRequest(node, fh, 3, 90_000), failing, null);
        Assert.Equal(-1, failing.Start);
        Assert.True(data.AsSpan(3, 90_000).SequenceEqual(reply.Payload));

        // More than the transport carries: copied, not split.
        var small = new TakenReplyData(65_536);
        reply = Send(f, ReadRequest(node, fh, 0, 90_000), small, null);
        Assert.Equal(0, small.Moves);
        Assert.True(data.AsSpan(0, 90_000).SequenceEqual(reply.Payload));

        // An error: the data is not asked for.
        reply = Send(f, ReadRequest(node, fh + 1000, 0, 10), small, null);
        Assert.Equal(Errno.EBADF, reply.Errno);
        Assert.Equal(-1, small.Start);
    }

    [Fact]
    public void A_write_moves_the_held_data_into_the_file_or_fetches_it_when_it_cannot()
    {
        using var f = new ShareFixture();
        var (entry, fh) = f.Client.CreateOk(Root, "w");
        byte[] data = RandomNumberGenerator.GetBytes(200_000);

        var held = new HeldRequestData(data[..150_000]);
        FuseReply reply = Send(f, WriteHeaders(entry.NodeId, fh, 0, 150_000), null, held);
        Assert.Equal(150_000u, reply.Ok().Read<FuseWriteOut>().Length);
        Assert.True(held.Moves > 0);
        Assert.Equal(0, held.Fetches);
        Assert.Equal(0, held.Length);

        // The move fails: the data is fetched and written from memory.
        held = new HeldRequestData(data[150_000..]) { Fail = true };
        reply = Send(f, WriteHeaders(entry.NodeId, fh, 150_000, 50_000), null, held);
        Assert.Equal(50_000u, reply.Ok().Read<FuseWriteOut>().Length);
        Assert.Equal(1, held.Fetches);
        Assert.Equal(data, File.ReadAllBytes(f.HostPath("w")));

        // An append is never moved (splice cannot append atomically).
        held = new HeldRequestData(data[..1000]);
        reply = Send(f, WriteHeaders(entry.NodeId, fh, 0, 1000, Libc.O_APPEND), null, held);
        Assert.Equal(1000u, reply.Ok().Read<FuseWriteOut>().Length);
        Assert.Equal(0, held.Moves);
        Assert.Equal(1, held.Fetches);
        Assert.Equal(data.Concat(data[..1000]).ToArray(), File.ReadAllBytes(f.HostPath("w")));

        // An error leaves the data held, for the transport to drop; a length that does not match is malformed.
        held = new HeldRequestData(data[..1000]);
        Assert.Equal(Errno.EBADF, Send(f, WriteHeaders(entry.NodeId, fh + 1000, 0, 1000), null, held).Errno);
        Assert.Equal(1000, held.Length);
        held = new HeldRequestData(data[..1000]);
        byte[] lying = WriteHeaders(entry.NodeId, fh, 0, 999);
        Assert.Equal(Errno.EINVAL, Send(f, lying, null, held).Errno);
        Assert.Equal(0, held.Moves);
    }
}
