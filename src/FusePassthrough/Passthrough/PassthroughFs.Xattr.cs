using Vhostfsd.FusePassthrough.Passthrough;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.FusePassthrough;

// Extended attributes (off unless enabled, as in virtiofsd: then ENOSYS and the guest stops asking).
public sealed unsafe partial class PassthroughFs
{
    private static ReadOnlySpan<byte> AclAccess => "system.posix_acl_access"u8;

    private static ReadOnlySpan<byte> AclDefault => "system.posix_acl_default"u8;

    private bool AclNegotiated => (_negotiated & FuseInitFlags.PosixAcl) != 0;

    private enum XattrOp
    {
        Get,
        Set,
        List,
        Remove,
    }

    /// <summary>Maps a guest attribute name to the host name (NUL-terminated in <paramref name="hostName"/>).
    /// Returns its length or -errno.</summary>
    private int MapXattrName(ReadOnlySpan<byte> name, Span<byte> hostName, bool forGet)
    {
        if (name.Length == 0 || name.Length > Libc.XATTR_NAME_MAX)
        {
            return -(int)Errno.ERANGE;
        }
        if (!AclNegotiated && (name.SequenceEqual(AclAccess) || name.SequenceEqual(AclDefault)))
        {
            // Without POSIX ACL support negotiated, the guest kernel must not see host ACLs.
            return -(int)Errno.EOPNOTSUPP;
        }
        if (_xattrMap is null)
        {
            name.CopyTo(hostName);
            hostName[name.Length] = 0;
            return name.Length;
        }
        XattrMapAction action = _xattrMap.MapClient(name, hostName[..^1], out int length);
        switch (action)
        {
            case XattrMapAction.Deny:
                return forGet ? -(int)Errno.ENODATA : -(int)Errno.EPERM;
            case XattrMapAction.Unsupported:
                return -(int)Errno.EOPNOTSUPP;
        }
        if (length < 0 || length > Libc.XATTR_NAME_MAX)
        {
            return -(int)Errno.ERANGE;
        }
        hostName[length] = 0;
        return length;
    }

    /// <summary>Runs one xattr call on <paramref name="node"/>: with the *xattrat calls where the kernel
    /// has them, else through a real fd for regular files and directories (f*xattr refuse O_PATH fds)
    /// and, for the rest, through <see cref="XattrCallOnPathFd"/>.</summary>
    private nint XattrCall(Node node, XattrOp op, byte* name, byte* value, nuint size, int flags)
    {
        if (!_hasXattrAt && (node.IsRegular || node.IsDirectory))
        {
            int fd = Reopen(node, Libc.O_RDONLY | Libc.O_NONBLOCK | (node.IsDirectory ? Libc.O_DIRECTORY : 0));
            if (fd < 0)
            {
                return fd;
            }
            nint rc = op switch
            {
                XattrOp.Get => Libc.Fgetxattr(fd, name, value, size),
                XattrOp.Set => Libc.Fsetxattr(fd, name, value, size, flags),
                XattrOp.List => Libc.Flistxattr(fd, value, size),
                _ => Libc.Fremovexattr(fd, name),
            };
            int err = rc < 0 ? Libc.NegErrno : 0;
            Libc.Close(fd);
            return rc < 0 ? err : rc;
        }
        int temporary = -1;
        int pathFd = PathFd(node, ref temporary);
        if (pathFd < 0)
        {
            return pathFd;
        }
        nint result = XattrCallOnPathFd(pathFd, op, name, value, size, flags);
        CloseTemporary(temporary);
        return result;
    }

    /// <summary>Runs one xattr call on the inode of the O_PATH fd <paramref name="pathFd"/> (any file
    /// type, a symlink included, whose own attributes these are), through the magic link "N" of the
    /// fd: with the *xattrat calls relative to the /proc/self/fd directory fd (AT_EMPTY_PATH on an
    /// O_PATH fd is refused, EBADF, like f*xattr); else relative to the /proc/self/fd directory made
    /// the thread's working directory (never an absolute /proc path, which a sandbox would resolve
    /// inside the share). Returns the call's result or -errno.</summary>
    private nint XattrCallOnPathFd(int pathFd, XattrOp op, byte* name, byte* value, nuint size, int flags)
    {
        byte* fdName = stackalloc byte[16];
        FormatFd(pathFd, new Span<byte>(fdName, 16));
        if (_hasXattrAt)
        {
            nint r = op switch
            {
                XattrOp.Get => Libc.GetxattrAt(_procSelfFd, fdName, 0, name, value, size),
                XattrOp.Set => Libc.SetxattrAt(_procSelfFd, fdName, 0, name, value, size, flags),
                XattrOp.List => Libc.ListxattrAt(_procSelfFd, fdName, 0, value, size),
                _ => Libc.RemovexattrAt(_procSelfFd, fdName, 0, name),
            };
            return r < 0 ? Libc.NegErrno : r;
        }
        int previousDirectory = EnterProcFdDirectory();
        if (previousDirectory < 0)
        {
            return previousDirectory;
        }
        nint result = op switch
        {
            XattrOp.Get => Libc.Getxattr(fdName, name, value, size),
            XattrOp.Set => Libc.Setxattr(fdName, name, value, size, flags),
            XattrOp.List => Libc.Listxattr(fdName, value, size),
            _ => Libc.Removexattr(fdName, name),
        };
        int error = result < 0 ? Libc.NegErrno : 0;
        LeaveProcFdDirectory(previousDirectory);
        return result < 0 ? error : result;
    }

    public int Setxattr(in RequestContext context, ulong nodeId, ReadOnlySpan<byte> guestName, ReadOnlySpan<byte> value, uint flags, uint setxattrFlags)
    {
        if (!_options.XattrEnabled)
        {
            return -(int)Errno.ENOSYS;
        }
        Span<byte> hostName = stackalloc byte[Libc.XATTR_NAME_MAX + 2];
        int mapped = MapXattrName(guestName, hostName, forGet: false);
        if (mapped < 0)
        {
            return mapped;
        }
        Node? node = _nodes.Acquire(nodeId);
        if (node is null)
        {
            return EBADF;
        }
        try
        {
            bool killSgid = AclNegotiated && ((FuseSetxattrFlags)setxattrFlags & FuseSetxattrFlags.AclKillSgid) != 0
                && guestName.SequenceEqual(AclAccess);
            nint rc;
            fixed (byte* name = hostName)
            fixed (byte* data = value)
            {
                rc = XattrCall(node, XattrOp.Set, name, data, (nuint)value.Length, (int)flags);
            }
            if (rc < 0)
            {
                return (int)rc;
            }
            if (killSgid)
            {
                ClearSgid(node);
            }
            return 0;
        }
        finally
        {
            _nodes.Release(node);
        }
    }

    private void ClearSgid(Node node)
    {
        int temporary = -1;
        int fd = PathFd(node, ref temporary);
        if (fd < 0)
        {
            return;
        }
        Statx st;
        byte empty = 0;
        if (Libc.StatxAt(fd, &empty, Libc.AT_EMPTY_PATH, Libc.STATX_MODE, &st) == 0 && (st.Mode & Libc.S_ISGID) != 0)
        {
            byte* fdName = stackalloc byte[16];
            FormatFd(fd, new Span<byte>(fdName, 16));
            Libc.FchmodAt(_procSelfFd, fdName, st.Mode & 0xFFFu & ~Libc.S_ISGID, 0);
        }
        CloseTemporary(temporary);
    }

    public int Getxattr(in RequestContext context, ulong nodeId, ReadOnlySpan<byte> guestName, Span<byte> value, out int length)
    {
        length = 0;
        if (!_options.XattrEnabled)
        {
            return -(int)Errno.ENOSYS;
        }
        Span<byte> hostName = stackalloc byte[Libc.XATTR_NAME_MAX + 2];
        int mapped = MapXattrName(guestName, hostName, forGet: true);
        if (mapped < 0)
        {
            return mapped;
        }
        return ReadXattrs(nodeId, hostName, value, list: false, out length);
    }

    public int Listxattr(in RequestContext context, ulong nodeId, Span<byte> list, out int length)
    {
        length = 0;
        if (!_options.XattrEnabled)
        {
            return -(int)Errno.ENOSYS;
        }
        return ReadXattrs(nodeId, default, list, list: true, out length);
    }

    private int ReadXattrs(ulong nodeId, ReadOnlySpan<byte> hostName, Span<byte> buffer, bool list, out int length)
    {
        length = 0;
        Node? node = _nodes.Acquire(nodeId);
        if (node is null)
        {
            return EBADF;
        }
        try
        {
            nint n;
            fixed (byte* name = hostName)
            fixed (byte* value = buffer)
            {
                n = XattrCall(node, list ? XattrOp.List : XattrOp.Get, name, value, (nuint)buffer.Length, 0);
            }
            if (n < 0)
            {
                return (int)n;
            }
            length = list ? FilterXattrList(buffer[..(int)n]) : (int)n;
            return 0;
        }
        finally
        {
            _nodes.Release(node);
        }
    }

    /// <summary>Applies the xattr map and hides the ACL names when ACLs were not negotiated.</summary>
    private int FilterXattrList(Span<byte> list)
    {
        int length = _xattrMap is null ? list.Length : _xattrMap.MapServerList(list);
        if (AclNegotiated)
        {
            return length;
        }
        int read = 0;
        int write = 0;
        while (read < length)
        {
            int end = list[read..length].IndexOf((byte)0);
            int nameLength = end < 0 ? length - read : end;
            ReadOnlySpan<byte> name = list.Slice(read, nameLength);
            if (nameLength > 0 && !name.SequenceEqual(AclAccess) && !name.SequenceEqual(AclDefault))
            {
                list.Slice(read, nameLength).CopyTo(list[write..]);
                write += nameLength;
                list[write++] = 0;
            }
            read += nameLength + 1;
        }
        return write;
    }

    public int Removexattr(in RequestContext context, ulong nodeId, ReadOnlySpan<byte> guestName)
    {
        if (!_options.XattrEnabled)
        {
            return -(int)Errno.ENOSYS;
        }
        Span<byte> hostName = stackalloc byte[Libc.XATTR_NAME_MAX + 2];
        int mapped = MapXattrName(guestName, hostName, forGet: false);
        if (mapped < 0)
        {
            return mapped;
        }
        Node? node = _nodes.Acquire(nodeId);
        if (node is null)
        {
            return EBADF;
        }
        try
        {
            fixed (byte* p = hostName)
            {
                nint rc = XattrCall(node, XattrOp.Remove, p, null, 0, 0);
                return rc < 0 ? (int)rc : 0;
            }
        }
        finally
        {
            _nodes.Release(node);
        }
    }
}
