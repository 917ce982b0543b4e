namespace Vhostfsd.Fuzz.Engine;

/// <summary>What a field of a structured seed means, so that mutations can pick values that hit
/// the checks a parser should make (a length off by one, a forged id, an offset near 2^63...).</summary>
public enum FieldKind
{
    /// <summary>Any integer.</summary>
    Integer,
    /// <summary>A byte count of the message or of part of it.</summary>
    Length,
    /// <summary>A count of items (regions, forgets, entries).</summary>
    Count,
    /// <summary>Bit flags.</summary>
    Flags,
    /// <summary>A FUSE node id.</summary>
    NodeId,
    /// <summary>A FUSE file handle or lock owner.</summary>
    Handle,
    /// <summary>A file offset or size.</summary>
    Offset,
    /// <summary>An address (guest-physical or VMM user).</summary>
    Address,
    /// <summary>An index into a table (queue index, descriptor index).</summary>
    Index,
    /// <summary>A NUL-terminated name (Size includes the NUL).</summary>
    Name,
    /// <summary>An opcode or request number.</summary>
    Opcode,
}

/// <summary>A field of a structured seed: where it is, how wide (1, 2, 4, 8 bytes; any width for names), and what it means.</summary>
public readonly record struct Field(string Name, int Offset, int Size, FieldKind Kind);

/// <summary>A well-formed input the mutator starts from, with its field map.</summary>
public sealed class Seed
{
    public Seed(string name, byte[] bytes, IReadOnlyList<Field>? fields = null)
    {
        Name = name;
        Bytes = bytes;
        Fields = fields ?? [];
    }

    public string Name { get; }
    public byte[] Bytes { get; }
    public IReadOnlyList<Field> Fields { get; }

    public override string ToString() => $"{Name} ({Bytes.Length} bytes)";
}

/// <summary>Builds a seed field by field (little-endian), recording the field map.</summary>
public sealed class SeedBuilder
{
    private readonly List<byte> _bytes = new();
    private readonly List<Field> _fields = new();

    public int Length => _bytes.Count;

    public SeedBuilder U8(string name, byte value, FieldKind kind = FieldKind.Integer)
    {
        _fields.Add(new Field(name, _bytes.Count, 1, kind));
        _bytes.Add(value);
        return this;
    }

    public SeedBuilder U16(string name, ushort value, FieldKind kind = FieldKind.Integer) => Int(name, value, 2, kind);
    public SeedBuilder U32(string name, uint value, FieldKind kind = FieldKind.Integer) => Int(name, value, 4, kind);
    public SeedBuilder U64(string name, ulong value, FieldKind kind = FieldKind.Integer) => Int(name, value, 8, kind);

    private SeedBuilder Int(string name, ulong value, int size, FieldKind kind)
    {
        _fields.Add(new Field(name, _bytes.Count, size, kind));
        for (int i = 0; i < size; i++)
        {
            _bytes.Add((byte)(value >> (8 * i)));
        }
        return this;
    }

    /// <summary>Appends <paramref name="value"/> and a NUL.</summary>
    public SeedBuilder Name(string name, string value)
    {
        byte[] bytes = System.Text.Encoding.UTF8.GetBytes(value);
        _fields.Add(new Field(name, _bytes.Count, bytes.Length + 1, FieldKind.Name));
        _bytes.AddRange(bytes);
        _bytes.Add(0);
        return this;
    }

    public SeedBuilder Bytes(ReadOnlySpan<byte> bytes)
    {
        foreach (byte b in bytes)
        {
            _bytes.Add(b);
        }
        return this;
    }

    /// <summary>Zero bytes (padding, reserved words).</summary>
    public SeedBuilder Zeros(int count)
    {
        for (int i = 0; i < count; i++)
        {
            _bytes.Add(0);
        }
        return this;
    }

    /// <summary>Overwrites a 4-byte little-endian value at <paramref name="offset"/> (a length known only at the end).</summary>
    public SeedBuilder PatchU32(int offset, uint value)
    {
        for (int i = 0; i < 4; i++)
        {
            _bytes[offset + i] = (byte)(value >> (8 * i));
        }
        return this;
    }

    public Seed Build(string name) => new(name, _bytes.ToArray(), _fields.ToArray());
}
