using Vhostfsd.FusePassthrough.Passthrough;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.FusePassthrough;

// Attributes: getattr, setattr (with the killpriv rules), statfs, statx, access.
public sealed unsafe partial class PassthroughFs
{
    public int Getattr(in RequestContext context, ulong nodeId, out FuseAttrOut attr)
    {
        attr = default;
        int rc = StatNode(nodeId, out Statx st);
        if (rc < 0)
        {
            return rc;
        }
        attr = ToAttrOut(in st);
        return 0;
    }

    /// <summary>statx of a node itself (never what a symlink points to), through its own fd or a
    /// temporary one: GETATTR and ACCESS.</summary>
    private int StatNode(ulong nodeId, out Statx st)
    {
        st = default;
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
            byte empty = 0;
            fixed (Statx* p = &st)
            {
                return Libc.StatxAt(fd, &empty, Libc.AT_EMPTY_PATH | Libc.AT_SYMLINK_NOFOLLOW, StatxMask, p) < 0 ? Libc.NegErrno : 0;
            }
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
        int rc = StatNode(nodeId, out Statx st);
        if (rc < 0)
        {
            return rc;
        }
        return CheckAccess(st.Mode, st.Uid, st.Gid, context.Uid, context.Gid, (int)mask) ? 0 : -(int)Errno.EACCES;
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
