using System.Runtime.InteropServices;
using Vhostfsd.FusePassthrough;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Xunit;

namespace Vhostfsd.GuestKernelShim.Tests;

/// <summary>Direct I/O with user buffers (<see cref="GuestBuffer"/>): the same behaviour on every transport — data
/// written from a user buffer reads back through both APIs, short reads at end of file, requests split at
/// max_read / max_write — checked against vhostfsd over its socket, a vhost-user device in this process, and the
/// in-process channel.</summary>
public abstract class UserBufferSuite : IDisposable
{
    protected abstract FuseFs Fs { get; }

    public virtual void Dispose()
    {
    }

    protected static byte[] Pattern(int length, int seed)
    {
        var data = new byte[length];
        new Random(seed).NextBytes(data);
        return data;
    }

    private FuseFile CreateFile(string name)
    {
        Assert.Equal(Errno.OK, Fs.Create(Fs.Root, name, Libc.O_RDWR | Libc.O_CREAT, 0x1A4, out _, out var file));
        return file!;
    }

    [Fact]
    public void DataWrittenFromAUserBufferReadsBackThroughBothApis()
    {
        var file = CreateFile("roundtrip");
        var data = Pattern(200_000, 1);
        using var source = Fs.AllocateUserBuffer(data.Length);
        Assert.True(source.Span.IndexOfAnyExcept((byte)0) < 0, "a new user buffer is not zeroed");
        data.CopyTo(source.Span);
        Assert.Equal(Errno.OK, Fs.Write(file, source, 0, data.Length, 0, out int written));
        Assert.Equal(data.Length, written);

        // The copying API sees what the user buffer wrote.
        var copied = new byte[data.Length];
        Assert.Equal(Errno.OK, Fs.Read(file, copied, 0, out int read));
        Assert.Equal(data.Length, read);
        Assert.Equal(data, copied);

        // A user buffer sees what the copying API wrote, at an offset inside the buffer.
        var more = Pattern(70_000, 2);
        Assert.Equal(Errno.OK, Fs.Write(file, more, 50_000, out written));
        Assert.Equal(more.Length, written);
        using var destination = Fs.AllocateUserBuffer(300_000);
        Assert.Equal(Errno.OK, Fs.Read(file, destination, 1000, 200_000, 0, out read));
        Assert.Equal(200_000, read);
        var expected = (byte[])data.Clone();
        more.CopyTo(expected, 50_000);
        Assert.True(destination.Span.Slice(1000, 200_000).SequenceEqual(expected), "READ into the user buffer returned other bytes");
        Assert.True(destination.Span[..1000].IndexOfAnyExcept((byte)0) < 0, "READ wrote before its range of the user buffer");
        Assert.True(destination.Span[201_000..].IndexOfAnyExcept((byte)0) < 0, "READ wrote past its range of the user buffer");
        Assert.Equal(0, destination.RequestsInFlight);
        Assert.Equal(Errno.OK, Fs.Release(file));
    }

    [Theory]
    [InlineData(0, 8192, 5000)]
    [InlineData(4096, 8192, 904)]
    [InlineData(5000, 8192, 0)]
    [InlineData(9000, 4096, 0)]
    [InlineData(0, 5000, 5000)]
    public void AReadIntoAUserBufferIsShortAtEndOfFile(long offset, int length, int expected)
    {
        var file = CreateFile("short");
        var data = Pattern(5000, 3);
        Assert.Equal(Errno.OK, Fs.Write(file, data, 0, out _));
        using var buffer = Fs.AllocateUserBuffer(length);
        buffer.Span.Fill(0xEE);

        // One request (FuseConn) and the splitting file API agree.
        var reply = Fs.Conn.Read(file.Node.NodeId, file.Fh, offset, buffer, 0, length, FuseCaller.Root, (uint)file.Flags);
        Assert.True(reply.IsOk, reply.ToString());
        Assert.Equal(expected, reply.Length);
        Assert.True(buffer.Span[..expected].SequenceEqual(data.AsSpan((int)Math.Min(offset, data.Length), expected)));
        Assert.True(buffer.Span[expected..].IndexOfAnyExcept((byte)0xEE) < 0, "bytes past the short reply were touched");

        Assert.Equal(Errno.OK, Fs.Read(file, buffer, 0, length, offset, out int read));
        Assert.Equal(expected, read);
        Assert.Equal(Errno.OK, Fs.Release(file));
    }

    [Fact]
    public void ABufferLargerThanOneRequestIsSplitAtMaxWriteAndMaxRead()
    {
        var file = CreateFile("split");
        int length = 2 * Fs.Conn.MaxWriteSize + 12345;
        var data = Pattern(length, 4);
        using var buffer = Fs.AllocateUserBuffer(length);
        data.CopyTo(buffer.Span);
        long writesBefore = CountRequests(FuseOpcode.Write);
        Assert.Equal(Errno.OK, Fs.Write(file, buffer, 0, length, 0, out int written));
        Assert.Equal(length, written);
        AssertRequests(FuseOpcode.Write, writesBefore, 3);

        buffer.Span.Clear();
        int readLength = 2 * Fs.Conn.MaxReadSize + 1;
        Assert.True(readLength <= length);
        long readsBefore = CountRequests(FuseOpcode.Read);
        Assert.Equal(Errno.OK, Fs.Read(file, buffer, 0, readLength, 0, out int read));
        Assert.Equal(readLength, read);
        AssertRequests(FuseOpcode.Read, readsBefore, 3);
        Assert.True(buffer.Span[..readLength].SequenceEqual(data.AsSpan(0, readLength)));

        // One request may not carry more than the connection allows: the caller splits (as above), FuseConn refuses.
        Assert.Throws<ArgumentOutOfRangeException>(() => Fs.Conn.Read(file.Node.NodeId, file.Fh, 0, buffer, 0, Fs.Conn.MaxReadSize + 1, FuseCaller.Root));
        Assert.Throws<ArgumentOutOfRangeException>(() => Fs.Conn.Write(file.Node.NodeId, file.Fh, 0, buffer, 0, Fs.Conn.MaxWriteSize + 1, FuseCaller.Root, out _));
        Assert.Throws<ArgumentOutOfRangeException>(() => Fs.Read(file, buffer, 1, length, 0, out _));
        Assert.Equal(Errno.OK, Fs.Release(file));
    }

    [Fact]
    public void ADisposedBufferIsEfaultAndABufferOfAnotherConnectionIsRefused()
    {
        var file = CreateFile("gone");
        var buffer = Fs.AllocateUserBuffer(4096);
        buffer.Dispose();
        Assert.True(buffer.IsDisposed);
        Assert.Throws<ObjectDisposedException>(() => buffer.Span.Length);
        Assert.Equal(Errno.EFAULT, Fs.Read(file, buffer, 0, 4096, 0, out _));
        Assert.Equal(Errno.EFAULT, Fs.Write(file, buffer, 0, 4096, 0, out _));

        using var other = new InProcessFuseServer(new PassthroughOptions { SharedDir = Directory.CreateTempSubdirectory("shim-ub-other-").FullName });
        using var otherFs = other.Mount();
        using var foreign = otherFs.AllocateUserBuffer(4096);
        Assert.Throws<ArgumentException>(() => Fs.Conn.Read(file.Node.NodeId, file.Fh, 0, foreign, 0, 4096, FuseCaller.Root));
        Assert.Equal(Errno.OK, Fs.Release(file));
    }

    private void AssertRequests(FuseOpcode opcode, long before, int expected)
    {
        // Some targets count a request just after its waiter wakes: give the count a moment to catch up.
        SpinWait.SpinUntil(() => CountRequests(opcode) - before >= expected, TimeSpan.FromSeconds(5));
        Thread.Sleep(20);
        Assert.Equal(expected, CountRequests(opcode) - before);
    }

    /// <summary>Requests of <paramref name="opcode"/> the daemon has seen so far (targets that cannot tell opcodes
    /// apart count every request; the test sends nothing else meanwhile).</summary>
    protected abstract long CountRequests(FuseOpcode opcode);
}

/// <summary>The suite against vhostfsd over its real socket.</summary>
public sealed class VhostfsdUserBufferTests : UserBufferSuite
{
    private readonly DaemonProcess _daemon;
    private readonly FuseFs _fs;

    public VhostfsdUserBufferTests()
    {
        _daemon = DaemonProcess.StartVhostfsd(null, "--sandbox", "none", "--cache", "none");
        _fs = _daemon.Mount();
    }

    protected override FuseFs Fs => _fs;

    // vhostfsd runs in another process: count what the driver put on the request queues instead (one chain per request).
    protected override long CountRequests(FuseOpcode opcode) => ((VirtioFsBackend)_fs.Conn.Transport).CompletedOn(1);

    [Fact]
    public void TheBufferIsGuestMemoryAndRequestBlocksAreAllReturned()
    {
        var backend = (VirtioFsBackend)_fs.Conn.Transport;
        long before = backend.UserBufferBytesInUse;
        var buffer = _fs.AllocateUserBuffer(1 << 20);
        Assert.True(buffer.IsGuestMemory);
        Assert.Equal(0ul, buffer.GuestAddress % 4096);
        Assert.Equal(before + (1 << 20), backend.UserBufferBytesInUse);
        Assert.Equal(Errno.OK, _fs.Create(_fs.Root, "mem", Libc.O_RDWR | Libc.O_CREAT, 0x1A4, out _, out var file));
        Pattern(1 << 20, 9).CopyTo(buffer.Span);
        Assert.Equal(Errno.OK, _fs.Write(file!, buffer, 0, 1 << 20, 0, out int written));
        Assert.Equal(1 << 20, written);
        Assert.Equal(Errno.OK, _fs.Read(file!, buffer, 0, 1 << 20, 0, out int read));
        Assert.Equal(1 << 20, read);
        Assert.Equal(Pattern(1 << 20, 9), File.ReadAllBytes(Path.Combine(_daemon.SharedDir, "mem")));
        Assert.Equal(Errno.OK, _fs.Release(file!));
        Assert.True(_fs.Conn.Quiesce(TimeSpan.FromSeconds(20)));
        Assert.True(ShimWait.HeapReturned(backend), "blocks of the request heap are still in use");
        buffer.Dispose();
        Assert.Equal(before, backend.UserBufferBytesInUse);
    }

    public override void Dispose()
    {
        _fs.Dispose();
        _daemon.Dispose();
    }
}

/// <summary>The suite on the in-process channel (FuseServer behind /dev/fuse semantics): host buffers.</summary>
public sealed class InProcessUserBufferTests : UserBufferSuite
{
    private readonly InProcessFuseServer _server;
    private readonly FuseFs _fs;

    public InProcessUserBufferTests()
    {
        _server = new InProcessFuseServer(new PassthroughOptions { SharedDir = Directory.CreateTempSubdirectory("shim-ub-").FullName });
        _fs = _server.Mount();
    }

    protected override FuseFs Fs => _fs;

    protected override long CountRequests(FuseOpcode opcode) => _server.Served;

    [Fact]
    public void TheBufferIsHostMemory()
    {
        using var buffer = _fs.AllocateUserBuffer(100);
        Assert.False(buffer.IsGuestMemory);
        Assert.Throws<InvalidOperationException>(() => buffer.GuestAddress);
        Assert.Equal(100, buffer.Span.Length);
    }

    public override void Dispose()
    {
        _fs.Dispose();
        _server.Dispose();
    }
}

/// <summary>The suite against a vhost-user-fs device in this process, which records every chain's buffers as guest
/// addresses: the user buffer's own pages are the data descriptors, and a buffer stays pinned while a request is
/// in flight.</summary>
public sealed class VirtioUserBufferTests : UserBufferSuite
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(20);
    private readonly TestFsDevice _device;
    private readonly FuseFs _fs;

    public VirtioUserBufferTests()
    {
        _device = new TestFsDevice(requestQueues: 1);
        _fs = FuseFs.Mount(VirtioFsBackend.Connect(_device.SocketPath,
            new VirtioFsBackendOptions { Register = false, QueueSize = 256, MemorySize = 64UL << 20 }));
    }

    protected override FuseFs Fs => _fs;

    private VirtioFsBackend Backend => (VirtioFsBackend)_fs.Conn.Transport;

    protected override long CountRequests(FuseOpcode opcode) => _device.Chains.Count(c => c.Opcode == opcode);

    private static bool Inside((ulong Gpa, ulong Length) segment, GuestBuffer buffer)
        => segment.Gpa >= buffer.GuestAddress && segment.Gpa - buffer.GuestAddress + segment.Length <= (ulong)buffer.Length;

    [Fact]
    public void TheUserBuffersGuestPagesAreTheDataDescriptors()
    {
        Assert.Equal(Errno.OK, _fs.Create(_fs.Root, "direct", Libc.O_RDWR | Libc.O_CREAT, 0x1A4, out _, out var file));
        int length = 3 * _fs.Conn.MaxWriteSize / 2;
        using var buffer = _fs.AllocateUserBuffer(length);
        Assert.True(buffer.IsGuestMemory);
        Pattern(length, 5).CopyTo(buffer.Span);

        _device.Chains.Clear();
        Assert.Equal(Errno.OK, _fs.Write(file!, buffer, 0, length, 0, out int written));
        Assert.Equal(length, written);
        var writes = _device.Chains.Where(c => c.Opcode == FuseOpcode.Write).ToArray();
        Assert.Equal(2, writes.Length);
        int done = 0;
        foreach (var chain in writes)
        {
            // fuse_in_header + fuse_write_in from the heap, then the data: the user buffer itself, at this request's offset.
            Assert.Equal(2, chain.ReadableSegments.Length);
            Assert.False(Inside(chain.ReadableSegments[0], buffer));
            Assert.Equal((ulong)(FuseInHeader.Size + FuseWriteIn.Size), chain.ReadableSegments[0].Length);
            Assert.Equal(buffer.GuestAddress + (ulong)done, chain.ReadableSegments[1].Gpa);
            Assert.True(Inside(chain.ReadableSegments[1], buffer));
            Assert.All(chain.WritableSegments, s => Assert.False(Inside(s, buffer)));
            done += (int)chain.ReadableSegments[1].Length;
        }
        Assert.Equal(length, done);

        // READ: fuse_out_header from the heap, then the user buffer as the writable data descriptor.
        using var target = _fs.AllocateUserBuffer(length);
        _device.Chains.Clear();
        Assert.Equal(Errno.OK, _fs.Read(file!, target, 0, length, 0, out int read));
        Assert.Equal(length, read);
        Assert.True(target.Span.SequenceEqual(buffer.Span));
        var reads = _device.Chains.Where(c => c.Opcode == FuseOpcode.Read).ToArray();
        Assert.Equal(2, reads.Length);
        done = 0;
        foreach (var chain in reads)
        {
            Assert.Equal(2, chain.WritableSegments.Length);
            Assert.Equal((ulong)FuseOutHeader.Size, chain.WritableSegments[0].Length);
            Assert.False(Inside(chain.WritableSegments[0], target));
            Assert.Equal(target.GuestAddress + (ulong)done, chain.WritableSegments[1].Gpa);
            Assert.True(Inside(chain.WritableSegments[1], target));
            Assert.All(chain.ReadableSegments, s => Assert.False(Inside(s, target)));
            done += (int)chain.WritableSegments[1].Length;
        }
        Assert.Equal(length, done);

        // A zero-length READ carries no data descriptor (FuseConn attaches a user buffer only for a
        // non-empty range): only fuse_out_header is writable.
        _device.Chains.Clear();
        Assert.Equal(0, _fs.Conn.Read(file!.Node.NodeId, file.Fh, 0, target, 0, 0, FuseCaller.Root).Length);
        var empty = Assert.Single(_device.Chains, c => c.Opcode == FuseOpcode.Read);
        Assert.Equal((ulong)FuseOutHeader.Size, Assert.Single(empty.WritableSegments).Length);

        Assert.Equal(Errno.OK, _fs.Release(file!));
        Assert.True(_fs.Conn.Quiesce(Timeout));
        // No staging block of the payload's size was taken from the request heap either.
        Assert.True(ShimWait.HeapReturned(Backend), "blocks of the request heap are still in use");
    }

    [Fact]
    public void DisposingABufferWhileARequestIsInFlightDefersTheFree()
    {
        Assert.Equal(Errno.OK, _fs.Create(_fs.Root, "held", Libc.O_RDWR | Libc.O_CREAT, 0x1A4, out _, out var file));
        var data = Pattern(8192, 6);
        Assert.Equal(Errno.OK, _fs.Write(file!, data, 0, out _));
        long before = Backend.UserBufferBytesInUse;
        var buffer = _fs.AllocateUserBuffer(8192);
        ulong address = buffer.GuestAddress;
        _device.Hold = (q, op) => op == FuseOpcode.Read;
        FuseReply reply = default;
        var reader = new Thread(() => reply = _fs.Conn.Read(file!.Node.NodeId, file.Fh, 0, buffer, 0, 8192, FuseCaller.Root));
        reader.Start();
        Assert.True(SpinWait.SpinUntil(() => _device.HeldCount == 1, Timeout));
        Assert.Equal(1, buffer.RequestsInFlight);

        buffer.Dispose();
        Assert.True(buffer.IsDisposed);
        // The pages stay the request's: not given back, not handed to a new buffer.
        Assert.Equal(before + 8192, Backend.UserBufferBytesInUse);
        using (var other = _fs.AllocateUserBuffer(8192))
        {
            Assert.True(other.GuestAddress + 8192 <= address || other.GuestAddress >= address + 8192,
                $"a new buffer at 0x{other.GuestAddress:x} overlaps the pinned one at 0x{address:x}");
        }

        // The daemon answers into the pinned pages; only then do they go back.
        _device.Hold = null;
        _device.AnswerHeld();
        Assert.True(reader.Join(Timeout));
        Assert.True(reply.IsOk, reply.ToString());
        Assert.Equal(8192, reply.Length);
        Assert.True(SpinWait.SpinUntil(() => Backend.UserBufferBytesInUse == before, Timeout), $"{Backend.UserBufferBytesInUse} bytes still held");
        Assert.Equal(0, buffer.RequestsInFlight);
        Assert.Equal(Errno.OK, _fs.Release(file!));
    }

    [Fact]
    public void AnAbortedRequestKeepsItsPagesPinnedWhileTheDaemonHoldsTheChain()
    {
        Assert.Equal(Errno.OK, _fs.Create(_fs.Root, "aborted", Libc.O_RDWR | Libc.O_CREAT, 0x1A4, out _, out var file));
        long before = Backend.UserBufferBytesInUse;
        var buffer = _fs.AllocateUserBuffer(4096);
        _device.Hold = (q, op) => op == FuseOpcode.Write;
        FuseReply reply = default;
        var writer = new Thread(() => reply = _fs.Conn.Write(file!.Node.NodeId, file.Fh, 0, buffer, 0, 4096, FuseCaller.Root, out _));
        writer.Start();
        Assert.True(SpinWait.SpinUntil(() => _device.HeldCount == 1, Timeout));

        // The connection ends under the request: the caller gets ENOTCONN, but the chain is still the daemon's.
        _fs.Conn.Abort(Errno.ENOTCONN, TimeSpan.Zero);
        Assert.True(writer.Join(Timeout));
        Assert.Equal(Errno.ENOTCONN, reply.Errno);
        buffer.Dispose();
        Assert.Equal(1, buffer.RequestsInFlight);
        Assert.Equal(before + 4096, Backend.UserBufferBytesInUse);
    }

    [Fact]
    public void ACancelledReadKeepsItsPagesUntilTheLateReply()
    {
        Assert.Equal(Errno.OK, _fs.Create(_fs.Root, "late", Libc.O_RDWR | Libc.O_CREAT, 0x1A4, out _, out var file));
        var data = Pattern(4096, 8);
        Assert.Equal(Errno.OK, _fs.Write(file!, data, 0, out _));
        var buffer = _fs.AllocateUserBuffer(4096);
        _device.Hold = (q, op) => op == FuseOpcode.Read;
        using var cts = new CancellationTokenSource();
        FuseReply reply = default;
        var reader = new Thread(() => reply = _fs.Conn.Read(file!.Node.NodeId, file.Fh, 0, buffer, 0, 4096, FuseCaller.Root, cancellation: cts.Token));
        reader.Start();
        Assert.True(SpinWait.SpinUntil(() => _device.HeldCount == 1, Timeout));
        cts.Cancel();
        // INTERRUPT goes out on hiprio; the request waits for the daemon's answer (Linux request_wait_answer).
        Assert.True(SpinWait.SpinUntil(() => _fs.Conn.InterruptsSent == 1, Timeout));
        Assert.True(reader.IsAlive);
        Assert.Equal(1, buffer.RequestsInFlight);
        _device.Hold = null;
        _device.AnswerHeld();
        Assert.True(reader.Join(Timeout));
        Assert.True(reply.IsOk, reply.ToString());
        Assert.True(buffer.Span.SequenceEqual(data));
        Assert.True(SpinWait.SpinUntil(() => buffer.RequestsInFlight == 0, Timeout));
        buffer.Dispose();
        Assert.Equal(Errno.OK, _fs.Release(file!));
    }

    public override void Dispose()
    {
        _fs.Dispose();
        _device.Dispose();
    }
}
