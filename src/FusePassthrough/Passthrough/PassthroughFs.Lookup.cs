using Vhostfsd.FusePassthrough.Passthrough;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.FusePassthrough;

// Lookup: names to nodes (O_PATH fds or file handles), "." and "..", and announcing submounts.
public sealed unsafe partial class PassthroughFs
{
    /// <summary>Most directory levels walked up to prove that a ".." lookup stays inside the share.</summary>
    private const int MaxDotDotDepth = 4096;

    private bool AnnounceSubmounts => _options.AnnounceSubmounts && (_negotiated & FuseInitFlags.Submounts) != 0;

    private uint AttrFlagsFor(Node parent, in Statx st)
    {
        if (!AnnounceSubmounts || (st.Mode & Libc.S_IFMT) != Libc.S_IFDIR)
        {
            return 0;
        }
        InodeKey key = KeyOf(in st);
        return key.MntId != parent.Key.MntId || key.Dev != parent.Key.Dev ? (uint)FuseAttrFlags.Submount : 0;
    }

    /// <summary>Opens one name below <paramref name="parentFd"/> as O_PATH without following a final
    /// symlink; with openat2, RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS refuses any
    /// escape even if a name with '/' or ".." slipped through. Returns fd or -errno.</summary>
    private int OpenPathBelow(int parentFd, byte* name, int extraFlags = 0)
    {
        int flags = Libc.O_PATH | Libc.O_NOFOLLOW | Libc.O_CLOEXEC | extraFlags;
        int fd;
        if (_useOpenat2)
        {
            var how = new OpenHow
            {
                Flags = (ulong)flags,
                Resolve = Libc.RESOLVE_BENEATH | Libc.RESOLVE_NO_SYMLINKS | Libc.RESOLVE_NO_MAGICLINKS,
            };
            fd = Libc.OpenAt2(parentFd, name, &how);
        }
        else
        {
            fd = Libc.OpenAt(parentFd, name, flags, 0);
        }
        return fd < 0 ? Libc.NegErrno : fd;
    }

    /// <summary>Looks <paramref name="name"/> up below <paramref name="parent"/>, adds one guest lookup
    /// to its node and fills <paramref name="entry"/>. Returns 0 or -errno.</summary>
    private int LookupChild(Node parent, int parentFd, byte* name, out FuseEntryOut entry)
    {
        entry = default;
        Statx st;
        if (Libc.StatxAt(parentFd, name, Libc.AT_SYMLINK_NOFOLLOW | Libc.AT_NO_AUTOMOUNT, StatxMask, &st) < 0)
        {
            return Libc.NegErrno;
        }
        if (_nodes.TryLookupExisting(KeyOf(in st), out Node existing))
        {
            entry = ToEntry(existing.Id, in st, AttrFlagsFor(parent, in st));
            _nodes.Release(existing);
            return 0;
        }
        if (!_budget.TryTake())
        {
            return -(int)Errno.ENFILE;
        }
        int fd = OpenPathBelow(parentFd, name);
        if (fd < 0)
        {
            _budget.Return();
            return fd;
        }
        return InsertFromFd(parent, fd, out entry);
    }

    /// <summary>Makes a node of the O_PATH <paramref name="fd"/> (taken from the budget; consumed here),
    /// counting one guest lookup. Returns 0 or -errno.</summary>
    private int InsertFromFd(Node parent, int fd, out FuseEntryOut entry)
    {
        entry = default;
        Statx st;
        byte empty = 0;
        if (Libc.StatxAt(fd, &empty, Libc.AT_EMPTY_PATH | Libc.AT_SYMLINK_NOFOLLOW, StatxMask, &st) < 0)
        {
            int err = Libc.NegErrno;
            Libc.Close(fd);
            _budget.Return();
            return err;
        }
        byte[]? handle = null;
        int mountFd = -1;
        if (_fileHandles)
        {
            int rc = MakeFileHandle(parent, fd, in st, out handle, out mountFd);
            if (rc < 0)
            {
                Libc.Close(fd);
                _budget.Return();
                return rc;
            }
            if (handle is not null && !KeepFdBesideHandle())
            {
                Libc.Close(fd);
                _budget.Return();
                fd = -1;
            }
        }
        Node? node = _nodes.Insert(KeyOf(in st), st.Mode & Libc.S_IFMT, fd, handle, mountFd);
        if (node is null)
        {
            // Only a node held by its handle alone is refused, so there is no fd to give back.
            return -(int)Errno.ENFILE;
        }
        entry = ToEntry(node.Id, in st, AttrFlagsFor(parent, in st));
        _nodes.Release(node);
        return 0;
    }

    /// <summary>In prefer mode a new node keeps its O_PATH fd next to its handle while at most half of
    /// the fd budget is in use: every later request on it then uses the fd, instead of paying
    /// open_by_handle_at + close (about 1.4 µs of a 0.8 µs GETATTR, see docs/performance.md). Past
    /// half the budget new nodes are held by their handle alone, which is what handles are for.
    /// Mandatory mode never keeps the fd.</summary>
    private bool KeepFdBesideHandle() =>
        _options.InodeFileHandles == InodeFileHandles.Prefer && _budget.Used <= _budget.Limit / 2;

    /// <summary>A file handle for <paramref name="fd"/>, with a real fd on its mount for
    /// open_by_handle_at (one per mount, kept until the server is disposed). Null (keep the O_PATH
    /// fd) when the file system has no handles in prefer mode, or when no directory on the same
    /// mount is at hand (a bind-mounted file). Returns 0 or -errno.</summary>
    private int MakeFileHandle(Node parent, int fd, in Statx st, out byte[]? handle, out int mountFd)
    {
        handle = null;
        mountFd = -1;
        byte* buffer = stackalloc byte[FileHandleHeader.Size + MaxHandleBytes];
        var fh = (FileHandleHeader*)buffer;
        fh->HandleBytes = MaxHandleBytes;
        int mountId;
        byte empty = 0;
        if (Libc.NameToHandleAt(fd, &empty, fh, &mountId, Libc.AT_EMPTY_PATH) < 0)
        {
            return _options.InodeFileHandles == InodeFileHandles.Mandatory ? -(int)Errno.EOPNOTSUPP : 0;
        }
        ulong mount = KeyOf(in st).MntId;
        bool directory = (st.Mode & Libc.S_IFMT) == Libc.S_IFDIR;
        lock (_mountLock)
        {
            if (!_mountFds.TryGetValue(mount, out mountFd))
            {
                Node? onMount = directory ? null : parent.Key.MntId == mount ? parent : null;
                if (!directory && onMount is null)
                {
                    return _options.InodeFileHandles == InodeFileHandles.Mandatory ? -(int)Errno.EOPNOTSUPP : 0;
                }
                byte* fdName = stackalloc byte[16];
                int temporary = -1;
                int source = directory ? fd : PathFd(onMount!, ref temporary);
                if (source < 0)
                {
                    return source;
                }
                FormatFd(source, new Span<byte>(fdName, 16));
                mountFd = Libc.OpenAt(_procSelfFd, fdName, Libc.O_RDONLY | Libc.O_DIRECTORY | Libc.O_NONBLOCK | Libc.O_CLOEXEC, 0);
                int error = mountFd < 0 ? Libc.NegErrno : 0;
                CloseTemporary(temporary);
                if (mountFd < 0)
                {
                    return error;
                }
                _mountFds[mount] = mountFd;
            }
        }
        handle = new ReadOnlySpan<byte>(buffer, FileHandleHeader.Size + (int)fh->HandleBytes).ToArray();
        return 0;
    }

    public int Lookup(in RequestContext context, ulong parentId, ReadOnlySpan<byte> nameZ, out FuseEntryOut entry)
    {
        entry = default;
        ReadOnlySpan<byte> name = nameZ[..^1];
        int rc;
        Node? parent = _nodes.Acquire(parentId);
        if (parent is null)
        {
            return EBADF;
        }
        int temporary = -1;
        try
        {
            int parentFd = PathFd(parent, ref temporary);
            if (parentFd < 0)
            {
                return parentFd;
            }
            if (IsDot(name) || (IsDotDot(name) && parent.IsRoot))
            {
                // "." is the directory itself; ".." of the share root is the root (never its host parent).
                rc = LookupSelf(parent, parentFd, out entry);
            }
            else if (IsDotDot(name))
            {
                rc = LookupDotDot(parent, parentFd, out entry);
            }
            else
            {
                fixed (byte* p = nameZ)
                {
                    rc = LookupChild(parent, parentFd, p, out entry);
                }
            }
            return rc;
        }
        finally
        {
            CloseTemporary(temporary);
            _nodes.Release(parent);
        }
    }

    private int LookupSelf(Node node, int fd, out FuseEntryOut entry)
    {
        entry = default;
        Statx st;
        byte empty = 0;
        if (Libc.StatxAt(fd, &empty, Libc.AT_EMPTY_PATH | Libc.AT_SYMLINK_NOFOLLOW, StatxMask, &st) < 0)
        {
            return Libc.NegErrno;
        }
        if (!_nodes.TryAddLookup(node))
        {
            return -(int)Errno.ESTALE;
        }
        entry = ToEntry(node.Id, in st, 0);
        return 0;
    }

    /// <summary>".." below the root: the host parent, but only after walking up to prove that it is
    /// inside the share (a directory moved out of the share on the host must not lead the guest out).</summary>
    private int LookupDotDot(Node node, int fd, out FuseEntryOut entry)
    {
        entry = default;
        byte* dotdot = stackalloc byte[3];
        dotdot[0] = (byte)'.';
        dotdot[1] = (byte)'.';
        dotdot[2] = 0;
        byte empty = 0;
        if (!_budget.TryTake())
        {
            return -(int)Errno.ENFILE;
        }
        int parentFd = Libc.OpenAt(fd, dotdot, Libc.O_PATH | Libc.O_DIRECTORY | Libc.O_CLOEXEC, 0);
        if (parentFd < 0)
        {
            _budget.Return();
            return Libc.NegErrno;
        }
        InodeKey rootKey = _nodes.Root.Key;
        int current = Libc.Dup(parentFd);
        bool inside = false;
        for (int depth = 0; current >= 0 && depth < MaxDotDotDepth; depth++)
        {
            Statx st;
            if (Libc.StatxAt(current, &empty, Libc.AT_EMPTY_PATH, StatxMask, &st) < 0)
            {
                break;
            }
            InodeKey key = KeyOf(in st);
            if (key == rootKey)
            {
                inside = true;
                break;
            }
            int up = Libc.OpenAt(current, dotdot, Libc.O_PATH | Libc.O_DIRECTORY | Libc.O_CLOEXEC, 0);
            Libc.Close(current);
            current = up;
            if (up < 0)
            {
                break;
            }
            Statx upSt;
            if (Libc.StatxAt(up, &empty, Libc.AT_EMPTY_PATH, StatxMask, &upSt) < 0 || KeyOf(in upSt) == key)
            {
                // Reached the host's root without meeting the share root.
                break;
            }
        }
        if (current >= 0)
        {
            Libc.Close(current);
        }
        if (!inside)
        {
            Libc.Close(parentFd);
            _budget.Return();
            return -(int)Errno.EACCES;
        }
        return InsertFromFd(node, parentFd, out entry);
    }
}
