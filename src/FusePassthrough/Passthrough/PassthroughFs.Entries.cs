using Vhostfsd.FusePassthrough.Passthrough;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.FusePassthrough;

// Name-space operations: lookup, attributes, creation and removal of entries.
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

    public int Getattr(in RequestContext context, ulong nodeId, out FuseAttrOut attr)
    {
        attr = default;
        Node? node = _nodes.Acquire(nodeId);
        if (node is null)
        {
            return EBADF;
        }
        int temporary = -1;
        try
        {
            int fd = PathFd(node, ref temporary);
            if (fd < 0)
            {
                return fd;
            }
            Statx st;
            byte empty = 0;
            if (Libc.StatxAt(fd, &empty, Libc.AT_EMPTY_PATH | Libc.AT_SYMLINK_NOFOLLOW, StatxMask, &st) < 0)
            {
                return Libc.NegErrno;
            }
            attr = ToAttrOut(in st);
            return 0;
        }
        finally
        {
            CloseTemporary(temporary);
            _nodes.Release(node);
        }
    }

    public int Setattr(in RequestContext context, ulong nodeId, in FuseSetattrIn a, out FuseAttrOut attr)
    {
        attr = default;
        var valid = (FuseSetattrValid)a.Valid;
        Node? node = _nodes.Acquire(nodeId);
        if (node is null)
        {
            return EBADF;
        }
        Handle? handle = null;
        int temporary = -1;
        try
        {
            if ((valid & FuseSetattrValid.Fh) != 0)
            {
                handle = _handles.Acquire(a.Fh, nodeId);
                if (handle is null)
                {
                    return EBADF;
                }
            }
            int pathFd = PathFd(node, ref temporary);
            if (pathFd < 0)
            {
                return pathFd;
            }
            int rc = ApplySetattr(node, pathFd, handle, in a, valid);
            if (rc < 0)
            {
                return rc;
            }
            Statx st;
            byte empty = 0;
            if (Libc.StatxAt(pathFd, &empty, Libc.AT_EMPTY_PATH | Libc.AT_SYMLINK_NOFOLLOW, StatxMask, &st) < 0)
            {
                return Libc.NegErrno;
            }
            attr = ToAttrOut(in st);
            return 0;
        }
        finally
        {
            if (handle is not null)
            {
                _handles.Release(handle);
            }
            CloseTemporary(temporary);
            _nodes.Release(node);
        }
    }

    private int ApplySetattr(Node node, int pathFd, Handle? handle, in FuseSetattrIn a, FuseSetattrValid valid)
    {
        byte* fdName = stackalloc byte[16];
        FormatFd(pathFd, new Span<byte>(fdName, 16));
        byte empty = 0;
        bool killSuidgid = (valid & FuseSetattrValid.KillSuidgid) != 0 && (_negotiated & FuseInitFlags.HandleKillprivV2) != 0;

        if ((valid & FuseSetattrValid.Mode) != 0)
        {
            int rc = handle is not null && handle.Fd >= 0 && !handle.IsDirectory
                ? Libc.Fchmod(handle.Fd, a.Mode & 0xFFF)
                : node.IsSymlink
                    ? -1
                    : Libc.FchmodAt(_procSelfFd, fdName, a.Mode & 0xFFF, 0);
            if (rc < 0)
            {
                return node.IsSymlink ? -(int)Errno.EOPNOTSUPP : Libc.NegErrno;
            }
        }
        if ((valid & (FuseSetattrValid.Uid | FuseSetattrValid.Gid)) != 0)
        {
            uint uid = (valid & FuseSetattrValid.Uid) != 0 ? a.Uid : uint.MaxValue;
            uint gid = (valid & FuseSetattrValid.Gid) != 0 ? a.Gid : uint.MaxValue;
            // chown always clears S_ISUID; S_ISGID too unless the thread may keep it.
            bool fsetidDropped = killSuidgid && DropFsetid();
            int rc = Libc.FchownAt(pathFd, &empty, uid, gid, Libc.AT_EMPTY_PATH | Libc.AT_SYMLINK_NOFOLLOW) < 0 ? Libc.NegErrno : 0;
            RestoreFsetid(fsetidDropped);
            if (rc < 0)
            {
                return rc;
            }
        }
        if ((valid & FuseSetattrValid.Size) != 0)
        {
            if (a.FileSize > long.MaxValue)
            {
                return EINVAL;
            }
            if (node.IsDirectory)
            {
                return -(int)Errno.EISDIR;
            }
            if (!node.IsRegular)
            {
                return EINVAL;
            }
            int rc;
            bool fsetidDropped = killSuidgid && DropFsetid();
            if (handle is not null && handle.Fd >= 0 && (handle.OpenFlags & Libc.O_ACCMODE) != Libc.O_RDONLY)
            {
                rc = Libc.FTruncate(handle.Fd, (long)a.FileSize);
                rc = rc < 0 ? Libc.NegErrno : 0;
            }
            else
            {
                int fd = Reopen(node, Libc.O_WRONLY | Libc.O_NONBLOCK);
                rc = fd < 0 ? fd : Libc.FTruncate(fd, (long)a.FileSize) < 0 ? Libc.NegErrno : 0;
                if (fd >= 0)
                {
                    Libc.Close(fd);
                }
            }
            RestoreFsetid(fsetidDropped);
            if (rc < 0)
            {
                return rc;
            }
        }
        if ((valid & (FuseSetattrValid.Atime | FuseSetattrValid.Mtime | FuseSetattrValid.AtimeNow | FuseSetattrValid.MtimeNow)) != 0)
        {
            Timespec* times = stackalloc Timespec[2];
            times[0] = TimeArg(valid, FuseSetattrValid.Atime, FuseSetattrValid.AtimeNow, a.Atime, a.AtimeNsec);
            times[1] = TimeArg(valid, FuseSetattrValid.Mtime, FuseSetattrValid.MtimeNow, a.Mtime, a.MtimeNsec);
            int rc = Libc.UtimensAt(pathFd, &empty, times, Libc.AT_EMPTY_PATH | Libc.AT_SYMLINK_NOFOLLOW);
            if (rc < 0 && Libc.LastErrno == Errno.EINVAL && !node.IsSymlink)
            {
                // Kernels without AT_EMPTY_PATH for utimensat: go through the magic link.
                rc = Libc.UtimensAt(_procSelfFd, fdName, times, 0);
            }
            if (rc < 0)
            {
                return Libc.NegErrno;
            }
        }
        return 0;
    }

    private static Timespec TimeArg(FuseSetattrValid valid, FuseSetattrValid set, FuseSetattrValid now, ulong seconds, uint nanoseconds)
    {
        if ((valid & now) != 0)
        {
            return new Timespec { Sec = 0, Nsec = Libc.UTIME_NOW };
        }
        if ((valid & set) != 0)
        {
            return new Timespec { Sec = (long)seconds, Nsec = Math.Min(nanoseconds, 999_999_999u) };
        }
        return new Timespec { Sec = 0, Nsec = Libc.UTIME_OMIT };
    }

    public int Readlink(in RequestContext context, ulong nodeId, Span<byte> target, out int length)
    {
        length = 0;
        Node? node = _nodes.Acquire(nodeId);
        if (node is null)
        {
            return EBADF;
        }
        int temporary = -1;
        try
        {
            if (!node.IsSymlink)
            {
                return EINVAL;
            }
            int fd = PathFd(node, ref temporary);
            if (fd < 0)
            {
                return fd;
            }
            byte empty = 0;
            nint n;
            fixed (byte* p = target)
            {
                n = Libc.ReadlinkAt(fd, &empty, p, (nuint)target.Length);
            }
            if (n < 0)
            {
                return Libc.NegErrno;
            }
            length = (int)n;
            return 0;
        }
        finally
        {
            CloseTemporary(temporary);
            _nodes.Release(node);
        }
    }

    public int Symlink(in RequestContext context, ulong parentId, ReadOnlySpan<byte> nameZ, ReadOnlySpan<byte> targetZ, in SecurityLabel label, out FuseEntryOut entry)
    {
        fixed (byte* name = nameZ)
        fixed (byte* target = targetZ)
        {
            return CreateEntry(in context, in label, parentId, name, out entry, CreateKind.Symlink, 0, 0, 0, target);
        }
    }

    public int Mknod(in RequestContext context, ulong parentId, ReadOnlySpan<byte> nameZ, in FuseMknodIn m, in SecurityLabel label, out FuseEntryOut entry)
    {
        entry = default;
        uint type = m.Mode & Libc.S_IFMT;
        if (type is not (Libc.S_IFREG or Libc.S_IFIFO or Libc.S_IFSOCK or Libc.S_IFCHR or Libc.S_IFBLK) && type != 0)
        {
            return EINVAL;
        }
        ulong dev = DecodeDev(m.Rdev);
        fixed (byte* name = nameZ)
        {
            return CreateEntry(in context, in label, parentId, name, out entry, CreateKind.Mknod, m.Mode, m.Umask, dev, null);
        }
    }

    public int Mkdir(in RequestContext context, ulong parentId, ReadOnlySpan<byte> nameZ, in FuseMkdirIn m, in SecurityLabel label, out FuseEntryOut entry)
    {
        fixed (byte* name = nameZ)
        {
            return CreateEntry(in context, in label, parentId, name, out entry, CreateKind.Mkdir, m.Mode, m.Umask, 0, null);
        }
    }

    private enum CreateKind
    {
        Symlink,
        Mknod,
        Mkdir,
    }

    /// <summary>Runs a creating call as the requester in the parent directory, applies a security
    /// label if one came with the request, and looks the new entry up.</summary>
    private int CreateEntry(in RequestContext context, in SecurityLabel label, ulong parentId, byte* name, out FuseEntryOut entry, CreateKind kind, uint mode, uint umask, ulong dev, byte* target)
    {
        entry = default;
        ReadOnlySpan<byte> labelName = default;
        if (label.IsPresent)
        {
            int mapped = MapSecurityContextName(label.Name[..^1], out labelName);
            if (mapped < 0)
            {
                return mapped;
            }
        }
        Node? parent = _nodes.Acquire(parentId);
        if (parent is null)
        {
            return EBADF;
        }
        int temporary = -1;
        try
        {
            if (!parent.IsDirectory)
            {
                return -(int)Errno.ENOTDIR;
            }
            int parentFd = PathFd(parent, ref temporary);
            if (parentFd < 0)
            {
                return parentFd;
            }
            uint effectiveMode = kind == CreateKind.Symlink ? 0 : EffectiveMode(parentFd, mode & 0xFFF, umask);
            int rc = EnterCredentials(in context, out CredentialState saved);
            if (rc < 0)
            {
                return rc;
            }
            try
            {
                int result = kind switch
                {
                    CreateKind.Symlink => Libc.SymlinkAt(target, parentFd, name),
                    CreateKind.Mknod => Libc.MknodAt(parentFd, name, (mode & Libc.S_IFMT) | effectiveMode, dev),
                    _ => Libc.MkdirAt(parentFd, name, effectiveMode),
                };
                rc = result < 0 ? Libc.NegErrno : 0;
            }
            finally
            {
                LeaveCredentials(in saved);
            }
            if (rc < 0)
            {
                return rc;
            }
            if (label.IsPresent && (rc = ApplySecurityLabel(parentFd, name, labelName, label.Value)) < 0)
            {
                return rc;
            }
            return LookupChild(parent, parentFd, name, out entry);
        }
        finally
        {
            CloseTemporary(temporary);
            _nodes.Release(parent);
        }
    }

    /// <summary>Sets the guest's security label on a just-created entry (through the magic link of
    /// its parent, so it works for every file type); on failure the entry is removed again.</summary>
    private int ApplySecurityLabel(int parentFd, byte* name, ReadOnlySpan<byte> labelName, ReadOnlySpan<byte> labelValue)
    {
        if (_hasXattrAt)
        {
            int result;
            fixed (byte* xname = labelName)
            fixed (byte* value = labelValue)
            {
                result = Libc.SetxattrAt(parentFd, name, Libc.AT_SYMLINK_NOFOLLOW, xname, value, (nuint)labelValue.Length, 0) < 0 ? Libc.NegErrno : 0;
            }
            if (result < 0)
            {
                RemoveUnlabelled(parentFd, name);
            }
            return result;
        }
        // "N/name" relative to the /proc/self/fd directory (see EnterProcFdDirectory): the parent through
        // its magic link, then the new entry, not followed if it is a symlink.
        int nameLength = new ReadOnlySpan<byte>(name, (int)NameMax + 1).IndexOf((byte)0);
        Span<byte> path = stackalloc byte[16 + (int)NameMax + 2];
        FormatFd(parentFd, path);
        int at = path.IndexOf((byte)0);
        path[at++] = (byte)'/';
        new ReadOnlySpan<byte>(name, nameLength + 1).CopyTo(path[at..]);
        int rc = EnterProcFdDirectory();
        if (rc >= 0)
        {
            int previousDirectory = rc;
            fixed (byte* p = path)
            fixed (byte* xname = labelName)
            fixed (byte* value = labelValue)
            {
                rc = Libc.Lsetxattr(p, xname, value, (nuint)labelValue.Length, 0) < 0 ? Libc.NegErrno : 0;
            }
            LeaveProcFdDirectory(previousDirectory);
        }
        if (rc < 0)
        {
            RemoveUnlabelled(parentFd, name);
        }
        return rc;
    }

    private static void RemoveUnlabelled(int parentFd, byte* name)
    {
        Statx st;
        if (Libc.StatxAt(parentFd, name, Libc.AT_SYMLINK_NOFOLLOW, Libc.STATX_TYPE, &st) == 0)
        {
            Libc.UnlinkAt(parentFd, name, (st.Mode & Libc.S_IFMT) == Libc.S_IFDIR ? Libc.AT_REMOVEDIR : 0);
        }
    }

    public int Unlink(in RequestContext context, ulong parentId, ReadOnlySpan<byte> nameZ) => Remove(parentId, nameZ, directory: false);

    public int Rmdir(in RequestContext context, ulong parentId, ReadOnlySpan<byte> nameZ) => Remove(parentId, nameZ, directory: true);

    private int Remove(ulong parentId, ReadOnlySpan<byte> nameZ, bool directory)
    {
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
            fixed (byte* name = nameZ)
            {
                return Libc.UnlinkAt(parentFd, name, directory ? Libc.AT_REMOVEDIR : 0) < 0 ? Libc.NegErrno : 0;
            }
        }
        finally
        {
            CloseTemporary(temporary);
            _nodes.Release(parent);
        }
    }

    public int Rename(in RequestContext context, ulong parentId, ReadOnlySpan<byte> nameZ, ulong newDirId, ReadOnlySpan<byte> newNameZ, uint flags)
    {
        if ((flags & ~(Libc.RENAME_NOREPLACE | Libc.RENAME_EXCHANGE | Libc.RENAME_WHITEOUT)) != 0)
        {
            return EINVAL;
        }
        Node? oldParent = _nodes.Acquire(parentId);
        if (oldParent is null)
        {
            return EBADF;
        }
        Node? newParent = _nodes.Acquire(newDirId);
        int oldTemporary = -1;
        int newTemporary = -1;
        try
        {
            if (newParent is null)
            {
                return EBADF;
            }
            int oldFd = PathFd(oldParent, ref oldTemporary);
            if (oldFd < 0)
            {
                return oldFd;
            }
            int newFd = PathFd(newParent, ref newTemporary);
            if (newFd < 0)
            {
                return newFd;
            }
            fixed (byte* oldName = nameZ)
            fixed (byte* newName = newNameZ)
            {
                return Libc.RenameAt2(oldFd, oldName, newFd, newName, flags) < 0 ? Libc.NegErrno : 0;
            }
        }
        finally
        {
            CloseTemporary(oldTemporary);
            CloseTemporary(newTemporary);
            if (newParent is not null)
            {
                _nodes.Release(newParent);
            }
            _nodes.Release(oldParent);
        }
    }

    public int Link(in RequestContext context, ulong nodeId, ulong newParentId, ReadOnlySpan<byte> newNameZ, out FuseEntryOut entry)
    {
        entry = default;
        Node? target = _nodes.Acquire(nodeId);
        if (target is null)
        {
            return EBADF;
        }
        Node? parent = _nodes.Acquire(newParentId);
        int targetTemporary = -1;
        int parentTemporary = -1;
        try
        {
            if (parent is null)
            {
                return EBADF;
            }
            if (target.IsDirectory)
            {
                return -(int)Errno.EPERM;
            }
            int targetFd = PathFd(target, ref targetTemporary);
            if (targetFd < 0)
            {
                return targetFd;
            }
            int parentFd = PathFd(parent, ref parentTemporary);
            if (parentFd < 0)
            {
                return parentFd;
            }
            fixed (byte* name = newNameZ)
            {
                byte empty = 0;
                if (Libc.LinkAt(targetFd, &empty, parentFd, name, Libc.AT_EMPTY_PATH) < 0)
                {
                    Errno first = Libc.LastErrno;
                    if (first is not (Errno.ENOENT or Errno.EPERM or Errno.EINVAL))
                    {
                        return -(int)first;
                    }
                    // Without CAP_DAC_READ_SEARCH, AT_EMPTY_PATH is refused: follow the magic link instead.
                    byte* fdName = stackalloc byte[16];
                    FormatFd(targetFd, new Span<byte>(fdName, 16));
                    if (Libc.LinkAt(_procSelfFd, fdName, parentFd, name, Libc.AT_SYMLINK_FOLLOW) < 0)
                    {
                        return Libc.NegErrno;
                    }
                }
                return LookupChild(parent, parentFd, name, out entry);
            }
        }
        finally
        {
            CloseTemporary(targetTemporary);
            CloseTemporary(parentTemporary);
            if (parent is not null)
            {
                _nodes.Release(parent);
            }
            _nodes.Release(target);
        }
    }

    public int Statfs(in RequestContext context, ulong nodeId, out FuseStatfsOut statfs)
    {
        statfs = default;
        Node? node = _nodes.Acquire(nodeId);
        if (node is null)
        {
            return EBADF;
        }
        int temporary = -1;
        try
        {
            int fd = PathFd(node, ref temporary);
            if (fd < 0)
            {
                return fd;
            }
            StatFs s;
            if (Libc.Fstatfs(fd, &s) < 0)
            {
                return Libc.NegErrno;
            }
            statfs = new FuseStatfsOut
            {
                St = new FuseKStatfs
                {
                    Blocks = s.Blocks,
                    Bfree = s.BlocksFree,
                    Bavail = s.BlocksAvailable,
                    Files = s.Files,
                    Ffree = s.FilesFree,
                    Bsize = (uint)s.BlockSize,
                    NameLen = (uint)s.NameLength,
                    Frsize = (uint)(s.FragmentSize != 0 ? s.FragmentSize : s.BlockSize),
                },
            };
            return 0;
        }
        finally
        {
            CloseTemporary(temporary);
            _nodes.Release(node);
        }
    }

    public int Statx(in RequestContext context, ulong nodeId, in FuseStatxIn a, out FuseStatxOut statx)
    {
        statx = default;
        Node? node = _nodes.Acquire(nodeId);
        if (node is null)
        {
            return EBADF;
        }
        int temporary = -1;
        try
        {
            int fd = PathFd(node, ref temporary);
            if (fd < 0)
            {
                return fd;
            }
            Statx st;
            byte empty = 0;
            int flags = Libc.AT_EMPTY_PATH | Libc.AT_SYMLINK_NOFOLLOW | ((int)a.SxFlags & Libc.AT_STATX_SYNC_TYPE);
            if (Libc.StatxAt(fd, &empty, flags, a.SxMask | Libc.STATX_BASIC_STATS, &st) < 0)
            {
                return Libc.NegErrno;
            }
            var reply = new FuseStatxOut { AttrValid = _attrValidSec, AttrValidNsec = _attrValidNsec };
            // fuse_statx is the statx layout up to dev_minor; the rest is spare.
            new ReadOnlySpan<byte>(&st, 144).CopyTo(new Span<byte>(&reply.Stat, 144));
            statx = reply;
            return 0;
        }
        finally
        {
            CloseTemporary(temporary);
            _nodes.Release(node);
        }
    }

    /// <summary>ACCESS from the mode bits and the requester's uid/gid (as the Rust virtiofsd): root
    /// may read and write anything and execute what has any x bit.</summary>
    public int Access(in RequestContext context, ulong nodeId, uint mask)
    {
        Node? node = _nodes.Acquire(nodeId);
        if (node is null)
        {
            return EBADF;
        }
        int temporary = -1;
        try
        {
            int fd = PathFd(node, ref temporary);
            if (fd < 0)
            {
                return fd;
            }
            Statx st;
            byte empty = 0;
            if (Libc.StatxAt(fd, &empty, Libc.AT_EMPTY_PATH | Libc.AT_SYMLINK_NOFOLLOW, StatxMask, &st) < 0)
            {
                return Libc.NegErrno;
            }
            return CheckAccess(st.Mode, st.Uid, st.Gid, context.Uid, context.Gid, (int)mask) ? 0 : -(int)Errno.EACCES;
        }
        finally
        {
            CloseTemporary(temporary);
            _nodes.Release(node);
        }
    }

    internal static bool CheckAccess(uint mode, uint fileUid, uint fileGid, uint uid, uint gid, int mask)
    {
        mask &= Libc.R_OK | Libc.W_OK | Libc.X_OK;
        if (mask == Libc.F_OK)
        {
            return true;
        }
        bool root = uid == 0;
        bool Allowed(uint ownerBit, uint groupBit, uint otherBit) =>
            (fileUid == uid && (mode & ownerBit) != 0) || (fileGid == gid && (mode & groupBit) != 0) || (mode & otherBit) != 0;
        if ((mask & Libc.R_OK) != 0 && !root && !Allowed(0x100, 0x20, 0x4))
        {
            return false;
        }
        if ((mask & Libc.W_OK) != 0 && !root && !Allowed(0x80, 0x10, 0x2))
        {
            return false;
        }
        if ((mask & Libc.X_OK) != 0)
        {
            bool anyX = (mode & 0x49) != 0;
            if (root ? !anyX : !Allowed(0x40, 0x8, 0x1))
            {
                return false;
            }
        }
        return true;
    }
}
