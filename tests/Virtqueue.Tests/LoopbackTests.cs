using System.Diagnostics;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Xunit;

namespace Vhostfsd.Virtqueue.Tests;

/// <summary>The driver side and the device side in one process, on two threads, over shared memfd
/// memory, with real eventfd kicks and calls: every payload checked byte for byte.</summary>
public unsafe class LoopbackTests
{
    private const ushort QueueSize = 128;
    private const int RequestCapacity = 600;   // up to 3 readable descriptors
    private const int ResponseCapacity = 600;  // 2 writable descriptors
    private const ulong SlotStride = 1216;     // not a divisor of the region size: some slots straddle the boundary
    private const ulong RegionSize = 1 << 20;
    private const ulong BufferBase = RegionSize - 64 * SlotStride + 300; // slot 63's response crosses 1 MiB

    [Theory]
    [InlineData(true, true, 100_000)]
    [InlineData(true, false, 20_000)]
    [InlineData(false, true, 20_000)]
    [InlineData(false, false, 20_000)]
    public void ChainsRoundTripBetweenThreads(bool eventIdx, bool indirect, int chains)
    {
        // Two adjacent regions of one memfd: buffers that cross 1 MiB become two segments on the device side.
        using var mem = QueueTestMemory.Create((0, RegionSize), (RegionSize, RegionSize));
        ulong total = SplitRing.Layout(QueueSize, 0, out ulong descGpa, out ulong availGpa, out ulong usedGpa);
        Assert.True(total < BufferBase);
        ulong indirectGpa = 0x8000;
        Assert.True(indirectGpa >= total && indirectGpa + DriverQueue.IndirectAreaBytes(QueueSize, 8) <= BufferBase);
        Assert.True(BufferBase + 63 * SlotStride + RequestCapacity < RegionSize && BufferBase + 64 * SlotStride > RegionSize,
            "slot 63's response must straddle the region boundary");

        using var driver = new DriverQueue(mem.Memory, QueueSize, descGpa, availGpa, usedGpa, eventIdx, indirect);
        if (indirect)
        {
            driver.SetIndirectArea(mem.Memory, indirectGpa, 8);
        }
        var device = new DeviceQueue(QueueSize);
        Assert.True(device.TryConfigureUser(mem.Memory, descGpa + QueueTestMemory.UserOffset,
            availGpa + QueueTestMemory.UserOffset, usedGpa + QueueTestMemory.UserOffset, eventIdx, indirect));
        using var kick = EventFd.Create(nonBlocking: true);
        using var call = EventFd.Create(nonBlocking: true);

        string? deviceFailure = null;
        int stop = 0;
        long kicksSeen = 0;
        var deviceThread = new Thread(() =>
        {
            try
            {
                kicksSeen = RunDevice(device, kick, call, ref stop);
            }
            catch (Exception e)
            {
                deviceFailure = e.ToString();
            }
        }) { Name = "loopback device", IsBackground = true };
        deviceThread.Start();

        var watch = Stopwatch.StartNew();
        long calls;
        try
        {
            calls = RunDriver(mem, driver, kick, call, chains, () => deviceFailure);
        }
        finally
        {
            Volatile.Write(ref stop, 1);
            kick.Signal();
            Assert.True(deviceThread.Join(TimeSpan.FromSeconds(10)), "device thread did not stop");
        }
        Assert.Null(deviceFailure);
        Assert.Equal(0, driver.InFlight);
        Assert.Equal(QueueSize, driver.FreeDescriptors);
        Assert.Equal((ushort)chains, device.NextAvail);
        Assert.Equal((ushort)chains, device.NextUsed);
        // Suppression must actually suppress with EVENT_IDX: far fewer calls than chains.
        if (eventIdx)
        {
            Assert.True(calls < chains, $"{calls} calls for {chains} chains");
        }
        Console.WriteLine($"loopback eventIdx={eventIdx} indirect={indirect}: {chains} chains in {watch.ElapsedMilliseconds} ms, {kicksSeen} kick wakeups, {calls} call wakeups");
    }

    private static bool WaitReadable(EventFd fd, int timeoutMs)
    {
        var pfd = new PollFd { Fd = fd.Fd, Events = Libc.POLLIN };
        int n = Libc.Poll(&pfd, 1, timeoutMs);
        return n > 0;
    }

    private static long RunDevice(DeviceQueue queue, EventFd kick, EventFd call, ref int stop)
    {
        var chain = new DescriptorChain(16);
        byte* request = stackalloc byte[RequestCapacity];
        long wakeups = 0;
        while (Volatile.Read(ref stop) == 0)
        {
            if (!WaitReadable(kick, 1000))
            {
                continue;
            }
            kick.Consume();
            wakeups++;
            do
            {
                queue.DisableNotifications();
                PopResult result;
                while ((result = queue.TryPop(chain)) == PopResult.Popped)
                {
                    // Gather the request, answer with each byte XOR 0xA5 into the writable segments.
                    int length = 0;
                    foreach (var seg in chain.Readable)
                    {
                        if (length + (int)seg.Length > RequestCapacity)
                        {
                            throw new InvalidOperationException("request longer than any the driver makes");
                        }
                        new ReadOnlySpan<byte>(seg.Base, (int)seg.Length).CopyTo(new Span<byte>(request + length, (int)seg.Length));
                        length += (int)seg.Length;
                    }
                    if ((ulong)length != chain.ReadableBytes || chain.WritableBytes != ResponseCapacity)
                    {
                        throw new InvalidOperationException($"chain byte counts {chain.ReadableBytes}/{chain.WritableBytes} for {length}");
                    }
                    int written = 0;
                    foreach (var seg in chain.Writable)
                    {
                        var dst = new Span<byte>(seg.Base, (int)seg.Length);
                        for (int i = 0; i < dst.Length && written < length; i++)
                        {
                            dst[i] = (byte)(request[written++] ^ 0xA5);
                        }
                    }
                    ushort head = chain.Head;
                    chain.Release();
                    queue.PushUsed(head, (uint)written);
                    if (queue.NeedsNotification())
                    {
                        call.Signal();
                    }
                }
                if (result == PopResult.Malformed)
                {
                    throw new InvalidOperationException($"malformed chain: {chain.Error}");
                }
            }
            while (queue.EnableNotifications());
        }
        return wakeups;
    }

    private static long RunDriver(QueueTestMemory mem, DriverQueue driver, EventFd kick, EventFd call, int chains, Func<string?> deviceFailure)
    {
        var slotOfHead = new int[QueueSize];
        var seqOfSlot = new int[QueueSize];
        var freeSlots = new Stack<int>();
        for (int s = QueueSize - 1; s >= 0; s--)
        {
            freeSlots.Push(s);
        }
        var request = new byte[RequestCapacity];
        var response = new byte[ResponseCapacity];
        var readable = new (ulong, uint)[3];
        var writable = new (ulong, uint)[2];
        int issued = 0;
        int completed = 0;
        long calls = 0;
        var lastProgress = Stopwatch.StartNew();
        while (completed < chains)
        {
            bool progress = false;
            while (issued < chains && freeSlots.Count > 0)
            {
                int slot = freeSlots.Peek();
                int seq = issued;
                int length = RequestLength(seq);
                FillRequest(seq, request.AsSpan(0, length));
                ulong reqGpa = BufferBase + (ulong)slot * SlotStride;
                ulong respGpa = reqGpa + RequestCapacity;
                WriteGuest(mem, reqGpa, request.AsSpan(0, length));
                int parts = 1 + seq % 3;
                int cut1 = parts > 1 ? length / parts : length;
                int cut2 = parts > 2 ? 2 * length / parts : length;
                int n = 0;
                readable[n++] = (reqGpa, (uint)cut1);
                if (parts > 1)
                {
                    readable[n++] = (reqGpa + (ulong)cut1, (uint)(cut2 - cut1));
                }
                if (parts > 2)
                {
                    readable[n++] = (reqGpa + (ulong)cut2, (uint)(length - cut2));
                }
                writable[0] = (respGpa, 200);
                writable[1] = (respGpa + 200, ResponseCapacity - 200);
                int head = driver.TryAdd(readable.AsSpan(0, n), writable);
                if (head < 0)
                {
                    break;
                }
                freeSlots.Pop();
                slotOfHead[head] = slot;
                seqOfSlot[slot] = seq;
                issued++;
                progress = true;
            }
            if (driver.PublishAndCheckKick())
            {
                kick.Signal();
            }
            while (driver.TryReapUsed(out ushort head, out uint len))
            {
                int slot = slotOfHead[head];
                int seq = seqOfSlot[slot];
                int length = RequestLength(seq);
                Assert.Equal((uint)length, len);
                ReadGuest(mem, BufferBase + (ulong)slot * SlotStride + RequestCapacity, response.AsSpan(0, length));
                FillRequest(seq, request.AsSpan(0, length));
                for (int i = 0; i < length; i++)
                {
                    if (response[i] != (byte)(request[i] ^ 0xA5))
                    {
                        Assert.Fail($"chain {seq}: byte {i} is {response[i]:x2}, expected {(byte)(request[i] ^ 0xA5):x2}");
                    }
                }
                freeSlots.Push(slot);
                completed++;
                progress = true;
            }
            if (progress)
            {
                lastProgress.Restart();
                continue;
            }
            if (deviceFailure() is { } failure)
            {
                Assert.Fail("device thread failed: " + failure);
            }
            Assert.True(lastProgress.ElapsedMilliseconds < 10_000,
                $"no progress for 10 s at {completed}/{chains} completed, {issued} issued: a lost kick or call");
            // The empty reap above re-armed used_event (callbacks stay enabled): safe to sleep on the call fd.
            if (WaitReadable(call, 200))
            {
                call.Consume();
                calls++;
            }
        }
        return calls;
    }

    private static int RequestLength(int seq) => 1 + (int)((uint)seq * 2654435761u % (RequestCapacity - 1));

    private static void FillRequest(int seq, Span<byte> data)
    {
        for (int i = 0; i < data.Length; i++)
        {
            data[i] = (byte)(seq * 31 + i * 7 + (i >> 8));
        }
    }

    private static void WriteGuest(QueueTestMemory mem, ulong gpa, ReadOnlySpan<byte> data)
    {
        using var view = mem.Memory.Acquire();
        Span<IoVec> iov = stackalloc IoVec[2];
        int n = view.TryTranslateSplit(gpa, (ulong)data.Length, iov);
        Assert.True(n > 0);
        for (int i = 0; i < n; i++)
        {
            data[..(int)iov[i].Length].CopyTo(new Span<byte>(iov[i].Base, (int)iov[i].Length));
            data = data[(int)iov[i].Length..];
        }
    }

    private static void ReadGuest(QueueTestMemory mem, ulong gpa, Span<byte> data)
    {
        using var view = mem.Memory.Acquire();
        Span<IoVec> iov = stackalloc IoVec[2];
        int n = view.TryTranslateSplit(gpa, (ulong)data.Length, iov);
        Assert.True(n > 0);
        for (int i = 0; i < n; i++)
        {
            new ReadOnlySpan<byte>(iov[i].Base, (int)iov[i].Length).CopyTo(data);
            data = data[(int)iov[i].Length..];
        }
    }
}
