using Vhostfsd.FusePassthrough.Passthrough;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.FusePassthrough;

// Extended attributes (off unless enabled, as in virtiofsd: then ENOSYS and the guest stops asking).
public sealed unsafe partial class FuseServer
{
    private const int XattrScratchSize = Libc.XATTR_SIZE_MAX + 512;

    [ThreadStatic]
    private static byte[]? t_xattr;

    private static byte[] XattrScratch => t_xattr ??= GC.AllocateArray<byte>(XattrScratchSize, pinned: true);

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

    /// <summary>Runs one xattr call on <paramref name="node"/>: with the *xattrat calls relative to the
    /// /proc/self/fd directory fd where the kernel has them; else through a real fd for regular files and
    /// directories (f*xattr refuse O_PATH fds) and, for the rest, through the relative path "N" from the
    /// /proc/self/fd directory made the thread's working directory (never an absolute /proc path, which
    /// a sandbox would resolve inside the share).</summary>
    private nint XattrCall(Node node, XattrOp op, byte* name, byte* value, nuint size, int flags)
    {
        if (_hasXattrAt)
        {
            int temp = -1;
            int fd = PathFd(node, ref temp);
            if (fd < 0)
            {
                return fd;
            }
            // AT_EMPTY_PATH on an O_PATH fd is refused (EBADF) like f*xattr; the magic link
            // "N" below the /proc/self/fd directory fd reaches the inode itself, even a symlink.
            byte* fdName = stackalloc byte[16];
            FormatFd(fd, new Span<byte>(fdName, 16));
            nint r = op switch
            {
                XattrOp.Get => Libc.GetxattrAt(_procSelfFd, fdName, 0, name, value, size),
                XattrOp.Set => Libc.SetxattrAt(_procSelfFd, fdName, 0, name, value, size, flags),
                XattrOp.List => Libc.ListxattrAt(_procSelfFd, fdName, 0, value, size),
                _ => Libc.RemovexattrAt(_procSelfFd, fdName, 0, name),
            };
            int e = r < 0 ? Libc.NegErrno : 0;
            CloseTemporary(temp);
            return r < 0 ? e : r;
        }
        if (node.IsRegular || node.IsDirectory)
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
        int previousDirectory = EnterProcFdDirectory();
        if (previousDirectory < 0)
        {
            CloseTemporary(temporary);
            return previousDirectory;
        }
        // "N" relative to the /proc/self/fd directory: the magic link reaches the inode itself (a
        // symlink included, whose own attributes these are).
        byte* path = stackalloc byte[16];
        FormatFd(pathFd, new Span<byte>(path, 16));
        nint result = op switch
        {
            XattrOp.Get => Libc.Getxattr(path, name, value, size),
            XattrOp.Set => Libc.Setxattr(path, name, value, size, flags),
            XattrOp.List => Libc.Listxattr(path, value, size),
            _ => Libc.Removexattr(path, name),
        };
        int error = result < 0 ? Libc.NegErrno : 0;
        LeaveProcFdDirectory(previousDirectory);
        CloseTemporary(temporary);
        return result < 0 ? error : result;
    }

    private int DoSetxattr(in FuseInHeader h, ref RequestReader r)
    {
        if (!_options.XattrEnabled)
        {
            return -(int)Errno.ENOSYS;
        }
        FuseSetxattrIn a = default;
        bool extended = (_negotiated & FuseInitFlags.SetxattrExt) != 0;
        if (extended ? !r.TryRead(out a) : !(r.TryRead(out a.Length) && r.TryRead(out a.Flags)))
        {
            return Malformed();
        }
        if (a.Length > Libc.XATTR_SIZE_MAX)
        {
            return -(int)Errno.E2BIG;
        }
        byte[] scratch = XattrScratch;
        int total = r.Remaining;
        if (total > scratch.Length || total < (int)a.Length + 1)
        {
            return total > scratch.Length ? -(int)Errno.E2BIG : Malformed();
        }
        r.TryCopy(scratch.AsSpan(0, total));
        int nameLength = total - (int)a.Length - 1;
        if (scratch[nameLength] != 0 || scratch.AsSpan(0, nameLength).IndexOf((byte)0) >= 0)
        {
            return Malformed();
        }
        Span<byte> hostName = stackalloc byte[Libc.XATTR_NAME_MAX + 2];
        int mapped = MapXattrName(scratch.AsSpan(0, nameLength), hostName, forGet: false);
        if (mapped < 0)
        {
            return mapped;
        }
        Node? node = _nodes.Acquire(h.NodeId);
        if (node is null)
        {
            return EBADF;
        }
        try
        {
            bool killSgid = AclNegotiated && ((FuseSetxattrFlags)a.SetxattrFlags & FuseSetxattrFlags.AclKillSgid) != 0
                && scratch.AsSpan(0, nameLength).SequenceEqual(AclAccess);
            nint rc;
            fixed (byte* name = hostName)
            fixed (byte* value = scratch)
            {
                rc = XattrCall(node, XattrOp.Set, name, value + nameLength + 1, a.Length, (int)a.Flags);
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

    private int DoGetxattr(in FuseInHeader h, ref RequestReader r, ref ReplyWriter w, bool list)
    {
        if (!_options.XattrEnabled)
        {
            return -(int)Errno.ENOSYS;
        }
        if (!r.TryRead(out FuseGetxattrIn a))
        {
            return Malformed();
        }
        Span<byte> hostName = stackalloc byte[Libc.XATTR_NAME_MAX + 2];
        if (!list)
        {
            Span<byte> name = stackalloc byte[Libc.XATTR_NAME_MAX + 2];
            int total = r.Remaining;
            if (total > name.Length)
            {
                return -(int)Errno.ERANGE;
            }
            r.TryCopy(name[..total]);
            if (total == 0 || name[total - 1] != 0 || name[..(total - 1)].IndexOf((byte)0) >= 0)
            {
                return Malformed();
            }
            int mapped = MapXattrName(name[..(total - 1)], hostName, forGet: true);
            if (mapped < 0)
            {
                return mapped;
            }
        }
        int needed = a.Length == 0 ? FuseGetxattrOut.Size : (int)Math.Min(a.Length, (uint)Libc.XATTR_SIZE_MAX);
        if (w.Available < Math.Min(needed, FuseGetxattrOut.Size))
        {
            return EIO;
        }
        Node? node = _nodes.Acquire(h.NodeId);
        if (node is null)
        {
            return EBADF;
        }
        try
        {
            byte[] scratch = XattrScratch;
            nint n;
            fixed (byte* name = hostName)
            fixed (byte* value = scratch)
            {
                n = XattrCall(node, list ? XattrOp.List : XattrOp.Get, name, value, (nuint)Libc.XATTR_SIZE_MAX, 0);
            }
            if (n < 0)
            {
                return (int)n;
            }
            int length = (int)n;
            if (list)
            {
                length = FilterXattrList(scratch.AsSpan(0, length));
            }
            if (a.Length == 0)
            {
                var size = new FuseGetxattrOut { Length = (uint)length };
                w.TryWrite(in size);
                return 0;
            }
            if (length > a.Length)
            {
                return -(int)Errno.ERANGE;
            }
            return w.TryWrite(scratch.AsSpan(0, length)) ? 0 : -(int)Errno.ERANGE;
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

    private int DoRemovexattr(in FuseInHeader h, ref RequestReader r)
    {
        if (!_options.XattrEnabled)
        {
            return -(int)Errno.ENOSYS;
        }
        Span<byte> name = stackalloc byte[Libc.XATTR_NAME_MAX + 2];
        int total = r.Remaining;
        if (total > name.Length)
        {
            return -(int)Errno.ERANGE;
        }
        r.TryCopy(name[..total]);
        if (total == 0 || name[total - 1] != 0 || name[..(total - 1)].IndexOf((byte)0) >= 0)
        {
            return Malformed();
        }
        Span<byte> hostName = stackalloc byte[Libc.XATTR_NAME_MAX + 2];
        int mapped = MapXattrName(name[..(total - 1)], hostName, forGet: false);
        if (mapped < 0)
        {
            return mapped;
        }
        Node? node = _nodes.Acquire(h.NodeId);
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
