using System.Buffers.Binary;
using System.Text;

namespace Vhostfsd.Fuzz.Engine;

/// <summary>Target-specific values the mutator mixes in: real node ids and handles, addresses at
/// region edges, names that lead out of the share. Any member may be left empty.</summary>
public sealed class MutationDictionary
{
    /// <summary>Values that mean something to the target, per field kind (ids it handed out, region edges...).</summary>
    public Dictionary<FieldKind, List<ulong>> Values { get; } = new();

    /// <summary>Names worth trying in name fields (without the NUL).</summary>
    public List<byte[]> Names { get; } = new();

    public void Add(FieldKind kind, ulong value)
    {
        if (!Values.TryGetValue(kind, out var list))
        {
            Values[kind] = list = new List<ulong>();
        }
        list.Add(value);
    }

    public void AddName(string name) => Names.Add(Encoding.UTF8.GetBytes(name));
}

/// <summary>The mutation engine: stacks 1..4 mutations chosen among bit flips, byte writes,
/// interesting integers, field-aware edits (lengths, counts, ids, offsets, addresses, names),
/// truncation, extension, chunk insertion/deletion/duplication and splicing with another seed.
/// Deterministic for a given <see cref="FuzzRng"/> state.</summary>
public static class Mutator
{
    /// <summary>Largest input the mutator produces (the FUSE and vhost-user limits lie below it).</summary>
    public const int MaxLength = 1 << 21;

    private static readonly ulong[] Interesting8 = [0, 1, 0x7F, 0x80, 0xFF];
    private static readonly ulong[] Interesting16 = [0, 1, 0x7FFF, 0x8000, 0xFFFF, 0x100, 0x1000, 0x8001, 0x7FFE];
    private static readonly ulong[] Interesting32 =
    [
        0, 1, 2, 15, 16, 17, 39, 40, 41, 255, 256, 4095, 4096, 4097, 65535, 65536, 0x7FFF_FFFF, 0x8000_0000,
        0xFFFF_FFFF, 0xFFFF_FFFE, 0x0010_0000, 0x0010_1000, 0x8000,
    ];
    private static readonly ulong[] Interesting64 =
    [
        0, 1, 0xFFFF_FFFF, 0x1_0000_0000, 0x7FFF_FFFF_FFFF_FFFF, 0x8000_0000_0000_0000, ulong.MaxValue,
        ulong.MaxValue - 1, ulong.MaxValue - 4095, 0xFFFF_FFFF_FFFF_F000, 0x7FFF_FFFF_FFFF_F000, 1UL << 40,
    ];

    private static readonly string[] HostileNames =
    [
        "", ".", "..", "/", "a/b", "../x", "../../etc/passwd", "/etc/passwd", "..\u0000x", "x\u0000y",
        new string('a', 255), new string('a', 256), new string('b', 1025), "\u00ff\u00fe", "-", " ",
    ];

    /// <summary>Returns a mutated copy of <paramref name="seed"/> for case <paramref name="c"/>: what was done
    /// goes to its log, and the mutations the case skips (a minimisation, FUZZ_SKIP) are left out.</summary>
    public static byte[] Mutate(FuzzRng rng, Seed seed, IReadOnlyList<Seed>? corpus, MutationDictionary? dictionary, FuzzCase c)
    {
        lock (c.Mutations)
        {
            return Mutate(rng, seed, corpus, dictionary, c.Mutations, c);
        }
    }

    /// <summary>Returns a mutated copy of <paramref name="seed"/>; <paramref name="log"/> collects what was done.
    /// Each mutation draws from a generator of its own (seeded from <paramref name="rng"/>), so leaving
    /// one out changes nothing in the others: a minimisation can drop them one at a time.</summary>
    public static byte[] Mutate(FuzzRng caseRng, Seed seed, IReadOnlyList<Seed>? corpus, MutationDictionary? dictionary, List<string>? log, FuzzCase? c = null)
    {
        var data = new List<byte>(seed.Bytes);
        // Field offsets are valid until a length-changing mutation; after one, only raw mutations follow.
        bool fieldsValid = true;
        int count = 1;
        while (count < 4 && caseRng.OneIn(3))
        {
            count++;
        }
        for (int i = 0; i < count; i++)
        {
            var rng = new FuzzRng(caseRng.NextU64());
            if (c != null)
            {
                int index = c.MutationCount++;
                if (c.Skip.Contains(index))
                {
                    log?.Add($"(#{index} skipped)");
                    continue;
                }
            }
            int choice = rng.Next(100);
            if (choice < 40 && fieldsValid && seed.Fields.Count > 0)
            {
                var field = rng.Pick(seed.Fields);
                if (field.Offset + field.Size > data.Count)
                {
                    continue;
                }
                if (field.Kind == FieldKind.Name)
                {
                    MutateName(rng, data, field, dictionary, log);
                    fieldsValid = false;
                }
                else
                {
                    ulong value = FieldValue(rng, field, ReadField(data, field), data.Count, dictionary);
                    WriteInt(data, field.Offset, field.Size, value);
                    log?.Add($"{field.Name}={value:x}");
                }
            }
            else if (choice < 52)
            {
                if (data.Count == 0)
                {
                    continue;
                }
                int flips = rng.Next(1, 5);
                for (int f = 0; f < flips; f++)
                {
                    int bit = rng.Next(data.Count * 8);
                    data[bit / 8] ^= (byte)(1 << (bit % 8));
                    log?.Add($"flip@{bit / 8}.{bit % 8}");
                }
            }
            else if (choice < 60)
            {
                if (data.Count == 0)
                {
                    continue;
                }
                int at = rng.Next(data.Count);
                data[at] = (byte)rng.NextU32();
                log?.Add($"byte@{at}={data[at]:x}");
            }
            else if (choice < 72)
            {
                int width = rng.Pick<int>([1, 2, 4, 8]);
                if (data.Count < width)
                {
                    continue;
                }
                int at = rng.Next(data.Count - width + 1);
                ulong value = Interesting(rng, width);
                WriteInt(data, at, width, value);
                log?.Add($"int{width * 8}@{at}={value:x}");
            }
            else if (choice < 79)
            {
                if (data.Count == 0)
                {
                    continue;
                }
                int keep = rng.OneIn(4) ? rng.Next(Math.Min(data.Count, 48)) : rng.Next(data.Count);
                data.RemoveRange(keep, data.Count - keep);
                fieldsValid = false;
                log?.Add($"truncate@{keep}");
            }
            else if (choice < 85)
            {
                int n = rng.OneIn(8) ? rng.Next(1, 8192) : rng.Next(1, 64);
                var extra = new byte[n];
                if (rng.Coin())
                {
                    rng.Fill(extra);
                }
                data.AddRange(extra);
                log?.Add($"extend+{n}");
            }
            else if (choice < 90)
            {
                // Insert, delete or duplicate a chunk.
                if (data.Count == 0)
                {
                    continue;
                }
                int at = rng.Next(data.Count);
                int n = Math.Min(rng.Next(1, 33), data.Count - at);
                int op = rng.Next(3);
                if (op == 0)
                {
                    var extra = new byte[n];
                    rng.Fill(extra);
                    data.InsertRange(at, extra);
                    log?.Add($"insert@{at}+{n}");
                }
                else if (op == 1)
                {
                    data.RemoveRange(at, n);
                    log?.Add($"delete@{at}-{n}");
                }
                else
                {
                    data.InsertRange(at, data.GetRange(at, n));
                    log?.Add($"dup@{at}+{n}");
                }
                fieldsValid = false;
            }
            else if (corpus is { Count: > 0 })
            {
                var other = rng.Pick(corpus);
                int cut = data.Count == 0 ? 0 : rng.Next(data.Count + 1);
                int from = other.Bytes.Length == 0 ? 0 : rng.Next(other.Bytes.Length + 1);
                data.RemoveRange(cut, data.Count - cut);
                data.AddRange(other.Bytes.AsSpan(from).ToArray());
                fieldsValid = false;
                log?.Add($"splice@{cut}<-{other.Name}@{from}");
            }
        }
        if (data.Count > MaxLength)
        {
            data.RemoveRange(MaxLength, data.Count - MaxLength);
        }
        return data.ToArray();
    }

    /// <summary>An interesting integer of <paramref name="width"/> bytes, sometimes off by one.</summary>
    public static ulong Interesting(FuzzRng rng, int width)
    {
        ulong v = width switch
        {
            1 => rng.Pick<ulong>(Interesting8),
            2 => rng.Pick<ulong>(Interesting16),
            4 => rng.Pick<ulong>(Interesting32),
            _ => rng.Pick<ulong>(Interesting64),
        };
        if (rng.OneIn(4))
        {
            v = rng.Coin() ? v + 1 : v - 1;
        }
        return v;
    }

    private static ulong FieldValue(FuzzRng rng, Field field, ulong current, int totalLength, MutationDictionary? dictionary)
    {
        if (dictionary != null && dictionary.Values.TryGetValue(field.Kind, out var known) && known.Count > 0 && rng.OneIn(3))
        {
            ulong k = rng.Pick(known);
            return rng.OneIn(4) ? k + 1 : k;
        }
        switch (field.Kind)
        {
            case FieldKind.Length:
                return rng.Next(9) switch
                {
                    0 => 0,
                    1 => current - 1,
                    2 => current + 1,
                    3 => (ulong)totalLength,
                    4 => (ulong)totalLength + 1,
                    5 => (ulong)totalLength - 1,
                    6 => current * 2,
                    7 => (ulong)rng.Next(64),
                    _ => Interesting(rng, field.Size),
                };
            case FieldKind.Count:
                return rng.Next(6) switch
                {
                    0 => 0,
                    1 => current + 1,
                    2 => current - 1,
                    3 => (ulong)rng.Next(1, 10),
                    4 => (ulong)rng.Pick<int>([8, 9, 32, 33, 255, 256, 509, 510, 65535, 65536]),
                    _ => Interesting(rng, field.Size),
                };
            case FieldKind.Flags:
                return rng.Next(5) switch
                {
                    0 => 0,
                    1 => ulong.MaxValue,
                    2 => current ^ (1UL << rng.Next(field.Size * 8)),
                    3 => current | (1UL << rng.Next(field.Size * 8)),
                    _ => rng.NextU64(),
                };
            case FieldKind.NodeId:
            case FieldKind.Handle:
                return rng.Next(6) switch
                {
                    0 => 0,
                    1 => 1,
                    2 => current + (ulong)rng.Next(1, 4),
                    3 => ulong.MaxValue,
                    4 => (ulong)rng.Next(1, 100_000),
                    _ => rng.NextU64(),
                };
            case FieldKind.Offset:
                return rng.Next(7) switch
                {
                    0 => 0,
                    1 => long.MaxValue,
                    2 => 1UL << 63,
                    3 => ulong.MaxValue,
                    4 => (ulong)long.MaxValue - (ulong)rng.Next(4096),
                    5 => 1UL << rng.Next(64),
                    _ => rng.NextU64(),
                };
            case FieldKind.Address:
                return rng.Next(6) switch
                {
                    0 => 0,
                    1 => ulong.MaxValue - (ulong)rng.Next(8192),
                    2 => current + (ulong)rng.Next(-4096, 4096),
                    3 => current ^ (1UL << rng.Next(64)),
                    4 => 1UL << rng.Next(64),
                    _ => rng.NextU64(),
                };
            case FieldKind.Index:
                return rng.Next(5) switch
                {
                    0 => 0,
                    1 => current + 1,
                    2 => (ulong)rng.Pick<int>([1, 2, 255, 256, 257, 1023, 1024, 32767, 32768, 32769, 65535]),
                    3 => current | 0x100,
                    _ => Interesting(rng, field.Size),
                };
            case FieldKind.Opcode:
                return rng.Next(4) switch
                {
                    0 => (ulong)rng.Next(0, 60),
                    1 => current + 1,
                    2 => Interesting(rng, field.Size),
                    _ => rng.NextU32(),
                };
            default:
                return rng.Coin() ? Interesting(rng, field.Size) : rng.NextU64();
        }
    }

    private static void MutateName(FuzzRng rng, List<byte> data, Field field, MutationDictionary? dictionary, List<string>? log)
    {
        int nameLength = field.Size - 1;
        switch (rng.Next(4))
        {
            case 0:
                // No NUL: the name runs into what follows (or to the end).
                data[field.Offset + nameLength] = (byte)'A';
                log?.Add($"{field.Name}:no-nul");
                return;
            case 1 when nameLength > 0:
                data[field.Offset + rng.Next(nameLength)] = rng.Pick<byte>([(byte)'/', 0, (byte)'.', 0xFF]);
                log?.Add($"{field.Name}:byte");
                return;
            default:
            {
                byte[] replacement = dictionary is { Names.Count: > 0 } && rng.Coin()
                    ? rng.Pick(dictionary.Names)
                    : Encoding.UTF8.GetBytes(rng.Pick<string>(HostileNames));
                data.RemoveRange(field.Offset, nameLength);
                data.InsertRange(field.Offset, replacement);
                log?.Add($"{field.Name}=\"{Printable(replacement)}\"");
                return;
            }
        }
    }

    private static string Printable(byte[] name)
    {
        if (name.Length > 24)
        {
            return $"{(char)name[0]}x{name.Length}";
        }
        var sb = new StringBuilder();
        foreach (byte b in name)
        {
            sb.Append(b is >= 0x20 and < 0x7F ? (char)b : '?');
        }
        return sb.ToString();
    }

    public static ulong ReadField(List<byte> data, Field field)
    {
        ulong v = 0;
        for (int i = 0; i < field.Size && i < 8; i++)
        {
            v |= (ulong)data[field.Offset + i] << (8 * i);
        }
        return v;
    }

    private static void WriteInt(List<byte> data, int offset, int width, ulong value)
    {
        for (int i = 0; i < width && i < 8; i++)
        {
            data[offset + i] = (byte)(value >> (8 * i));
        }
    }

    /// <summary>Writes a little-endian u32 into a byte array (helpers for targets that fix lengths up).</summary>
    public static void PatchU32(byte[] bytes, int offset, uint value) => BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(offset), value);
}
