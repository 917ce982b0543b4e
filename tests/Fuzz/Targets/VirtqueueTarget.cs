using System.Buffers.Binary;
using Vhostfsd.Fuzz.Engine;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Vhostfsd.Virtqueue;

namespace Vhostfsd.Fuzz.Targets;

/// <summary>Fuzz target (b): descriptor chains against <see cref="DeviceQueue"/> through the mock driver.
/// Each case lays out a descriptor table, an avail ring and two indirect tables from a structured
/// seed (well-formed chains and every malformation of the foundation issue), mutates them, and pops
/// until the ring is empty. Oracles: TryPop never throws; its verdict and segments equal those of
/// <see cref="QueueModel"/>; every segment lies inside a mapped region; a handler that fills the
/// writable segments and the device's used-ring writes are the only changes to guest memory; used
/// elements land where the spec puts them. One case in eight instead races a thread that rewrites
/// the descriptors while the device walks them (only the memory-safety invariants apply then).</summary>
public sealed unsafe class VirtqueueTarget : IDisposable
{
    private const ulong IndirectA = 0x4000;
    private const ulong IndirectB = 0x4800;
    private const int IndirectEntries = 8;
    private const ulong BufferBase = 0x5000;

    private static readonly (ulong Gpa, ulong Size)[] Layout = [(0x0, 0x10000), (0x10000, 0x10000), (0x40000, 0x10000)];
    private static readonly ushort[] Sizes = [1, 2, 4, 8, 16, 32, 64];

    private static readonly byte[] Zeros = new byte[0x10000];

    private readonly QueueTestMemory _memory = QueueTestMemory.Create(Layout);
    private readonly QueueModel _model;
    private readonly List<QueueModel.Segment> _expected = new();
    private readonly (nint Host, ulong Size)[] _hostRanges;

    public VirtqueueTarget()
    {
        _model = new QueueModel((gpa, n) => _memory.Read(gpa, n), Layout);
        var regions = _memory.Memory.GetRegions();
        _hostRanges = new (nint, ulong)[regions.Length];
        for (int i = 0; i < regions.Length; i++)
        {
            _hostRanges[i] = (regions[i].HostAddress, regions[i].Size);
        }
    }

    public void Dispose() => _memory.Dispose();

    private static readonly ulong[] Addresses =
    [
        BufferBase, BufferBase + 0x800, 0xFF80 /* crosses into the adjacent region */, 0x10100, 0x40000, 0x4FF00,
        0x1FF80 /* runs into the gap */, 0x30000 /* in the gap */, 0x50000 /* past the end */, 0xFFFF_FFFF_FFFF_FF00 /* wraps */,
    ];

    public void RunCase(FuzzCase c)
    {
        var rng = c.Rng;
        ushort size = rng.Pick<ushort>(Sizes);
        foreach (var (gpa, length) in Layout)
        {
            _memory.Write(gpa, Zeros.AsSpan(0, (int)length));
        }
        var driver = new QueueMockDriver(_memory, size, ringBase: 0, bufferEnd: IndirectA);
        Seed seed = BuildSeed(rng, size, out string seedName);
        c.SeedName = seedName;
        byte[] bytes = rng.OneIn(8) ? seed.Bytes : Mutator.Mutate(rng, seed, null, Dictionary, c);
        c.Input = bytes;
        ushort availBase = rng.OneIn(3) ? (ushort)rng.NextU32() : (ushort)0;
        Apply(driver, size, bytes, availBase);

        bool eventIdx = rng.Coin();
        bool indirect = !rng.OneIn(5);
        int maxIndirect = rng.Next(4) switch { 0 => rng.Next(1, 9), 1 => 65536, _ => size };
        int capacity = rng.OneIn(4) ? rng.Next(1, 5) : 64;
        var queue = driver.CreateDeviceQueue(eventIdx, indirect, maxIndirect);
        queue.NextAvail = availBase;
        var chain = new DescriptorChain(capacity);
        try
        {
            if (rng.OneIn(8))
            {
                Race(c, driver, queue, chain, size);
            }
            else
            {
                CompareWithModel(c, driver, queue, chain, size, indirect, maxIndirect, capacity);
            }
        }
        finally
        {
            chain.Release();
            queue.Reset();
        }
    }

    private static readonly MutationDictionary Dictionary = CreateDictionary();

    private static MutationDictionary CreateDictionary()
    {
        var d = new MutationDictionary();
        foreach (ulong a in Addresses)
        {
            d.Add(FieldKind.Address, a);
        }
        foreach (var (gpa, size) in Layout)
        {
            d.Add(FieldKind.Address, gpa + size - 1);
            d.Add(FieldKind.Address, gpa + size);
            d.Add(FieldKind.Length, size);
        }
        d.Add(FieldKind.Address, IndirectA);
        d.Add(FieldKind.Address, IndirectB);
        d.Add(FieldKind.Address, 0); // the ring itself
        d.Add(FieldKind.Flags, VirtqDesc.FlagIndirect);
        d.Add(FieldKind.Flags, VirtqDesc.FlagIndirect | VirtqDesc.FlagNext);
        d.Add(FieldKind.Flags, VirtqDesc.FlagWrite | VirtqDesc.FlagNext);
        d.Add(FieldKind.Length, 0x8000_0000);
        d.Add(FieldKind.Length, 16 * IndirectEntries);
        return d;
    }

    // ---- seeds: the layout is [descriptor table][avail ring][indirect table A][indirect table B] ----

    private static int AvailBytes(ushort size) => 4 + 2 * size + 2;

    private static int SeedLength(ushort size) => size * 16 + AvailBytes(size) + 2 * IndirectEntries * 16;

    private sealed class SeedLayout
    {
        public readonly ushort Size;
        public readonly VirtqDesc[] Table;
        public readonly VirtqDesc[] TableA = new VirtqDesc[IndirectEntries];
        public readonly VirtqDesc[] TableB = new VirtqDesc[IndirectEntries];
        public readonly List<ushort> Avail = new();
        /// <summary>VRING_AVAIL_F_NO_INTERRUPT and used_event: set at random, they only decide interrupts.</summary>
        public ushort AvailFlags { get; set; }
        public ushort UsedEvent { get; set; }
        private int _nextDesc;

        public SeedLayout(ushort size)
        {
            Size = size;
            Table = new VirtqDesc[size];
        }

        public int FreeDescriptors => Size - _nextDesc;

        /// <summary>Adds a chain of direct descriptors linked by NEXT; returns its head (or -1 when the table is full).</summary>
        public int AddChain(params (ulong Addr, uint Len, ushort Flags)[] descs)
        {
            if (descs.Length > FreeDescriptors || descs.Length == 0)
            {
                return -1;
            }
            int head = _nextDesc;
            for (int i = 0; i < descs.Length; i++)
            {
                ushort flags = descs[i].Flags;
                ushort next = 0;
                if (i < descs.Length - 1)
                {
                    flags |= VirtqDesc.FlagNext;
                    next = (ushort)(_nextDesc + 1);
                }
                Table[_nextDesc] = new VirtqDesc(descs[i].Addr, descs[i].Len, flags, next);
                _nextDesc++;
            }
            Avail.Add((ushort)head);
            return head;
        }

        public static void Link(VirtqDesc[] table, params (ulong Addr, uint Len, ushort Flags)[] descs)
        {
            for (int i = 0; i < descs.Length && i < table.Length; i++)
            {
                ushort flags = descs[i].Flags;
                ushort next = 0;
                if (i < descs.Length - 1)
                {
                    flags |= VirtqDesc.FlagNext;
                    next = (ushort)(i + 1);
                }
                table[i] = new VirtqDesc(descs[i].Addr, descs[i].Len, flags, next);
            }
        }

        public Seed Build(string name)
        {
            var b = new SeedBuilder();
            void Desc(string prefix, VirtqDesc d)
            {
                b.U64(prefix + ".addr", d.Addr, FieldKind.Address).U32(prefix + ".len", d.Len, FieldKind.Length)
                    .U16(prefix + ".flags", d.Flags, FieldKind.Flags).U16(prefix + ".next", d.Next, FieldKind.Index);
            }
            for (int i = 0; i < Size; i++)
            {
                Desc($"d{i}", Table[i]);
            }
            b.U16("avail.flags", AvailFlags, FieldKind.Flags).U16("avail.idx", (ushort)Avail.Count, FieldKind.Index);
            for (int i = 0; i < Size; i++)
            {
                b.U16($"avail[{i}]", i < Avail.Count ? Avail[i] : (ushort)0, FieldKind.Index);
            }
            b.U16("used_event", UsedEvent, FieldKind.Index);
            for (int i = 0; i < IndirectEntries; i++)
            {
                Desc($"a{i}", TableA[i]);
            }
            for (int i = 0; i < IndirectEntries; i++)
            {
                Desc($"b{i}", TableB[i]);
            }
            return b.Build(name);
        }
    }

    private const ushort R = 0;
    private const ushort W = VirtqDesc.FlagWrite;

    private static (ulong, uint, ushort) Buf(FuzzRng rng, ushort flags)
    {
        ulong addr = BufferBase + (ulong)rng.Next(0, 40) * 0x200;
        return (addr, (uint)rng.Next(1, 0x200), flags);
    }

    private static Seed BuildSeed(FuzzRng rng, ushort size, out string name)
    {
        var s = new SeedLayout(size) { AvailFlags = (ushort)rng.Next(2), UsedEvent = (ushort)rng.Next(size) };
        int kind = rng.Next(16);
        switch (kind)
        {
            case 0:
                name = "requests";
                while (s.FreeDescriptors >= 2 && s.Avail.Count < size && !rng.OneIn(4))
                {
                    int readable = rng.Next(1, Math.Min(3, s.FreeDescriptors));
                    int writable = rng.Next(0, Math.Min(3, s.FreeDescriptors - readable + 1));
                    var descs = new List<(ulong, uint, ushort)>();
                    for (int i = 0; i < readable; i++) descs.Add(Buf(rng, R));
                    for (int i = 0; i < writable; i++) descs.Add(Buf(rng, W));
                    s.AddChain(descs.ToArray());
                }
                if (s.Avail.Count == 0) s.AddChain(Buf(rng, R));
                break;
            case 1:
                name = "indirect";
                SeedLayout.Link(s.TableA, Buf(rng, R), Buf(rng, R), Buf(rng, W), Buf(rng, W));
                s.AddChain((IndirectA, 4 * 16, VirtqDesc.FlagIndirect));
                if (s.FreeDescriptors > 0)
                {
                    SeedLayout.Link(s.TableB, Buf(rng, R), Buf(rng, W));
                    s.AddChain((IndirectB, 2 * 16, VirtqDesc.FlagIndirect));
                }
                break;
            case 2:
                name = "loop";
                s.AddChain(Buf(rng, R), Buf(rng, W));
                s.Table[size - 1 > 1 ? 1 : 0].Flags |= VirtqDesc.FlagNext;
                s.Table[size - 1 > 1 ? 1 : 0].Next = 0;
                break;
            case 3:
                name = "next-out-of-range";
                s.AddChain(Buf(rng, R), Buf(rng, W));
                s.Table[0].Next = size;
                break;
            case 4:
                name = "nested-indirect";
                SeedLayout.Link(s.TableA, Buf(rng, R), (IndirectB, 16, VirtqDesc.FlagIndirect));
                SeedLayout.Link(s.TableB, Buf(rng, W));
                s.AddChain((IndirectA, 2 * 16, VirtqDesc.FlagIndirect));
                break;
            case 5:
                name = "indirect-bad-length";
                SeedLayout.Link(s.TableA, Buf(rng, R), Buf(rng, W));
                s.AddChain((IndirectA, rng.Pick<uint>([0, 15, 17, 31, 8 * 16 + 16, 0xFFFF_FFF0]), VirtqDesc.FlagIndirect));
                break;
            case 6:
                name = "readable-after-writable";
                if (s.AddChain(Buf(rng, W), Buf(rng, R)) < 0) s.AddChain(Buf(rng, R));
                break;
            case 7:
                name = "address-edges";
                s.AddChain((rng.Pick<ulong>(Addresses), (uint)rng.Next(0, 0x200), rng.Coin() ? W : R));
                break;
            case 8:
                name = "head-out-of-range";
                s.AddChain(Buf(rng, R));
                s.Avail[0] = (ushort)(size + rng.Next(0, 3));
                break;
            case 9:
                name = "avail-jump";
                s.AddChain(Buf(rng, R));
                for (int i = 0; i < size; i++) s.Avail.Add(0);
                break;
            case 10:
                name = "indirect-with-next";
                SeedLayout.Link(s.TableA, Buf(rng, R));
                s.AddChain((IndirectA, 16, VirtqDesc.FlagIndirect | VirtqDesc.FlagNext), Buf(rng, W));
                break;
            case 11:
                name = "crossing-regions";
                s.AddChain((0xFF80, 0x100, R), (0x1FF00, 0x100, W));
                break;
            case 12:
                name = "huge-total";
                if (s.AddChain((0x10000, 0x10000, R), (0x10000, 0xFFFF_FFFF, W)) < 0) s.AddChain((0x10000, 0xFFFF_FFFF, R));
                break;
            case 13:
                name = "zero-length";
                s.AddChain((rng.Pick<ulong>(Addresses), 0, R));
                break;
            case 14:
                name = "reused-head";
                s.AddChain(Buf(rng, R), Buf(rng, W));
                s.Avail.Add(0);
                break;
            default:
                name = "indirect-table-edges";
                SeedLayout.Link(s.TableA, Buf(rng, R), Buf(rng, W));
                s.AddChain((rng.Pick<ulong>([IndirectA, 0xFFF0, 0x1FFF8, 0x30000, 0x4FFF0]), 2 * 16, VirtqDesc.FlagIndirect));
                break;
        }
        name = $"{name}/size{size}";
        return s.Build(name);
    }

    /// <summary>Writes the (mutated) seed bytes into the rings; a short input is zero-filled, a long one cut.</summary>
    private void Apply(QueueMockDriver driver, ushort size, byte[] bytes, ushort availBase)
    {
        var layout = new byte[SeedLength(size)];
        bytes.AsSpan(0, Math.Min(bytes.Length, layout.Length)).CopyTo(layout);
        int at = 0;
        _memory.Write(driver.DescGpa, layout.AsSpan(at, size * 16));
        at += size * 16;
        var avail = layout.AsSpan(at, AvailBytes(size)).ToArray();
        BinaryPrimitives.WriteUInt16LittleEndian(avail.AsSpan(2), (ushort)(BinaryPrimitives.ReadUInt16LittleEndian(avail.AsSpan(2)) + availBase));
        // Ring entries are relative to the base too: slot (base + i) % size holds seed entry i.
        var ring = avail.AsSpan(4, 2 * size).ToArray();
        for (int i = 0; i < size; i++)
        {
            int slot = (availBase + i) % size;
            ring.AsSpan(2 * i, 2).CopyTo(avail.AsSpan(4 + 2 * slot, 2));
        }
        _memory.Write(driver.AvailGpa, avail);
        at += AvailBytes(size);
        _memory.Write(IndirectA, layout.AsSpan(at, IndirectEntries * 16));
        at += IndirectEntries * 16;
        _memory.Write(IndirectB, layout.AsSpan(at, IndirectEntries * 16));
    }

    private byte[][] Snapshot()
    {
        var all = new byte[Layout.Length][];
        for (int i = 0; i < Layout.Length; i++)
        {
            all[i] = _memory.Read(Layout[i].Gpa, (int)Layout[i].Size);
        }
        return all;
    }

    private static void WriteExpected(byte[][] expected, ulong gpa, ReadOnlySpan<byte> data)
    {
        for (int i = 0; i < Layout.Length; i++)
        {
            if (gpa >= Layout[i].Gpa && gpa - Layout[i].Gpa < Layout[i].Size)
            {
                data.CopyTo(expected[i].AsSpan((int)(gpa - Layout[i].Gpa)));
                return;
            }
        }
        throw new InvalidOperationException($"model segment 0x{gpa:x} outside memory");
    }

    private bool InsideMappedRegion(IoVec v)
    {
        nint start = (nint)v.Base;
        foreach (var (host, size) in _hostRanges)
        {
            if (start >= host && (ulong)(start - host) <= size && (ulong)v.Length <= size - (ulong)(start - host))
            {
                return true;
            }
        }
        return false;
    }

    private void CompareWithModel(FuzzCase c, QueueMockDriver driver, DeviceQueue queue, DescriptorChain chain, ushort size,
        bool indirect, int maxIndirect, int capacity)
    {
        var rng = c.Rng;
        byte[][] expected = Snapshot();
        ulong usedStart = driver.UsedGpa;
        ulong usedEnd = usedStart + SplitRing.UsedRingBytes(size);
        for (int iteration = 0; iteration < 2 * size + 2; iteration++)
        {
            ushort before = queue.NextAvail;
            var verdict = _model.Pop(size, driver.DescGpa, driver.AvailGpa, before, indirect, maxIndirect, capacity, out ushort head, _expected);
            var result = queue.TryPop(chain);
            switch (verdict)
            {
                case QueueModel.Verdict.Empty:
                    if (result != PopResult.Empty)
                    {
                        c.Fail($"pop {iteration}: model says empty, the queue said {result} ({chain.Error})");
                        return;
                    }
                    c.Count("empty");
                    break;
                case QueueModel.Verdict.RefusedNotConsumed:
                case QueueModel.Verdict.Refused:
                {
                    bool consumed = verdict == QueueModel.Verdict.Refused;
                    if (result != PopResult.Malformed || queue.NextAvail != (ushort)(before + (consumed ? 1 : 0)) || chain.IsHeld)
                    {
                        c.Fail($"pop {iteration}: model refuses (consumed: {consumed}), the queue said {result} ({chain.Error}), next avail {before} -> {queue.NextAvail}");
                        return;
                    }
                    c.Count("refused:" + chain.Error);
                    break;
                }
                default:
                    if (result != PopResult.Popped)
                    {
                        c.Fail($"pop {iteration}: model accepts head {head} ({_expected.Count} segments), the queue said {result} ({chain.Error})");
                        return;
                    }
                    if (!CheckSegments(c, chain, head, iteration))
                    {
                        return;
                    }
                    c.Count("popped");
                    FillWritable(c, chain, expected);
                    uint written = (uint)Math.Min(chain.WritableBytes, (ulong)rng.Next(0, 0x400));
                    ushort slot = queue.NextUsed;
                    queue.PushUsed(chain.Head, written);
                    var elem = driver.UsedElem(slot);
                    if (elem.Id != chain.Head || elem.Len != written || driver.UsedIdx != (ushort)(slot + 1))
                    {
                        c.Fail($"used element {slot}: ({elem.Id}, {elem.Len}) idx {driver.UsedIdx}, expected ({chain.Head}, {written}) idx {(ushort)(slot + 1)}");
                        return;
                    }
                    break;
            }
            if (result == PopResult.Malformed && chain.Error != ChainError.AvailIndexJump && chain.Error != ChainError.HeadOutOfRange && rng.Coin())
            {
                // The documented way to give a refused chain back.
                queue.PushUsed(chain.Head, 0);
            }
            switch (rng.Next(6))
            {
                case 0: queue.DisableNotifications(); break;
                case 1: queue.EnableNotifications(); break;
                case 2: queue.NeedsNotification(); break;
            }
            if (result == PopResult.Empty || (result == PopResult.Malformed && chain.Error == ChainError.AvailIndexJump))
            {
                break;
            }
        }
        // Nothing but the handler's writes and the used ring changed.
        for (int i = 0; i < Layout.Length; i++)
        {
            byte[] actual = _memory.Read(Layout[i].Gpa, (int)Layout[i].Size);
            if (actual.AsSpan().SequenceEqual(expected[i]))
            {
                continue;
            }
            for (int b = 0; b < actual.Length; b++)
            {
                ulong gpa = Layout[i].Gpa + (ulong)b;
                if (actual[b] != expected[i][b] && !(gpa >= usedStart && gpa < usedEnd))
                {
                    c.Fail($"guest memory at 0x{gpa:x} changed ({expected[i][b]:x2} -> {actual[b]:x2}) outside the writable segments and the used ring");
                    return;
                }
            }
        }
    }

    private bool CheckSegments(FuzzCase c, DescriptorChain chain, ushort head, int iteration)
    {
        var readable = chain.Readable;
        var writable = chain.Writable;
        if (chain.Head != head || readable.Length + writable.Length != _expected.Count)
        {
            c.Fail($"pop {iteration}: head {chain.Head} with {readable.Length}+{writable.Length} segments, model: head {head} with {_expected.Count}");
            return false;
        }
        ulong readableBytes = 0, writableBytes = 0;
        for (int i = 0; i < _expected.Count; i++)
        {
            var want = _expected[i];
            bool isWritable = i >= readable.Length;
            IoVec got = isWritable ? writable[i - readable.Length] : readable[i];
            nint host = _memory.Host(want.Gpa, want.Length);
            if (want.Writable != isWritable || (nint)got.Base != host || (ulong)got.Length != want.Length || !InsideMappedRegion(got))
            {
                c.Fail($"pop {iteration}: segment {i} is 0x{(nint)got.Base:x}+{got.Length} ({(isWritable ? "w" : "r")}), model: gpa 0x{want.Gpa:x}+{want.Length} ({(want.Writable ? "w" : "r")}) at 0x{host:x}");
                return false;
            }
            if (isWritable) writableBytes += want.Length; else readableBytes += want.Length;
        }
        if (chain.ReadableBytes != readableBytes || chain.WritableBytes != writableBytes)
        {
            c.Fail($"pop {iteration}: byte counts {chain.ReadableBytes}/{chain.WritableBytes}, model {readableBytes}/{writableBytes}");
            return false;
        }
        return true;
    }

    /// <summary>What a handler does: fills every writable segment (in chain order) with a pattern; the model's
    /// ranges get the same bytes in the expected image.</summary>
    private void FillWritable(FuzzCase c, DescriptorChain chain, byte[][] expected)
    {
        byte pattern = (byte)(c.Index * 7 + 1);
        var writable = chain.Writable;
        int first = chain.Readable.Length;
        for (int i = 0; i < writable.Length; i++)
        {
            var seg = writable[i];
            // SAFETY: the segment was checked to lie inside a mapped region (CheckSegments).
            new Span<byte>(seg.Base, (int)seg.Length).Fill(pattern);
            var want = _expected[first + i];
            WriteExpected(expected, want.Gpa, Enumerable.Repeat(pattern, (int)want.Length).ToArray());
        }
    }

    /// <summary>The guest rewrites descriptors, indirect tables and the avail ring while the device pops.</summary>
    private void Race(FuzzCase c, QueueMockDriver driver, DeviceQueue queue, DescriptorChain chain, ushort size)
    {
        c.SeedName += "+race";
        using var stop = new CancellationTokenSource();
        ulong raceSeed = c.Rng.NextU64();
        var writer = new Thread(() =>
        {
            var rng = new FuzzRng(raceSeed);
            var target = new[] { (driver.DescGpa, size * 16), (IndirectA, IndirectEntries * 16), (IndirectB, IndirectEntries * 16), (driver.AvailGpa + 4, 2 * size) };
            while (!stop.IsCancellationRequested)
            {
                var (gpa, length) = rng.Pick(target);
                ulong at = gpa + (ulong)rng.Next(length);
                // SAFETY: at lies inside one of the ring/table areas, all in region 0.
                *(byte*)_memory.Host(at, 1) = (byte)rng.NextU32();
            }
        }) { IsBackground = true, Name = "fuzz-queue-race" };
        writer.Start();
        try
        {
            for (int i = 0; i < 4 * size + 8; i++)
            {
                var result = queue.TryPop(chain);
                if (result == PopResult.Popped)
                {
                    foreach (var seg in chain.Readable)
                    {
                        if (!InsideMappedRegion(seg))
                        {
                            c.Fail($"race: readable segment 0x{(nint)seg.Base:x}+{seg.Length} outside every mapped region");
                            return;
                        }
                    }
                    foreach (var seg in chain.Writable)
                    {
                        if (!InsideMappedRegion(seg))
                        {
                            c.Fail($"race: writable segment 0x{(nint)seg.Base:x}+{seg.Length} outside every mapped region");
                            return;
                        }
                    }
                    if (chain.ReadableBytes + chain.WritableBytes > uint.MaxValue)
                    {
                        c.Fail("race: a chain of more than 4 GiB was accepted");
                        return;
                    }
                    queue.PushUsed(chain.Head, 0);
                    c.Count("race-popped");
                }
                else if (result == PopResult.Malformed)
                {
                    c.Count("race-refused");
                    if (chain.Error == ChainError.AvailIndexJump)
                    {
                        break;
                    }
                }
                else
                {
                    // Keep the driver publishing: the writer scribbles over the ring entries meanwhile.
                    driver.AvailIdx = (ushort)(queue.NextAvail + 1 + (i % size));
                }
            }
        }
        finally
        {
            stop.Cancel();
            writer.Join();
        }
    }
}
