using System.Security.Cryptography;
using System.Text;
using Vhostfsd.Posix;

namespace Vhostfsd.Fuzz.Oracles;

/// <summary>Host files outside a share that nothing the guest does may touch. <see cref="Snapshot"/>
/// records, without disturbing them (lstat; contents and listings read with O_NOATIME), every
/// entry under the watched paths: type, mode, owner, size, link count, atime/mtime/ctime to the
/// nanosecond, symlink target, content hash and directory listing. Atimes are set back to 2001 at
/// creation, so under relatime any read through the daemon would move them.</summary>
public sealed unsafe class SentinelTree
{
    private static readonly DateTime Old = new(2001, 1, 1, 0, 0, 0, DateTimeKind.Utc);
    private readonly List<string> _roots = new();

    /// <summary>Creates <c>outside/</c> next to the share under <paramref name="parent"/> with a few files,
    /// a subdirectory and a symlink, and watches it and <paramref name="parent"/> itself.</summary>
    public static SentinelTree CreateBeside(string parent)
    {
        string outside = Path.Combine(parent, "outside");
        Directory.CreateDirectory(Path.Combine(outside, "dir"));
        File.WriteAllText(Path.Combine(outside, "secret"), "host secret: the guest must never read or change this\n");
        File.WriteAllBytes(Path.Combine(outside, "dir", "data.bin"), RandomNumberGenerator.GetBytes(8192));
        File.WriteAllText(Path.Combine(outside, "dir", "passwd"), "root:x:0:0::/root:/bin/sh\n");
        File.CreateSymbolicLink(Path.Combine(outside, "link"), "secret");
        var tree = new SentinelTree();
        tree.Watch(outside);
        tree.AgeTimes(outside);
        tree.Watch(parent, recursive: false);
        return tree;
    }

    private readonly Dictionary<string, bool> _recursive = new();

    /// <summary>Adds a path to watch (recursively for directories unless told otherwise).</summary>
    public void Watch(string path, bool recursive = true)
    {
        _roots.Add(path);
        _recursive[path] = recursive;
    }

    /// <summary>Sets atime and mtime of everything under <paramref name="path"/> (not following links) to 2001.</summary>
    public void AgeTimes(string path)
    {
        foreach (string entry in Directory.EnumerateFileSystemEntries(path, "*", SearchOption.AllDirectories))
        {
            SetOld(entry);
        }
        SetOld(path);
    }

    private static void SetOld(string path)
    {
        long seconds = (long)(Old - DateTime.UnixEpoch).TotalSeconds;
        Timespec* times = stackalloc Timespec[2];
        times[0] = new Timespec { Sec = seconds, Nsec = 0 };
        times[1] = new Timespec { Sec = seconds, Nsec = 0 };
        fixed (byte* p = Encoding.UTF8.GetBytes(path + "\0"))
        {
            Libc.UtimensAt(Libc.AT_FDCWD, p, times, Libc.AT_SYMLINK_NOFOLLOW);
        }
    }

    /// <summary>Everything observable about the watched paths, one line per entry.</summary>
    public SortedDictionary<string, string> Snapshot()
    {
        var result = new SortedDictionary<string, string>(StringComparer.Ordinal);
        foreach (string root in _roots)
        {
            Record(root, _recursive[root], result);
        }
        return result;
    }

    /// <summary>Differences between two snapshots (empty when equal).</summary>
    public static List<string> Compare(SortedDictionary<string, string> before, SortedDictionary<string, string> after)
    {
        var problems = new List<string>();
        foreach (var (path, state) in before)
        {
            if (!after.TryGetValue(path, out string? now))
            {
                problems.Add($"{path} disappeared (was {state})");
            }
            else if (now != state)
            {
                problems.Add($"{path} changed: {state} -> {now}");
            }
        }
        foreach (var (path, state) in after)
        {
            if (!before.ContainsKey(path))
            {
                problems.Add($"{path} appeared ({state})");
            }
        }
        return problems;
    }

    private static void Record(string path, bool recursive, SortedDictionary<string, string> result)
    {
        Statx st;
        byte[] name = Encoding.UTF8.GetBytes(path + "\0");
        fixed (byte* p = name)
        {
            if (Libc.StatxAt(Libc.AT_FDCWD, p, Libc.AT_SYMLINK_NOFOLLOW, Libc.STATX_BASIC_STATS, &st) != 0)
            {
                result[path] = "missing (" + Libc.LastErrno + ")";
                return;
            }
        }
        uint type = st.Mode & Libc.S_IFMT;
        var sb = new StringBuilder();
        sb.Append($"mode {Convert.ToString(st.Mode, 8)} uid {st.Uid} gid {st.Gid} size {st.FileSize} nlink {st.Nlink} ino {st.Ino} ");
        // readlink(2) itself moves a symlink's atime, so a symlink is described without reading it: its
        // target cannot change in place (a new link is a new inode and changes the directory).
        if (type != Libc.S_IFLNK)
        {
            sb.Append($"atime {st.Atime.Sec}.{st.Atime.Nsec:D9} ");
        }
        sb.Append($"mtime {st.Mtime.Sec}.{st.Mtime.Nsec:D9} ctime {st.Ctime.Sec}.{st.Ctime.Nsec:D9}");
        if (type == Libc.S_IFREG)
        {
            sb.Append(" sha256 ").Append(HashContent(name));
        }
        List<string>? children = null;
        if (type == Libc.S_IFDIR)
        {
            children = List(name);
            sb.Append(" entries [").Append(string.Join(',', children)).Append(']');
        }
        result[path] = sb.ToString();
        if (children != null && recursive)
        {
            foreach (string child in children)
            {
                Record(Path.Combine(path, child), recursive: true, result);
            }
        }
    }

    private static string HashContent(byte[] name)
    {
        int fd;
        fixed (byte* p = name)
        {
            fd = Libc.OpenAt(Libc.AT_FDCWD, p, Libc.O_RDONLY | Libc.O_NOATIME | Libc.O_CLOEXEC | Libc.O_NOFOLLOW, 0);
        }
        if (fd < 0)
        {
            return "unreadable (" + Libc.LastErrno + ")";
        }
        try
        {
            using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
            byte[] buffer = new byte[65536];
            while (true)
            {
                nint n;
                fixed (byte* b = buffer)
                {
                    n = Libc.Read(fd, b, (nuint)buffer.Length);
                }
                if (n <= 0)
                {
                    break;
                }
                hash.AppendData(buffer, 0, (int)n);
            }
            return Convert.ToHexString(hash.GetHashAndReset());
        }
        finally
        {
            Libc.Close(fd);
        }
    }

    private static List<string> List(byte[] name)
    {
        var names = new List<string>();
        int fd;
        fixed (byte* p = name)
        {
            fd = Libc.OpenAt(Libc.AT_FDCWD, p, Libc.O_RDONLY | Libc.O_DIRECTORY | Libc.O_NOATIME | Libc.O_CLOEXEC | Libc.O_NOFOLLOW, 0);
        }
        if (fd < 0)
        {
            names.Add("<unlistable " + Libc.LastErrno + ">");
            return names;
        }
        try
        {
            byte[] buffer = new byte[32768];
            fixed (byte* b = buffer)
            {
                while (true)
                {
                    nint n = Libc.Getdents64(fd, b, (nuint)buffer.Length);
                    if (n <= 0)
                    {
                        break;
                    }
                    int at = 0;
                    while (at < n)
                    {
                        // linux_dirent64: u64 ino, s64 off, u16 reclen, u8 type, name.
                        ushort reclen = *(ushort*)(b + at + 16);
                        byte* entryName = b + at + 19;
                        int len = 0;
                        while (entryName[len] != 0)
                        {
                            len++;
                        }
                        string entry = Encoding.UTF8.GetString(entryName, len);
                        if (entry is not "." and not "..")
                        {
                            names.Add(entry);
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
        names.Sort(StringComparer.Ordinal);
        return names;
    }
}
