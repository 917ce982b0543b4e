using System.Buffers.Binary;
using Vhostfsd.Testing;
using Vhostfsd.Virtqueue;

namespace Vhostfsd.AflTargets;

/// <summary>Descriptor chain walking: <see cref="DeviceQueue.TryPop"/> over guest memory of three
/// regions with gaps between them. Input: byte 0 the queue size (1..64), byte 1 the features (EVENT_IDX,
/// INDIRECT_DESC), the indirect table limit and the chain's segment capacity, bytes 2-3 where the
/// device starts in the avail ring; then the descriptor table, the avail ring and two indirect tables,
/// as the driver wrote them. Rules: nothing escapes; every popped segment lies inside a region's
/// mapping; readable and writable byte counts match the segments; a popped chain never has more
/// segments than its capacity; the device pops at most as many chains as avail.idx allows.</summary>
public sealed class DescriptorChainTarget : AflTarget
{
    private const ulong IndirectA = 0x4000;
    private const ulong IndirectB = 0x4800;
    private const int IndirectTableBytes = 8 * VirtqDesc.Size;
    private static readonly (ulong Gpa, ulong Size)[] Layout = [(0x0, 0x10000), (0x10000, 0x10000), (0x40000, 0x10000)];
    private static readonly byte[] Zeros = new byte[0x10000];
    private static readonly int[] IndirectLimits = [1, 8, 64, 65536];
    private static readonly int[] Capacities = [1, 2, 4, 64];

    private static QueueTestMemory? s_memory;

    public override string Name => "descriptor-chain";

    public override string[] Instrument => ["Vhostfsd.Virtqueue.dll Vhostfsd.Virtqueue.DeviceQueue Vhostfsd.Virtqueue.DescriptorChain Vhostfsd.Virtqueue.GuestMemory"];

    public override void Run(ReadOnlySpan<byte> input)
    {
        if (input.Length < 4)
        {
            return;
        }
        var memory = s_memory ??= QueueTestMemory.Create(Layout);
        foreach (var (gpa, length) in Layout)
        {
            memory.Write(gpa, Zeros.AsSpan(0, (int)length));
        }
        ushort size = (ushort)(1 << (input[0] % 7));
        bool eventIdx = (input[1] & 1) != 0;
        bool indirect = (input[1] & 2) != 0;
        int maxIndirect = IndirectLimits[(input[1] >> 2) & 3];
        int capacity = Capacities[(input[1] >> 4) & 3];
        ushort start = BinaryPrimitives.ReadUInt16LittleEndian(input[2..]);
        var driver = new QueueMockDriver(memory, size, ringBase: 0, bufferEnd: IndirectA);
        var rest = input[4..];
        rest = Place(memory, driver.DescGpa, rest, size * VirtqDesc.Size);
        rest = Place(memory, driver.AvailGpa, rest, 4 + 2 * size + 2);
        rest = Place(memory, IndirectA, rest, IndirectTableBytes);
        Place(memory, IndirectB, rest, IndirectTableBytes);

        var queue = driver.CreateDeviceQueue(eventIdx, indirect, maxIndirect);
        queue.NextAvail = start;
        var chain = new DescriptorChain(capacity);
        var regions = memory.Memory.GetRegions();
        ushort availIdx = BinaryPrimitives.ReadUInt16LittleEndian(memory.Read(driver.AvailGpa + 2, 2));
        int allowed = (ushort)(availIdx - start);
        try
        {
            for (int popped = 0; popped <= size + 1; popped++)
            {
                var result = queue.TryPop(chain);
                if (result == PopResult.Empty)
                {
                    break;
                }
                if (popped >= allowed)
                {
                    throw new BrokenRuleException($"popped {popped + 1} chains with avail.idx {availIdx} and the device starting at {start}");
                }
                if (result == PopResult.Malformed)
                {
                    if (chain.Error == ChainError.None)
                    {
                        throw new BrokenRuleException("a malformed chain without an error");
                    }
                    if (chain.Error is ChainError.AvailIndexJump or ChainError.HeadOutOfRange)
                    {
                        break;
                    }
                    queue.PushUsed(chain.Head, 0);
                    continue;
                }
                CheckSegments(chain, regions, capacity);
                queue.PushUsed(chain.Head, (uint)Math.Min(chain.WritableBytes, uint.MaxValue));
            }
        }
        finally
        {
            chain.Release();
            queue.Reset();
        }
    }

    private static unsafe void CheckSegments(DescriptorChain chain, GuestMemoryRegion[] regions, int capacity)
    {
        if (chain.Readable.Length + chain.Writable.Length > capacity)
        {
            throw new BrokenRuleException($"{chain.Readable.Length + chain.Writable.Length} segments in a chain of capacity {capacity}");
        }
        ulong readable = 0, writable = 0;
        foreach (var v in chain.Readable)
        {
            Inside(v, regions);
            readable += v.Length;
        }
        foreach (var v in chain.Writable)
        {
            Inside(v, regions);
            writable += v.Length;
        }
        if (readable != chain.ReadableBytes || writable != chain.WritableBytes)
        {
            throw new BrokenRuleException($"byte counts {chain.ReadableBytes}/{chain.WritableBytes}, segments add up to {readable}/{writable}");
        }
    }

    private static unsafe void Inside(Vhostfsd.Posix.IoVec v, GuestMemoryRegion[] regions)
    {
        ulong start = (ulong)v.Base;
        ulong end = start + v.Length;
        foreach (var r in regions)
        {
            ulong host = (ulong)r.HostAddress;
            if (start >= host && end >= start && end <= host + r.Size)
            {
                return;
            }
        }
        throw new BrokenRuleException($"a segment at 0x{start:x} (+{v.Length}) lies outside every region");
    }

    private static ReadOnlySpan<byte> Place(QueueTestMemory memory, ulong gpa, ReadOnlySpan<byte> input, int length)
    {
        int n = Math.Min(length, input.Length);
        memory.Write(gpa, input[..n]);
        return input[n..];
    }

    public override IEnumerable<(string Name, byte[] Bytes)> SeedCorpus()
    {
        // Size 8 (byte 0 = 3), EVENT_IDX + INDIRECT_DESC, 8 indirect entries, capacity 64.
        yield return ("direct-chains", Build(3, 0x37, [
            Desc(0x5000, 64, VirtqDesc.FlagNext, 1), Desc(0x5100, 256, VirtqDesc.FlagWrite, 0),
            Desc(0x10100, 16, 0, 0), Desc(0xFF80, 0x100, VirtqDesc.FlagWrite, 0),
        ], [0, 2, 3], [], []));
        yield return ("indirect-chain", Build(3, 0x37, [
            Desc(IndirectA, 3 * VirtqDesc.Size, VirtqDesc.FlagIndirect, 0),
        ], [0], [Desc(0x5000, 40, VirtqDesc.FlagNext, 1), Desc(0x5100, 16, VirtqDesc.FlagNext | VirtqDesc.FlagWrite, 2), Desc(0x40000, 4096, VirtqDesc.FlagWrite, 0)], []));
        yield return ("loop-and-gap", Build(2, 0x13, [
            Desc(0x5000, 8, VirtqDesc.FlagNext, 1), Desc(0x5008, 8, VirtqDesc.FlagNext, 0), Desc(0x30000, 8, 0, 0),
        ], [0, 2], [], []));
    }

    private static byte[] Desc(ulong addr, uint len, ushort flags, ushort next)
    {
        var b = new byte[VirtqDesc.Size];
        BinaryPrimitives.WriteUInt64LittleEndian(b, addr);
        BinaryPrimitives.WriteUInt32LittleEndian(b.AsSpan(8), len);
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(12), flags);
        BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(14), next);
        return b;
    }

    private static byte[] Build(byte sizeLog2, byte features, byte[][] table, ushort[] heads, byte[][] tableA, byte[][] tableB)
    {
        int size = 1 << sizeLog2;
        var all = new List<byte> { sizeLog2, features, 0, 0 };
        for (int i = 0; i < size; i++)
        {
            all.AddRange(i < table.Length ? table[i] : new byte[VirtqDesc.Size]);
        }
        var avail = new byte[4 + 2 * size + 2];
        BinaryPrimitives.WriteUInt16LittleEndian(avail.AsSpan(2), (ushort)heads.Length);
        for (int i = 0; i < heads.Length; i++)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(avail.AsSpan(4 + 2 * i), heads[i]);
        }
        all.AddRange(avail);
        foreach (var t in new[] { tableA, tableB })
        {
            for (int i = 0; i < 8; i++)
            {
                all.AddRange(i < t.Length ? t[i] : new byte[VirtqDesc.Size]);
            }
        }
        return all.ToArray();
    }
}
