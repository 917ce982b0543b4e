using System.Text;
using Vhostfsd.FusePassthrough;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.Testing;

/// <summary>A small in-memory file system behind the FUSE server, for tests of the server itself
/// (decoding, validation, INIT, dispatch, encoding) without a host directory: directories, regular
/// files, symlinks and extended attributes, lookup counts, open handles. Not fast and not complete
/// (no locks, no fallocate): it answers ENOSYS where it has nothing to say. Records what the server
/// handed it, so tests can check that a refused request never reached it.</summary>
public sealed class MemoryTree
{
    private readonly object _lock = new();
    private readonly Dictionary<ulong, MemoryNode> _nodes = new();
    private readonly Dictionary<ulong, ulong> _handles = new();
    private ulong _nextId = FuseConstants.RootId + 1;
    private ulong _nextHandle = 1;

    public MemoryTree()
    {
        _nodes[FuseConstants.RootId] = new MemoryNode(FuseConstants.RootId, Libc.S_IFDIR | 0x1ED) { Lookups = 1 };
    }

    /// <summary>Every modifying request is refused by the server (EROFS).</summary>
    public bool ReadOnly { get; set; }

    /// <summary>Flags this file system asks for at INIT.</summary>
    public FuseInitFlags Wanted { get; set; } = FuseInitFlags.DoReaddirplus;

    /// <summary>When set, INIT is refused with it (an errno, e.g. EPROTO).</summary>
    public int InitError { get; set; }

    /// <summary>Thrown from the next call (to test that the server answers EIO and carries on).</summary>
    public Exception? ThrowNext { get; set; }

    public FuseInitFlags Granted { get; private set; }

    /// <summary>Calls the server made, by method name.</summary>
    public Dictionary<string, int> Calls { get; } = new();

    public List<ulong> Interrupted { get; } = new();

    public int DestroyCount { get; private set; }

    public int NodeCount
    {
        get
        {
            lock (_lock)
            {
                return _nodes.Count;
            }
        }
    }

    internal sealed class MemoryNode(ulong id, uint mode)
    {
        public ulong Id = id;
        public uint Mode = mode;
        public uint Uid;
        public uint Gid;
        public long Lookups;
        public int Links = 1;
        public List<byte> Data = new();
        public byte[] Target = [];
        public Dictionary<string, ulong> Children = new(StringComparer.Ordinal);
        public Dictionary<string, byte[]> Xattrs = new(StringComparer.Ordinal);
        public bool IsDirectory => (Mode & Libc.S_IFMT) == Libc.S_IFDIR;
    }

    internal T Run<T>(string call, Func<T> body)
    {
        lock (_lock)
        {
            Calls[call] = Calls.GetValueOrDefault(call) + 1;
            if (ThrowNext is { } e)
            {
                ThrowNext = null;
                throw e;
            }
            return body();
        }
    }

    internal MemoryNode? Node(ulong id) => _nodes.GetValueOrDefault(id);

    internal MemoryNode? Handle(ulong fh, ulong id) => _handles.TryGetValue(fh, out ulong node) && node == id ? Node(id) : null;

    internal ulong AddHandle(ulong node)
    {
        ulong fh = _nextHandle++;
        _handles[fh] = node;
        return fh;
    }

    internal bool RemoveHandle(ulong fh) => _handles.Remove(fh);

    internal MemoryNode NewNode(uint mode, uint uid, uint gid)
    {
        var node = new MemoryNode(_nextId++, mode) { Uid = uid, Gid = gid };
        _nodes[node.Id] = node;
        return node;
    }

    internal void Forget(ulong id, ulong lookups)
    {
        lock (_lock)
        {
            Calls["Forget"] = Calls.GetValueOrDefault("Forget") + 1;
            if (id != FuseConstants.RootId && _nodes.TryGetValue(id, out var node))
            {
                node.Lookups -= (long)Math.Min(lookups, (ulong)node.Lookups);
                if (node.Lookups == 0 && node.Links == 0)
                {
                    _nodes.Remove(id);
                }
            }
        }
    }

    internal void Destroy()
    {
        lock (_lock)
        {
            DestroyCount++;
            _handles.Clear();
        }
    }

    internal void Granting(FuseInitFlags granted) => Granted = granted;

    internal static string Text(ReadOnlySpan<byte> nameZ) => Encoding.UTF8.GetString(nameZ.IndexOf((byte)0) is int nul and >= 0 ? nameZ[..nul] : nameZ);

    internal FuseEntryOut Entry(MemoryNode node)
    {
        node.Lookups++;
        return new FuseEntryOut { NodeId = node.Id, Attr = Attr(node) };
    }

    internal static FuseAttr Attr(MemoryNode node) => new()
    {
        Ino = node.Id,
        Mode = node.Mode,
        Nlink = (uint)Math.Max(node.Links, 1),
        Uid = node.Uid,
        Gid = node.Gid,
        FileSize = (ulong)((node.Mode & Libc.S_IFMT) == Libc.S_IFLNK ? node.Target.Length : node.Data.Count),
        BlkSize = 4096,
    };
}

/// <summary><see cref="MemoryTree"/> as the server's <see cref="IFileSystem"/> (a struct, as the server wants).</summary>
public readonly struct MemoryFs : IFileSystem
{
    private readonly MemoryTree _tree;

    public MemoryFs(MemoryTree tree)
    {
        _tree = tree;
    }

    private const int ENOENT = -(int)Errno.ENOENT;
    private const int EBADF = -(int)Errno.EBADF;

    public MemoryTree Tree => _tree;
    public bool IsReadOnly => _tree.ReadOnly;

    public int Init(FuseInitFlags offered, out FuseInitFlags wanted)
    {
        MemoryTree tree = _tree;
        wanted = tree.Wanted;
        return tree.InitError;
    }

    public void Negotiated(FuseInitFlags granted)
    {
        MemoryTree tree = _tree;
        tree.Granting(granted);
    }
    public void Destroy()
    {
        MemoryTree tree = _tree;
        tree.Destroy();
    }
    public void Forget(ulong node, ulong lookups)
    {
        MemoryTree tree = _tree;
        tree.Forget(node, lookups);
    }
    public void Interrupt(ulong unique)
    {
        MemoryTree tree = _tree;
        tree.Run("Interrupt", () => { tree.Interrupted.Add(unique); return 0; });
    }

    public int Lookup(in RequestContext context, ulong parent, ReadOnlySpan<byte> name, out FuseEntryOut entry)
    {
        MemoryTree tree = _tree;
        string text = MemoryTree.Text(name);
        (int rc, FuseEntryOut e) = tree.Run("Lookup", () =>
        {
            var dir = tree.Node(parent);
            if (dir is null)
            {
                return (EBADF, default(FuseEntryOut));
            }
            if (text == ".")
            {
                return (0, tree.Entry(dir));
            }
            return dir.Children.TryGetValue(text, out ulong child) && tree.Node(child) is { } node ? (0, tree.Entry(node)) : (ENOENT, default);
        });
        entry = e;
        return rc;
    }

    public int Getattr(in RequestContext context, ulong node, out FuseAttrOut attr)
    {
        MemoryTree tree = _tree;
        (int rc, FuseAttrOut a) = tree.Run("Getattr", () => tree.Node(node) is { } n ? (0, new FuseAttrOut { Attr = MemoryTree.Attr(n) }) : (EBADF, default(FuseAttrOut)));
        attr = a;
        return rc;
    }

    public int Setattr(in RequestContext context, ulong node, in FuseSetattrIn change, out FuseAttrOut attr)
    {
        MemoryTree tree = _tree;
        var c = change;
        (int rc, FuseAttrOut a) = tree.Run("Setattr", () =>
        {
            if (tree.Node(node) is not { } n)
            {
                return (EBADF, default(FuseAttrOut));
            }
            var valid = (FuseSetattrValid)c.Valid;
            if ((valid & FuseSetattrValid.Mode) != 0)
            {
                n.Mode = (n.Mode & Libc.S_IFMT) | (c.Mode & 0xFFF);
            }
            if ((valid & FuseSetattrValid.Uid) != 0)
            {
                n.Uid = c.Uid;
            }
            if ((valid & FuseSetattrValid.Gid) != 0)
            {
                n.Gid = c.Gid;
            }
            if ((valid & FuseSetattrValid.Size) != 0)
            {
                int size = (int)Math.Min(c.FileSize, 1 << 24);
                if (size < n.Data.Count)
                {
                    n.Data.RemoveRange(size, n.Data.Count - size);
                }
                else
                {
                    n.Data.AddRange(new byte[size - n.Data.Count]);
                }
            }
            return (0, new FuseAttrOut { Attr = MemoryTree.Attr(n) });
        });
        attr = a;
        return rc;
    }

    public int Readlink(in RequestContext context, ulong node, Span<byte> target, out int length)
    {
        MemoryTree tree = _tree;
        byte[]? link = tree.Run("Readlink", () => tree.Node(node) is { } n && (n.Mode & Libc.S_IFMT) == Libc.S_IFLNK ? n.Target : null);
        length = 0;
        if (link is null)
        {
            return -(int)Errno.EINVAL;
        }
        link.CopyTo(target);
        length = link.Length;
        return 0;
    }

    private int Make(string call, in RequestContext context, ulong parent, ReadOnlySpan<byte> name, uint mode, byte[] target, out FuseEntryOut entry)
    {
        MemoryTree tree = _tree;
        string text = MemoryTree.Text(name);
        uint uid = context.Uid;
        uint gid = context.Gid;
        (int rc, FuseEntryOut e) = tree.Run(call, () =>
        {
            if (tree.Node(parent) is not { IsDirectory: true } dir)
            {
                return (-(int)Errno.ENOTDIR, default(FuseEntryOut));
            }
            if (dir.Children.ContainsKey(text))
            {
                return (-(int)Errno.EEXIST, default);
            }
            var node = tree.NewNode(mode, uid, gid);
            node.Target = target;
            dir.Children[text] = node.Id;
            return (0, tree.Entry(node));
        });
        entry = e;
        return rc;
    }

    public int Symlink(in RequestContext context, ulong parent, ReadOnlySpan<byte> name, ReadOnlySpan<byte> target, in SecurityLabel label, out FuseEntryOut entry)
    {
        MemoryTree tree = _tree;
        return Make("Symlink", in context, parent, name, Libc.S_IFLNK | 0x1FF, target[..^1].ToArray(), out entry);
    }

    public int Mknod(in RequestContext context, ulong parent, ReadOnlySpan<byte> name, in FuseMknodIn arguments, in SecurityLabel label, out FuseEntryOut entry)
    {
        MemoryTree tree = _tree;
        return Make("Mknod", in context, parent, name, arguments.Mode & ~arguments.Umask, [], out entry);
    }

    public int Mkdir(in RequestContext context, ulong parent, ReadOnlySpan<byte> name, in FuseMkdirIn arguments, in SecurityLabel label, out FuseEntryOut entry)
    {
        MemoryTree tree = _tree;
        return Make("Mkdir", in context, parent, name, Libc.S_IFDIR | (arguments.Mode & 0xFFF), [], out entry);
    }

    private int Remove(string call, ulong parent, ReadOnlySpan<byte> name, bool directory)
    {
        MemoryTree tree = _tree;
        string text = MemoryTree.Text(name);
        return tree.Run(call, () =>
        {
            if (tree.Node(parent) is not { IsDirectory: true } dir || !dir.Children.TryGetValue(text, out ulong id) || tree.Node(id) is not { } node)
            {
                return ENOENT;
            }
            if (node.IsDirectory != directory)
            {
                return directory ? -(int)Errno.ENOTDIR : -(int)Errno.EISDIR;
            }
            if (directory && node.Children.Count > 0)
            {
                return -(int)Errno.ENOTEMPTY;
            }
            dir.Children.Remove(text);
            node.Links--;
            return 0;
        });
    }

    public int Unlink(in RequestContext context, ulong parent, ReadOnlySpan<byte> name) => Remove("Unlink", parent, name, directory: false);
    public int Rmdir(in RequestContext context, ulong parent, ReadOnlySpan<byte> name) => Remove("Rmdir", parent, name, directory: true);

    public int Rename(in RequestContext context, ulong parent, ReadOnlySpan<byte> name, ulong newParent, ReadOnlySpan<byte> newName, uint flags)
    {
        MemoryTree tree = _tree;
        string from = MemoryTree.Text(name);
        string to = MemoryTree.Text(newName);
        return tree.Run("Rename", () =>
        {
            if (tree.Node(parent) is not { IsDirectory: true } a || tree.Node(newParent) is not { IsDirectory: true } b || !a.Children.Remove(from, out ulong id))
            {
                return ENOENT;
            }
            b.Children[to] = id;
            return 0;
        });
    }

    public int Link(in RequestContext context, ulong node, ulong newParent, ReadOnlySpan<byte> newName, out FuseEntryOut entry)
    {
        MemoryTree tree = _tree;
        string text = MemoryTree.Text(newName);
        (int rc, FuseEntryOut e) = tree.Run("Link", () =>
        {
            if (tree.Node(node) is not { } n || tree.Node(newParent) is not { IsDirectory: true } dir)
            {
                return (EBADF, default(FuseEntryOut));
            }
            dir.Children[text] = n.Id;
            n.Links++;
            return (0, tree.Entry(n));
        });
        entry = e;
        return rc;
    }

    public int Open(in RequestContext context, ulong node, in FuseOpenIn arguments, out FuseOpenOut open)
    {
        MemoryTree tree = _tree;
        (int rc, ulong fh) = tree.Run("Open", () => tree.Node(node) is { IsDirectory: false } ? (0, tree.AddHandle(node)) : (-(int)Errno.EISDIR, 0UL));
        open = new FuseOpenOut { Fh = fh };
        return rc;
    }

    public int Create(in RequestContext context, ulong parent, ReadOnlySpan<byte> name, in FuseCreateIn arguments, in SecurityLabel label, bool tmpfile, out FuseEntryOut entry, out FuseOpenOut open)
    {
        MemoryTree tree = _tree;
        open = default;
        int rc = Make("Create", in context, parent, name, Libc.S_IFREG | (arguments.Mode & 0xFFF), [], out entry);
        if (rc == 0)
        {
            ulong id = entry.NodeId;
            open = new FuseOpenOut { Fh = tree.Run("Create.Open", () => tree.AddHandle(id)) };
        }
        return rc;
    }

    public int Read(scoped in RequestContext context, ulong node, in FuseReadIn arguments, ref ReplyWriter data)
    {
        MemoryTree tree = _tree;
        ulong fh = arguments.Fh;
        long offset = (long)arguments.Offset;
        int size = (int)Math.Min(arguments.Length, (uint)data.Available);
        byte[]? bytes = tree.Run("Read", () =>
        {
            if (tree.Handle(fh, node) is not { } n)
            {
                return null;
            }
            int start = (int)Math.Min(offset, n.Data.Count);
            return n.Data.GetRange(start, Math.Min(size, n.Data.Count - start)).ToArray();
        });
        if (bytes is null)
        {
            return EBADF;
        }
        data.TryWrite(bytes);
        return 0;
    }

    public int Write(scoped in RequestContext context, ulong node, in FuseWriteIn arguments, ref RequestReader data, out uint written)
    {
        MemoryTree tree = _tree;
        written = 0;
        byte[] bytes = new byte[arguments.Length];
        data.TryCopy(bytes);
        ulong fh = arguments.Fh;
        int offset = (int)Math.Min(arguments.Offset, 1 << 24);
        int rc = tree.Run("Write", () =>
        {
            if (tree.Handle(fh, node) is not { } n)
            {
                return EBADF;
            }
            if (n.Data.Count < offset + bytes.Length)
            {
                n.Data.AddRange(new byte[offset + bytes.Length - n.Data.Count]);
            }
            for (int i = 0; i < bytes.Length; i++)
            {
                n.Data[offset + i] = bytes[i];
            }
            return 0;
        });
        if (rc == 0)
        {
            written = (uint)bytes.Length;
        }
        return rc;
    }

    public int Flush(in RequestContext context, ulong node, in FuseFlushIn arguments)
    {
        MemoryTree tree = _tree;
        return tree.Run("Flush", () => 0);
    }

    public int Release(in RequestContext context, ulong node, in FuseReleaseIn arguments, bool directory)
    {
        MemoryTree tree = _tree;
        ulong fh = arguments.Fh;
        return tree.Run(directory ? "Releasedir" : "Release", () => tree.RemoveHandle(fh) ? 0 : EBADF);
    }

    public int Fsync(in RequestContext context, ulong node, in FuseFsyncIn arguments, bool directory)
    {
        MemoryTree tree = _tree;
        return tree.Run("Fsync", () => 0);
    }

    public int Opendir(in RequestContext context, ulong node, in FuseOpenIn arguments, out FuseOpenOut open)
    {
        MemoryTree tree = _tree;
        (int rc, ulong fh) = tree.Run("Opendir", () => tree.Node(node) is { IsDirectory: true } ? (0, tree.AddHandle(node)) : (-(int)Errno.ENOTDIR, 0UL));
        open = new FuseOpenOut { Fh = fh };
        return rc;
    }

    public int Readdir(scoped in RequestContext context, ulong node, in FuseReadIn arguments, ref DirentWriter entries)
    {
        MemoryTree tree = _tree;
        ulong fh = arguments.Fh;
        var children = tree.Run("Readdir", () => tree.Handle(fh, node) is { } dir
            ? dir.Children.OrderBy(c => c.Key, StringComparer.Ordinal).Select(c => (c.Key, c.Value, tree.Node(c.Value)!.Mode)).ToList()
            : null);
        if (children is null)
        {
            return EBADF;
        }
        // The offset is the guest's: any 64-bit value (past the end, the listing is over).
        for (ulong i = arguments.Offset; i < (ulong)children.Count; i++)
        {
            var (name, id, mode) = children[(int)i];
            byte[] bytes = Encoding.UTF8.GetBytes(name);
            if (!entries.Fits(bytes.Length))
            {
                break;
            }
            if (entries.Plus)
            {
                FuseEntryOut entry = tree.Run("Readdir.Lookup", () => tree.Entry(tree.Node(id)!));
                entries.TryAddPlus(in entry, id, i + 1, (mode & Libc.S_IFMT) >> 12, bytes);
            }
            else
            {
                entries.TryAdd(id, i + 1, (mode & Libc.S_IFMT) >> 12, bytes);
            }
        }
        return 0;
    }

    public int Statfs(in RequestContext context, ulong node, out FuseStatfsOut statfs)
    {
        MemoryTree tree = _tree;
        statfs = new FuseStatfsOut { St = new FuseKStatfs { Bsize = 4096, NameLen = 255, Files = (ulong)tree.NodeCount } };
        return tree.Run("Statfs", () => 0);
    }

    public int Statx(in RequestContext context, ulong node, in FuseStatxIn arguments, out FuseStatxOut statx)
    {
        MemoryTree tree = _tree;
        statx = default;
        return tree.Run("Statx", () => -(int)Errno.ENOSYS);
    }

    public int Access(in RequestContext context, ulong node, uint mask)
    {
        MemoryTree tree = _tree;
        return tree.Run("Access", () => tree.Node(node) is null ? EBADF : 0);
    }

    public int Setxattr(in RequestContext context, ulong node, ReadOnlySpan<byte> name, ReadOnlySpan<byte> value, uint flags, uint setxattrFlags)
    {
        MemoryTree tree = _tree;
        string key = Encoding.UTF8.GetString(name);
        byte[] bytes = value.ToArray();
        return tree.Run("Setxattr", () =>
        {
            if (tree.Node(node) is not { } n)
            {
                return EBADF;
            }
            n.Xattrs[key] = bytes;
            return 0;
        });
    }

    public int Getxattr(in RequestContext context, ulong node, ReadOnlySpan<byte> name, Span<byte> value, out int length)
    {
        MemoryTree tree = _tree;
        string key = Encoding.UTF8.GetString(name);
        byte[]? bytes = tree.Run("Getxattr", () => tree.Node(node)?.Xattrs.GetValueOrDefault(key));
        length = 0;
        if (bytes is null)
        {
            return -(int)Errno.ENODATA;
        }
        bytes.CopyTo(value);
        length = bytes.Length;
        return 0;
    }

    public int Listxattr(in RequestContext context, ulong node, Span<byte> list, out int length)
    {
        MemoryTree tree = _tree;
        byte[] names = tree.Run("Listxattr", () => Encoding.UTF8.GetBytes(string.Concat((tree.Node(node)?.Xattrs.Keys.ToArray() ?? []).Select(k => k + "\0"))));
        names.CopyTo(list);
        length = names.Length;
        return 0;
    }

    public int Removexattr(in RequestContext context, ulong node, ReadOnlySpan<byte> name)
    {
        MemoryTree tree = _tree;
        string key = Encoding.UTF8.GetString(name);
        return tree.Run("Removexattr", () => tree.Node(node)?.Xattrs.Remove(key) == true ? 0 : -(int)Errno.ENODATA);
    }

    public int Getlk(in RequestContext context, ulong node, in FuseLkIn arguments, out FuseFileLock conflict)
    {
        MemoryTree tree = _tree;
        conflict = default;
        return -(int)Errno.ENOSYS;
    }

    public int Setlk(in RequestContext context, ulong node, in FuseLkIn arguments, bool wait) => -(int)Errno.ENOSYS;
    public int Fallocate(in RequestContext context, ulong node, in FuseFallocateIn arguments) => -(int)Errno.ENOSYS;

    public int Lseek(in RequestContext context, ulong node, in FuseLseekIn arguments, out ulong offset)
    {
        MemoryTree tree = _tree;
        offset = arguments.Offset;
        return 0;
    }

    public int CopyFileRange(in RequestContext context, ulong node, in FuseCopyFileRangeIn arguments, out uint copied)
    {
        MemoryTree tree = _tree;
        copied = 0;
        return -(int)Errno.ENOSYS;
    }

    public int Syncfs(in RequestContext context, ulong node)
    {
        MemoryTree tree = _tree;
        return tree.Run("Syncfs", () => 0);
    }
}
