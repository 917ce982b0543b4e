using System.Security.Cryptography;
using System.Text;
using Vhostfsd.Posix;

namespace Vhostfsd.Fuzz.Oracles;

/// <summary>One inode of the share as the host sees it: what a privilege oracle needs to judge a
/// change (type and mode bits, owner, times, link count, every extended attribute with a digest of
/// its value) and where it is (its paths relative to the share, and the directory of the first).</summary>
public sealed class HostEntry
{
    public required ulong Ino { get; init; }
    public required uint Mode { get; init; }
    public required uint Uid { get; init; }
    public required uint Gid { get; init; }
    public required ulong Size { get; init; }
    public required uint Nlink { get; init; }
    public required (uint Major, uint Minor) Rdev { get; init; }
    public required (long Sec, uint Nsec) Mtime { get; init; }
    public required (long Sec, uint Nsec) Ctime { get; init; }

    /// <summary>Attribute name -> digest of its value.</summary>
    public required SortedDictionary<string, string> Xattrs { get; init; }

    /// <summary>The paths it has in the share ("" is the share itself), sorted.</summary>
    public List<string> Paths { get; } = new();

    /// <summary>The inode of the directory holding the first path (0 for the share itself).</summary>
    public ulong ParentIno { get; set; }

    public uint Type => Mode & Libc.S_IFMT;
    public bool IsDirectory => Type == Libc.S_IFDIR;
    public bool IsRegular => Type == Libc.S_IFREG;
    public bool IsSetuid => (Mode & Libc.S_ISUID) != 0;
    public bool IsSetgid => (Mode & Libc.S_ISGID) != 0;

    /// <summary>What RENAME_WHITEOUT leaves: a character device 0:0, which opens nothing.</summary>
    public bool IsWhiteout => Type == Libc.S_IFCHR && Rdev == (0, 0) && (Mode & (Libc.S_ISUID | Libc.S_ISGID)) == 0;

    /// <summary>Everything a request can change, atime aside (reading is allowed where it is).</summary>
    public bool SameState(HostEntry other) =>
        Mode == other.Mode && Uid == other.Uid && Gid == other.Gid && Size == other.Size && Nlink == other.Nlink
        && Mtime == other.Mtime && Ctime == other.Ctime && SameXattrs(other) && Paths.SequenceEqual(other.Paths, StringComparer.Ordinal);

    public bool SameXattrs(HostEntry other) =>
        Xattrs.Count == other.Xattrs.Count && Xattrs.All(kv => other.Xattrs.TryGetValue(kv.Key, out string? v) && v == kv.Value);

    public override string ToString()
    {
        string where = Paths.Count == 0 ? "?" : "/" + string.Join(" and /", Paths);
        string xattrs = Xattrs.Count == 0 ? "" : " xattrs [" + string.Join(", ", Xattrs.Keys) + "]";
        return $"{where} (ino {Ino}, mode {Convert.ToString(Mode, 8)}, uid {Uid} gid {Gid}){xattrs}";
    }
}

/// <summary>Reads the state of every inode under a share from the host, without following a link and
/// without opening anything but directories: lstat-like statx, getdents64 and the *xattrat calls
/// (AT_SYMLINK_NOFOLLOW), all by path from the share. Each scan reads everything again: on a kernel
/// with coarse timestamps two requests inside one tick leave ctime where it was, so an unchanged
/// ctime proves nothing.</summary>
public sealed unsafe class HostShare
{
    /// <summary>Deeper than any tree the fuzzers make in a run; a guard against a runaway walk.</summary>
    private const int MaxDepth = 64;

    private readonly byte[] _root;
    private readonly byte[] _names = new byte[65536];
    private readonly byte[] _value = new byte[65536 + 1];
    private readonly byte[] _dents = new byte[32768];

    public HostShare(string root)
    {
        _root = Encoding.UTF8.GetBytes(root);
    }

    /// <summary>Every inode under the share, keyed by inode number.</summary>
    public Dictionary<ulong, HostEntry> Scan()
    {
        var result = new Dictionary<ulong, HostEntry>();
        Visit(_root, "", 0, 0, result);
        foreach (var entry in result.Values)
        {
            entry.Paths.Sort(StringComparer.Ordinal);
        }
        return result;
    }

    private void Visit(byte[] path, string display, ulong parentIno, int depth, Dictionary<ulong, HostEntry> result)
    {
        Statx st;
        fixed (byte* p = Z(path))
        {
            if (Libc.StatxAt(Libc.AT_FDCWD, p, Libc.AT_SYMLINK_NOFOLLOW, Libc.STATX_BASIC_STATS, &st) != 0)
            {
                // Gone between the listing and the statx: nothing runs beside the scan, so it never is.
                return;
            }
        }
        if (result.TryGetValue(st.Ino, out HostEntry? known))
        {
            known.Paths.Add(display);
            return;
        }
        var entry = new HostEntry
        {
            Ino = st.Ino,
            Mode = st.Mode,
            Uid = st.Uid,
            Gid = st.Gid,
            Size = st.FileSize,
            Nlink = st.Nlink,
            Rdev = (st.RdevMajor, st.RdevMinor),
            Mtime = (st.Mtime.Sec, st.Mtime.Nsec),
            Ctime = (st.Ctime.Sec, st.Ctime.Nsec),
            Xattrs = ReadXattrs(path),
            ParentIno = parentIno,
        };
        entry.Paths.Add(display);
        result[st.Ino] = entry;
        if (entry.IsDirectory && depth < MaxDepth)
        {
            foreach (byte[] name in List(path))
            {
                byte[] child = new byte[path.Length + 1 + name.Length];
                path.CopyTo(child, 0);
                child[path.Length] = (byte)'/';
                name.CopyTo(child, path.Length + 1);
                string shown = Printable(name);
                Visit(child, display.Length == 0 ? shown : display + "/" + shown, st.Ino, depth + 1, result);
            }
        }
    }

    private SortedDictionary<string, string> ReadXattrs(byte[] path)
    {
        var xattrs = new SortedDictionary<string, string>(StringComparer.Ordinal);
        byte[] z = Z(path);
        nint n;
        fixed (byte* p = z)
        fixed (byte* list = _names)
        {
            n = Libc.ListxattrAt(Libc.AT_FDCWD, p, Libc.AT_SYMLINK_NOFOLLOW, list, (nuint)_names.Length);
        }
        if (n <= 0)
        {
            return xattrs;
        }
        int at = 0;
        while (at < n)
        {
            int end = Array.IndexOf(_names, (byte)0, at, (int)n - at);
            if (end < 0)
            {
                end = (int)n;
            }
            if (end > at)
            {
                byte[] name = new byte[end - at + 1];
                Array.Copy(_names, at, name, 0, end - at);
                nint size;
                fixed (byte* p = z)
                fixed (byte* nm = name)
                fixed (byte* v = _value)
                {
                    size = Libc.GetxattrAt(Libc.AT_FDCWD, p, Libc.AT_SYMLINK_NOFOLLOW, nm, v, (nuint)_value.Length);
                }
                string digest = size < 0 ? "unreadable " + Libc.LastErrno
                    : size <= 32 ? Convert.ToHexString(_value, 0, (int)size)
                    : "sha256 " + Convert.ToHexString(SHA256.HashData(_value.AsSpan(0, (int)size)));
                xattrs[Encoding.UTF8.GetString(name, 0, name.Length - 1)] = digest;
            }
            at = end + 1;
        }
        return xattrs;
    }

    private List<byte[]> List(byte[] path)
    {
        var names = new List<byte[]>();
        int fd;
        fixed (byte* p = Z(path))
        {
            fd = Libc.OpenAt(Libc.AT_FDCWD, p, Libc.O_RDONLY | Libc.O_DIRECTORY | Libc.O_NOATIME | Libc.O_CLOEXEC | Libc.O_NOFOLLOW, 0);
        }
        if (fd < 0)
        {
            return names;
        }
        try
        {
            fixed (byte* b = _dents)
            {
                while (true)
                {
                    nint n = Libc.Getdents64(fd, b, (nuint)_dents.Length);
                    if (n <= 0)
                    {
                        break;
                    }
                    int at = 0;
                    while (at < n)
                    {
                        // linux_dirent64: u64 ino, s64 off, u16 reclen, u8 type, name.
                        ushort reclen = *(ushort*)(b + at + 16);
                        var name = new ReadOnlySpan<byte>(b + at + 19, reclen - 19);
                        name = name[..name.IndexOf((byte)0)];
                        if (!name.SequenceEqual("."u8) && !name.SequenceEqual(".."u8))
                        {
                            names.Add(name.ToArray());
                        }
                        at += reclen;
                    }
                }
            }
        }
        finally
        {
            Libc.Close(fd);
        }
        names.Sort((x, y) => x.AsSpan().SequenceCompareTo(y));
        return names;
    }

    private static byte[] Z(byte[] path)
    {
        var z = new byte[path.Length + 1];
        path.CopyTo(z, 0);
        return z;
    }

    /// <summary>A name as text for messages: printable ASCII kept, other bytes as \xNN.</summary>
    public static string Printable(ReadOnlySpan<byte> name)
    {
        if (name.Length > 40)
        {
            return Printable(name[..16]) + $"...({name.Length} bytes)";
        }
        var sb = new StringBuilder();
        foreach (byte c in name)
        {
            if (c is >= 0x20 and < 0x7F && c != (byte)'\\')
            {
                sb.Append((char)c);
            }
            else
            {
                sb.Append($"\\x{c:X2}");
            }
        }
        return sb.ToString();
    }
}
