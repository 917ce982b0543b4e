namespace Vhostfsd.FuseProtocol;

/// <summary>Encodes the entries of a READDIR reply (fuse_dirent records) or a READDIRPLUS reply
/// (fuse_direntplus: the entry's fuse_entry_out, then its fuse_dirent), each padded to 8 bytes, into
/// a <see cref="ReplyWriter"/> up to a byte budget (the guest's size, at most the room there is).
/// A file system adds entries until <see cref="Fits"/> says no: an entry that does not fit is left
/// for the next request, which resumes at the last entry's offset.</summary>
public ref struct DirentWriter
{
    private ReplyWriter _writer;
    private readonly int _budget;
    private int _written;

    public DirentWriter(ReplyWriter writer, int budget, bool plus)
    {
        _writer = writer;
        _budget = Math.Min(budget, writer.Available);
        Plus = plus;
    }

    /// <summary>READDIRPLUS: entries carry their fuse_entry_out (and count a lookup each).</summary>
    public bool Plus { get; }

    /// <summary>The writer, advanced past the entries added; the server continues with it.</summary>
    public readonly ReplyWriter Writer => _writer;

    /// <summary>Bytes of entries added.</summary>
    public readonly int Written => _written;

    /// <summary>True when an entry with a name of <paramref name="nameLength"/> bytes still fits.</summary>
    public readonly bool Fits(int nameLength) => _written + RecordSize(nameLength) <= _budget;

    /// <summary>Adds a READDIR entry; false (nothing written) when it does not fit.</summary>
    public bool TryAdd(ulong ino, ulong offset, uint type, ReadOnlySpan<byte> name) => TryAdd(in Unlooked, ino, offset, type, name, plus: false);

    /// <summary>Adds a READDIRPLUS entry with its lookup reply (all zero: listed without attributes, the
    /// guest looks the name up itself); false (nothing written) when it does not fit.</summary>
    public bool TryAddPlus(in FuseEntryOut entry, ulong ino, ulong offset, uint type, ReadOnlySpan<byte> name) => TryAdd(in entry, ino, offset, type, name, plus: true);

    private static readonly FuseEntryOut Unlooked = default;

    private readonly int RecordSize(int nameLength) => Plus ? FuseConstants.DirentplusSize(nameLength) : FuseConstants.DirentSize(nameLength);

    private bool TryAdd(in FuseEntryOut entry, ulong ino, ulong offset, uint type, ReadOnlySpan<byte> name, bool plus)
    {
        if (plus != Plus)
        {
            throw new InvalidOperationException(Plus ? "a READDIRPLUS entry needs its fuse_entry_out" : "a READDIR entry has no fuse_entry_out");
        }
        int size = RecordSize(name.Length);
        if (_written + size > _budget)
        {
            return false;
        }
        if (plus)
        {
            _writer.TryWrite(in entry);
        }
        var dirent = new FuseDirent { Ino = ino, Off = offset, NameLen = (uint)name.Length, Type = type };
        _writer.TryWrite(in dirent);
        _writer.TryWrite(name);
        int header = plus ? FuseConstants.NameOffsetDirentplus : FuseConstants.NameOffset;
        _writer.TryWriteZeros(size - header - name.Length);
        _written += size;
        return true;
    }
}
