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
}
