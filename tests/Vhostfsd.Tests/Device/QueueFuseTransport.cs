using Vhostfsd.Posix;
using Vhostfsd.Testing;

namespace Vhostfsd.Tests.Device;

/// <summary>Carries one FUSE request at a time from a <see cref="FuseTestClient"/> through a real
/// virtqueue of a <see cref="VhostUserTestGuest"/>: the request is copied into a readable guest
/// buffer, the reply lands in a writable guest buffer, the queue is kicked and the used ring reaped,
/// exactly the path a guest kernel's request takes (one chain in flight per queue).</summary>
internal sealed unsafe class QueueFuseTransport
{
    private readonly VhostUserTestGuest _guest;
    private readonly object _lock = new();

    public QueueFuseTransport(VhostUserTestGuest guest)
    {
        _guest = guest;
    }

    /// <summary>Bytes the device wrote in the last round trip on each queue (0 for FORGET).</summary>
    public uint LastUsedLength { get; private set; }

    public int RoundTrip(int queue, ReadOnlySpan<IoVec> readable, ReadOnlySpan<IoVec> writable)
    {
        lock (_lock)
        {
            int requestLength = 0;
            foreach (var v in readable)
            {
                requestLength += (int)v.Length;
            }
            int replyCapacity = 0;
            foreach (var v in writable)
            {
                replyCapacity += (int)v.Length;
            }
            replyCapacity = Math.Min(replyCapacity, _guest.SlotSize);
            if (requestLength > _guest.SlotSize)
            {
                throw new ArgumentException($"request of {requestLength} bytes does not fit a {_guest.SlotSize}-byte slot");
            }
            ulong inGpa = _guest.SlotGpa(queue, 0, writable: false);
            ulong outGpa = _guest.SlotGpa(queue, 0, writable: true);
            Span<byte> guestIn = _guest.Bytes(inGpa, requestLength);
            int at = 0;
            foreach (var v in readable)
            {
                // SAFETY: the test client's IoVecs describe its pinned buffers, valid for this call.
                new ReadOnlySpan<byte>(v.Base, (int)v.Length).CopyTo(guestIn[at..]);
                at += (int)v.Length;
            }
            var q = _guest.Queue(queue);
            int head = replyCapacity > 0
                ? q.TryAdd([(inGpa, (uint)requestLength)], [(outGpa, (uint)replyCapacity)])
                : q.TryAdd([(inGpa, (uint)requestLength)], []);
            if (head < 0)
            {
                throw new InvalidOperationException("no free descriptors");
            }
            if (q.PublishAndCheckKick())
            {
                _guest.Kick(queue).Signal();
            }
            var deadline = DateTime.UtcNow.AddSeconds(20);
            ushort usedHead;
            uint usedLength;
            while (!q.TryReapUsed(out usedHead, out usedLength))
            {
                if (DateTime.UtcNow > deadline)
                {
                    throw new TimeoutException($"queue {queue}: no reply within 20 s");
                }
                _guest.WaitCall(queue, 100);
            }
            if (usedHead != head)
            {
                throw new InvalidOperationException($"used head {usedHead}, expected {head}");
            }
            LastUsedLength = usedLength;
            Span<byte> reply = _guest.Bytes(outGpa, (int)Math.Min(usedLength, (uint)Math.Max(replyCapacity, 1)));
            int copied = 0;
            foreach (var v in writable)
            {
                if (copied >= usedLength)
                {
                    break;
                }
                int n = (int)Math.Min(v.Length, (nuint)(usedLength - copied));
                // SAFETY: the test client's writable IoVecs are pinned buffers of at least v.Length bytes.
                reply.Slice(copied, n).CopyTo(new Span<byte>(v.Base, n));
                copied += n;
            }
            return (int)usedLength;
        }
    }

    /// <summary>Puts every request of <paramref name="requests"/> on <paramref name="queue"/> at once
    /// (slot i for request i), publishes them together with one kick, and waits for all of them: a
    /// batch as a guest with several requests in flight makes. Returns each request's reply bytes.</summary>
    public byte[][] Batch(int queue, IReadOnlyList<byte[]> requests, int replyCapacity)
    {
        lock (_lock)
        {
            var q = _guest.Queue(queue);
            var slotOfHead = new Dictionary<ushort, int>();
            for (int i = 0; i < requests.Count; i++)
            {
                ulong inGpa = _guest.SlotGpa(queue, i, writable: false);
                ulong outGpa = _guest.SlotGpa(queue, i, writable: true);
                requests[i].CopyTo(_guest.Bytes(inGpa, requests[i].Length));
                int head = q.TryAdd([(inGpa, (uint)requests[i].Length)], [(outGpa, (uint)replyCapacity)]);
                if (head < 0)
                {
                    throw new InvalidOperationException("no free descriptors");
                }
                slotOfHead[(ushort)head] = i;
            }
            if (q.PublishAndCheckKick())
            {
                _guest.Kick(queue).Signal();
            }
            var replies = new byte[requests.Count][];
            var deadline = DateTime.UtcNow.AddSeconds(20);
            for (int done = 0; done < requests.Count;)
            {
                if (q.TryReapUsed(out ushort head, out uint length))
                {
                    int slot = slotOfHead[head];
                    replies[slot] = _guest.Bytes(_guest.SlotGpa(queue, slot, writable: true), (int)length).ToArray();
                    done++;
                    continue;
                }
                if (DateTime.UtcNow > deadline)
                {
                    throw new TimeoutException($"queue {queue}: {requests.Count - done} replies missing after 20 s");
                }
                _guest.WaitCall(queue, 100);
            }
            return replies;
        }
    }
}
