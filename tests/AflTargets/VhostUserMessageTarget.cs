using System.Buffers.Binary;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Vhostfsd.VhostUser;

namespace Vhostfsd.AflTargets;

/// <summary>vhost-user message decoding and the back-end's state machine: the input is the byte stream
/// a front-end sends (12-byte headers and payloads, up to 64 messages, 60 KiB), fed to a
/// <see cref="VhostUserBackend"/> over a socketpair. The harness plays a VMM that is honest about
/// descriptors: each message carries the fds its request and payload call for (a memfd per memory
/// region, an eventfd for kick/call/err unless the payload says none, a socket for the back-end
/// channel), and a region never extends past its memfd. Rules: the session ends (disconnected or a
/// protocol error), nothing escapes, and afterwards no ring worker runs and every fd is closed.</summary>
public sealed class VhostUserMessageTarget : AflTarget
{
    private const int MaxMessages = 64;
    private const int MaxInput = 60 * 1024;
    private const ulong MemFdSize = 64 << 20;

    public override string Name => "vhost-user";

    // The rings' own code (Vring, VringWorker) runs on worker threads, whose interleaving would make
    // edges that no input decides: only the thread that decodes and dispatches is instrumented.
    public override string[] Instrument => ["Vhostfsd.VhostUser.dll Vhostfsd.VhostUser.VhostUserBackend Vhostfsd.VhostUser.VhostUserChannel Vhostfsd.VhostUser.VhostUserMessage Vhostfsd.VhostUser.VringAddressRules Vhostfsd.VhostUser.Wire"];

    public override void Run(ReadOnlySpan<byte> input)
    {
        if (input.Length > MaxInput)
        {
            input = input[..MaxInput];
        }
        var (ours, theirs) = UnixSocket.Pair();
        var owned = new List<IDisposable>();
        var device = new VhostUserTestDevice(queueCount: 2, maxQueueSize: 256);
        var backend = new VhostUserBackend(theirs, device);
        try
        {
            try
            {
                Send(ours, input, owned);
            }
            catch (PosixException e) when (e.Errno is Errno.EPIPE or Errno.ECONNRESET)
            {
                // The stream ran past what fits; the session sees it cut.
            }
            Libc.Shutdown(ours.Fd, Libc.SHUT_WR);
            var end = backend.Run();
            if (end is not (VhostUserSessionEnd.Disconnected or VhostUserSessionEnd.ProtocolError))
            {
                throw new BrokenRuleException("the session ended with " + end);
            }
        }
        finally
        {
            backend.Dispose();
            ours.Dispose();
            theirs.Dispose();
            foreach (var d in owned)
            {
                d.Dispose();
            }
        }
    }

    private static void Send(UnixSocket socket, ReadOnlySpan<byte> stream, List<IDisposable> owned)
    {
        for (int m = 0; m < MaxMessages && stream.Length > 0; m++)
        {
            int take = stream.Length;
            uint request = 0;
            if (stream.Length >= VhostUserHeader.Size)
            {
                request = BinaryPrimitives.ReadUInt32LittleEndian(stream);
                uint size = BinaryPrimitives.ReadUInt32LittleEndian(stream[8..]);
                take = (int)Math.Min((ulong)VhostUserHeader.Size + size, (ulong)stream.Length);
            }
            byte[] message = stream[..take].ToArray();
            stream = stream[take..];
            var fds = new List<int>();
            if (message.Length >= VhostUserHeader.Size)
            {
                AttachFds((VhostUserRequest)request, message, fds, owned);
            }
            socket.Send(message, fds.ToArray());
        }
    }

    /// <summary>The fds an honest front-end sends with this message (and region sizes kept inside them).</summary>
    private static void AttachFds(VhostUserRequest request, byte[] message, List<int> fds, List<IDisposable> owned)
    {
        var payload = message.AsSpan(VhostUserHeader.Size);
        switch (request)
        {
            case VhostUserRequest.SetMemTable when payload.Length >= 8:
            {
                uint regions = Math.Min(BinaryPrimitives.ReadUInt32LittleEndian(payload), 8u);
                for (int i = 0; i < regions && 8 + (i + 1) * 32 <= payload.Length; i++)
                {
                    FitRegion(payload.Slice(8 + i * 32, 32));
                    fds.Add(MemFd(owned));
                }
                break;
            }
            case VhostUserRequest.AddMemReg or VhostUserRequest.RemMemReg when payload.Length >= 40:
                FitRegion(payload.Slice(8, 32));
                fds.Add(MemFd(owned));
                break;
            case VhostUserRequest.SetVringKick or VhostUserRequest.SetVringCall or VhostUserRequest.SetVringErr when payload.Length >= 8:
                if ((BinaryPrimitives.ReadUInt64LittleEndian(payload) & 0x100) == 0)
                {
                    var e = EventFd.Create(nonBlocking: true);
                    owned.Add(e);
                    fds.Add(e.Fd);
                }
                break;
            case VhostUserRequest.SetBackendReqFd:
            {
                var (a, b) = UnixSocket.Pair();
                owned.Add(a);
                owned.Add(b);
                fds.Add(b.Fd);
                break;
            }
        }
    }

    /// <summary>struct vhost_user_memory_region { guest_phys_addr, memory_size, userspace_addr, mmap_offset }:
    /// the size and offset are kept inside the memfd, so the memory the VMM promises exists.</summary>
    private static void FitRegion(Span<byte> region)
    {
        ulong size = BinaryPrimitives.ReadUInt64LittleEndian(region[8..]);
        ulong offset = BinaryPrimitives.ReadUInt64LittleEndian(region[24..]) & ~0xFFFUL;
        if (offset >= MemFdSize)
        {
            offset = 0;
        }
        size = Math.Min(size, MemFdSize - offset);
        BinaryPrimitives.WriteUInt64LittleEndian(region[8..], size);
        BinaryPrimitives.WriteUInt64LittleEndian(region[24..], offset);
    }

    private static int MemFd(List<IDisposable> owned)
    {
        var fd = Vhostfsd.Posix.MemFd.Create("afl-guest-memory", MemFdSize);
        owned.Add(fd);
        return fd.Fd;
    }

    public override IEnumerable<(string Name, byte[] Bytes)> SeedCorpus()
    {
        // QEMU's start of a two-queue vhost-user-fs session, then the rings (as in the mutation target's seed).
        var s = new List<byte>();
        Msg(s, VhostUserRequest.GetFeatures, []);
        Msg(s, VhostUserRequest.GetProtocolFeatures, []);
        Msg(s, VhostUserRequest.SetProtocolFeatures, U64(0x8 | 0x200 | 0x8000)); // REPLY_ACK, CONFIG, CONFIGURE_MEM_SLOTS
        Msg(s, VhostUserRequest.SetOwner, []);
        Msg(s, VhostUserRequest.GetQueueNum, []);
        Msg(s, VhostUserRequest.SetFeatures, U64((1UL << 32) | (1UL << 29) | (1UL << 28)));
        var table = new List<byte>();
        table.AddRange(U32(1));
        table.AddRange(U32(0));
        table.AddRange(U64(0));          // guest_phys_addr
        table.AddRange(U64(1 << 20));    // memory_size
        table.AddRange(U64(0x7f0000000000)); // userspace_addr
        table.AddRange(U64(0));          // mmap_offset
        Msg(s, VhostUserRequest.SetMemTable, table.ToArray());
        for (uint q = 0; q < 2; q++)
        {
            Msg(s, VhostUserRequest.SetVringNum, [.. U32(q), .. U32(8)]);
            Msg(s, VhostUserRequest.SetVringBase, [.. U32(q), .. U32(0)]);
            ulong ring = 0x7f0000000000UL + q * 0x1000UL;
            Msg(s, VhostUserRequest.SetVringAddr, [.. U32(q), .. U32(0), .. U64(ring), .. U64(ring + 0x80), .. U64(ring + 0x100), .. U64(0)]);
            Msg(s, VhostUserRequest.SetVringKick, U64(q));
            Msg(s, VhostUserRequest.SetVringCall, U64(q));
            Msg(s, VhostUserRequest.SetVringEnable, [.. U32(q), .. U32(1)]);
        }
        Msg(s, VhostUserRequest.GetConfig, [.. U32(0), .. U32(40), .. U32(0), .. new byte[40]]);
        Msg(s, VhostUserRequest.GetVringBase, [.. U32(0), .. U32(0)]);
        yield return ("qemu-session", s.ToArray());
        var t = new List<byte>();
        Msg(t, VhostUserRequest.SetOwner, []);
        Msg(t, VhostUserRequest.GetMaxMemSlots, []);
        Msg(t, VhostUserRequest.AddMemReg, [.. U64(0), .. U64(0x100000), .. U64(1 << 20), .. U64(0x7f0000100000), .. U64(0)]);
        Msg(t, VhostUserRequest.RemMemReg, [.. U64(0), .. U64(0x100000), .. U64(1 << 20), .. U64(0x7f0000100000), .. U64(0)]);
        Msg(t, VhostUserRequest.SetStatus, U64(0xF));
        Msg(t, VhostUserRequest.GetStatus, []);
        Msg(t, VhostUserRequest.SetBackendReqFd, []);
        Msg(t, VhostUserRequest.ResetDevice, []);
        yield return ("memory-slots-status", t.ToArray());
        yield return ("bad-header", [1, 0, 0, 0, 0xFF, 0, 0, 0, 0, 0, 0, 0]);
    }

    private static void Msg(List<byte> stream, VhostUserRequest request, byte[] payload)
    {
        stream.AddRange(U32((uint)request));
        stream.AddRange(U32(1)); // version 1
        stream.AddRange(U32((uint)payload.Length));
        stream.AddRange(payload);
    }

    private static byte[] U32(uint v)
    {
        var b = new byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(b, v);
        return b;
    }

    private static byte[] U64(ulong v)
    {
        var b = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(b, v);
        return b;
    }
}
