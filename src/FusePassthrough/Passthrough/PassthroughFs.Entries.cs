using Vhostfsd.FusePassthrough.Passthrough;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.FusePassthrough;

// Name-space changes: symlink, mknod, mkdir (with security labels), unlink, rmdir, rename, link; readlink.
public sealed unsafe partial class PassthroughFs
{
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

    /// <summary>Tests only (null in production): called with the entry's name right after MKDIR, MKNOD,
    /// SYMLINK or CREATE made it and before its security label is set, so a test can play the host
    /// user who renames another entry over that name in between.</summary>
    internal Action<string>? AfterCreateBeforeLabel { get; set; }

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
            if (!label.IsPresent)
            {
                return LookupChild(parent, parentFd, name, out entry);
            }
            AfterCreateBeforeLabel?.Invoke(System.Text.Encoding.UTF8.GetString(System.Runtime.InteropServices.MemoryMarshal.CreateReadOnlySpanFromNullTerminated(name)));
            uint type = kind switch
            {
                CreateKind.Symlink => Libc.S_IFLNK,
                CreateKind.Mkdir => Libc.S_IFDIR,
                _ => (mode & Libc.S_IFMT) == 0 ? Libc.S_IFREG : mode & Libc.S_IFMT,
            };
            return LabelCreatedEntry(in context, parent, parentFd, name, type, labelName, label.Value, out entry);
        }
        finally
        {
            CloseTemporary(temporary);
            _nodes.Release(parent);
        }
    }

    /// <summary>Labels the entry MKDIR, MKNOD or SYMLINK just created as the requester, and answers
    /// with it. The label is set as root, so never by name: a host user who can rename in the
    /// directory could swap their own entry in under the name after the creation, and a label they
    /// could not set (a security.selinux context) would land on it. So the name is pinned once with
    /// an O_PATH fd, the inode checked to be the one this request made (its type, and its owner:
    /// the uid the request created it as), labelled through that fd, and the reply made of that
    /// same fd. The group is not checked: a setgid directory gives a new entry its own group.
    /// Returns 0 or -errno.</summary>
    private int LabelCreatedEntry(in RequestContext context, Node parent, int parentFd, byte* name, uint type,
        ReadOnlySpan<byte> labelName, ReadOnlySpan<byte> labelValue, out FuseEntryOut entry)
    {
        entry = default;
        // The pinning fd is taken from the budget only once the entry is labelled (below), so that
        // a full budget undoes the creation like a failed label instead of leaving it unlabelled.
        int fd = OpenPathBelow(parentFd, name);
        if (fd < 0)
        {
            // Renamed away or replaced already: nothing of ours to label under this name.
            return fd;
        }
        Statx st;
        byte empty = 0;
        int rc = 0;
        uint owner = _privileged && context.Uid != 0 ? context.Uid : Libc.GetEuid();
        if (Libc.StatxAt(fd, &empty, Libc.AT_EMPTY_PATH | Libc.AT_SYMLINK_NOFOLLOW, Libc.STATX_TYPE | Libc.STATX_UID | Libc.STATX_INO, &st) < 0)
        {
            rc = Libc.NegErrno;
        }
        else if ((st.Mode & Libc.S_IFMT) != type || st.Uid != owner)
        {
            // Someone else's entry was put in under the name after the creation (ours was renamed
            // away or replaced). It is neither labelled nor removed, and the reply must not make it
            // the guest's new entry: EIO, since the guest cannot retry (the name is taken) and no
            // errno of the creating calls describes a host-side swap.
            rc = -(int)Errno.EIO;
        }
        else
        {
            fixed (byte* xname = labelName)
            fixed (byte* value = labelValue)
            {
                nint set = XattrCallOnPathFd(fd, XattrOp.Set, xname, value, (nuint)labelValue.Length, 0);
                rc = set < 0 ? (int)set : 0;
            }
            if (rc == 0 && !_budget.TryTake())
            {
                rc = -(int)Errno.ENFILE;
            }
            if (rc < 0)
            {
                RemoveIfSame(parentFd, name, in st);
            }
        }
        if (rc < 0)
        {
            Libc.Close(fd);
            return rc;
        }
        return InsertFromFd(parent, fd, out entry);
    }

    /// <summary>Undoes a creation whose label could not be set (or whose reply cannot be made):
    /// removes <paramref name="name"/> only if it still names the inode <paramref name="created"/>
    /// describes (dev and inode number), never an entry put there since. (A rename between this
    /// check and the unlink could still slip in; there is no unlink by fd.)</summary>
    private static void RemoveIfSame(int parentFd, byte* name, in Statx created)
    {
        Statx st;
        if (Libc.StatxAt(parentFd, name, Libc.AT_SYMLINK_NOFOLLOW, Libc.STATX_TYPE | Libc.STATX_INO, &st) == 0
            && st.Ino == created.Ino && st.Dev == created.Dev)
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
            // RENAME_WHITEOUT creates an entry (the whiteout, a 0:0 character device) where the old
            // name was: it is the requester's, as any entry it creates. As root it was root's, and in
            // a sticky directory nobody but root could remove it again.
            bool creates = (flags & Libc.RENAME_WHITEOUT) != 0;
            CredentialState saved = default;
            if (creates)
            {
                int rc = EnterCredentials(in context, out saved);
                if (rc < 0)
                {
                    return rc;
                }
            }
            try
            {
                fixed (byte* oldName = nameZ)
                fixed (byte* newName = newNameZ)
                {
                    return Libc.RenameAt2(oldFd, oldName, newFd, newName, flags) < 0 ? Libc.NegErrno : 0;
                }
            }
            finally
            {
                if (creates)
                {
                    LeaveCredentials(in saved);
                }
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
}
