using System.Runtime.InteropServices;
using System.Text;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.GuestKernelShim;

public sealed partial class FuseFs
{
    /// <summary>XATTR_CREATE / XATTR_REPLACE.</summary>
    public const int XattrCreate = 1;
    public const int XattrReplace = 2;

    // ---------------------------------------------------------------- setattr / statfs / syncfs

    /// <summary>chmod / chown / truncate / utimens (fuse_setattr → SETATTR). With default_permissions the
    /// kernel's setattr_prepare rules are checked first (owner-only chmod and utimes, root-only chown, write
    /// permission for truncate, S_ISGID dropped for non-members). <paramref name="file"/> sends the open handle
    /// (ftruncate, futimens). With HANDLE_KILLPRIV_V2 the daemon is asked to clear suid/sgid on chown and on a
    /// truncate by a caller without CAP_FSETID.</summary>
    public Errno SetAttr(FuseNode node, SetAttrChange change, out FuseAttr attr, FuseCaller? caller = null, FuseFile? file = null)
    {
        var c = Who(caller);
        attr = default;
        var rc = CheckLive(node);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (file != null && change.Size.HasValue && !file.CanWrite)
        {
            return Errno.EBADF;
        }
        return SetAttrCore(node, ref change, c, file, checkPermission: true, out attr);
    }

    private Errno SetAttrCore(FuseNode node, ref SetAttrChange change, in FuseCaller caller, FuseFile? file, bool checkPermission, out FuseAttr attr)
    {
        attr = default;
        var rc = CheckAllowed(caller);
        if (rc != Errno.OK)
        {
            return rc;
        }
        rc = RefreshAttr(node, caller, out var current);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (checkPermission && Options.DefaultPermissions)
        {
            rc = Permissions.CheckSetattr(current, ref change, caller, file != null);
            if (rc != Errno.OK)
            {
                return rc;
            }
        }
        if (change.Size.HasValue && ModeBits.IsDirectory(current.Mode))
        {
            return Errno.EISDIR;
        }
        if (change.Size is ulong newSize && newSize > long.MaxValue)
        {
            return Errno.EINVAL;
        }
        var arg = new FuseSetattrIn();
        var valid = FuseSetattrValid.None;
        if (change.Mode is uint mode)
        {
            valid |= FuseSetattrValid.Mode;
            arg.Mode = (current.Mode & ModeBits.TypeMask) | (mode & 0xFFF);
        }
        if (change.Uid is uint uid)
        {
            valid |= FuseSetattrValid.Uid;
            arg.Uid = uid;
        }
        if (change.Gid is uint gid)
        {
            valid |= FuseSetattrValid.Gid;
            arg.Gid = gid;
        }
        if (change.Size is ulong size)
        {
            valid |= FuseSetattrValid.Size;
            arg.FileSize = size;
        }
        if (change.Atime is (long atSec, uint atNsec))
        {
            valid |= FuseSetattrValid.Atime;
            arg.Atime = (ulong)atSec;
            arg.AtimeNsec = atNsec;
        }
        else if (change.AtimeNow)
        {
            valid |= FuseSetattrValid.Atime | FuseSetattrValid.AtimeNow;
        }
        if (change.Mtime is (long mtSec, uint mtNsec))
        {
            valid |= FuseSetattrValid.Mtime;
            arg.Mtime = (ulong)mtSec;
            arg.MtimeNsec = mtNsec;
        }
        else if (change.MtimeNow)
        {
            valid |= FuseSetattrValid.Mtime | FuseSetattrValid.MtimeNow;
        }
        if (change.Ctime is (long ctSec, uint ctNsec))
        {
            valid |= FuseSetattrValid.Ctime;
            arg.Ctime = (ulong)ctSec;
            arg.CtimeNsec = ctNsec;
        }
        if (file != null && !file.IsDirectory)
        {
            valid |= FuseSetattrValid.Fh;
            arg.Fh = file.Fh;
            if (change.Size.HasValue)
            {
                valid |= FuseSetattrValid.LockOwner;
                arg.LockOwner = LockOwnerOf(caller);
            }
        }
        if (Conn.Has(FuseInitFlags.HandleKillprivV2) && !ModeBits.IsDirectory(current.Mode))
        {
            bool chown = change.Uid.HasValue || change.Gid.HasValue;
            bool privileged = (current.Mode & ModeBits.SetUid) != 0
                || (current.Mode & (ModeBits.SetGid | 0x8)) == (ModeBits.SetGid | 0x8);
            bool truncateKills = change.Size.HasValue && !caller.IsRoot && privileged && ModeBits.IsRegular(current.Mode);
            if (chown || truncateKills)
            {
                valid |= FuseSetattrValid.KillSuidgid;
            }
        }
        if (valid == FuseSetattrValid.None)
        {
            attr = current;
            return Errno.OK;
        }
        arg.Valid = (uint)valid;
        FuseAttrOut outArg = default;
        var reply = Conn.Send(FuseOpcode.Setattr, node.NodeId, caller, new FuseArgs(Bytes(in arg)),
            MemoryMarshal.AsBytes(new Span<FuseAttrOut>(ref outArg)), FuseReplyShape.Fixed);
        if (!reply.IsOk)
        {
            node.InvalidateAttr();
            return reply.Errno;
        }
        return AcceptAttr(node, outArg, out attr);
    }

    /// <summary>Truncates to <paramref name="size"/> (truncate(2), or ftruncate(2) with <paramref name="file"/>).</summary>
    public Errno Truncate(FuseNode node, ulong size, FuseCaller? caller = null, FuseFile? file = null)
        => SetAttr(node, new SetAttrChange { Size = size }, out _, caller, file);

    /// <summary>chmod(2).</summary>
    public Errno Chmod(FuseNode node, uint mode, FuseCaller? caller = null)
        => SetAttr(node, new SetAttrChange { Mode = mode }, out _, caller);

    /// <summary>chown(2); null leaves the id unchanged.</summary>
    public Errno Chown(FuseNode node, uint? uid, uint? gid, FuseCaller? caller = null)
        => SetAttr(node, new SetAttrChange { Uid = uid, Gid = gid }, out _, caller);

    /// <summary>statfs(2): STATFS for the file system <paramref name="node"/> is on.</summary>
    public Errno StatFs(FuseNode node, out FuseKStatfs statfs, FuseCaller? caller = null)
    {
        var c = Who(caller);
        statfs = default;
        var rc = CheckLiveAndAllowed(node, c);
        if (rc != Errno.OK)
        {
            return rc;
        }
        FuseStatfsOut outArg = default;
        var reply = Conn.Send(FuseOpcode.Statfs, node.NodeId, c, MemoryMarshal.AsBytes(new Span<FuseStatfsOut>(ref outArg)), FuseReplyShape.Fixed);
        if (!reply.IsOk)
        {
            return reply.Errno;
        }
        statfs = outArg.St;
        return Errno.OK;
    }

    /// <summary>syncfs(2) of a mount: SYNCFS for its root node (each submount is its own file system and gets
    /// its own). Not sent again after ENOSYS (then 0, as Linux does).</summary>
    public Errno SyncFs(FuseMount? mount = null, FuseCaller? caller = null)
    {
        var c = Who(caller);
        mount ??= RootMount;
        if (!ReferenceEquals(mount.Fs, this))
        {
            throw new ArgumentException("the mount belongs to another file system", nameof(mount));
        }
        if (NoSyncfs)
        {
            return Errno.OK;
        }
        var arg = new FuseSyncfsIn();
        var reply = Conn.Send(FuseOpcode.Syncfs, mount.Root.NodeId, c, new FuseArgs(Bytes(in arg)), Span<byte>.Empty, FuseReplyShape.Fixed);
        if (reply.Errno == Errno.ENOSYS)
        {
            NoSyncfs = true;
            return Errno.OK;
        }
        return reply.Errno;
    }

    // ---------------------------------------------------------------- extended attributes

    private Errno CheckXattr(FuseNode node, string name, int mask, in FuseCaller caller, Span<byte> nameBuffer, out int nameLength)
    {
        nameLength = 0;
        var rc = CheckLive(node);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (name.Length == 0 || name.Contains('\0'))
        {
            return Errno.ERANGE;
        }
        int length = Encoding.UTF8.GetByteCount(name);
        if (length > XattrNameMax)
        {
            return Errno.ERANGE;
        }
        Encoding.UTF8.GetBytes(name, nameBuffer);
        nameBuffer[length] = 0;
        nameLength = length + 1;
        rc = CheckAllowed(caller);
        if (rc != Errno.OK)
        {
            return rc;
        }
        // xattr_permission: trusted.* needs CAP_SYS_ADMIN; user.* only on files and directories, with the
        // file's read or write permission.
        if (name.StartsWith("trusted.", StringComparison.Ordinal) && !caller.IsRoot)
        {
            return mask == ModeBits.MayWrite ? Errno.EPERM : Errno.ENODATA;
        }
        if (name.StartsWith("user.", StringComparison.Ordinal))
        {
            if (!node.IsRegular && !node.IsDirectory)
            {
                return mask == ModeBits.MayWrite ? Errno.EPERM : Errno.ENODATA;
            }
            if (Options.DefaultPermissions)
            {
                return CheckPermission(node, mask, caller);
            }
        }
        return Errno.OK;
    }

    /// <summary>setxattr(2): SETXATTR (the 16-byte argument with SETXATTR_EXT, else the 8-byte one);
    /// EOPNOTSUPP after ENOSYS. Values above 64 KiB are E2BIG, names above 255 bytes ERANGE.</summary>
    public Errno SetXattr(FuseNode node, string name, ReadOnlySpan<byte> value, int flags = 0, FuseCaller? caller = null)
    {
        var c = Who(caller);
        Span<byte> nameBuffer = stackalloc byte[XattrNameMax * 4 + 2];
        var rc = CheckXattr(node, name, ModeBits.MayWrite, c, nameBuffer, out int nameLength);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (value.Length > XattrSizeMax)
        {
            return Errno.E2BIG;
        }
        if ((flags & ~(XattrCreate | XattrReplace)) != 0)
        {
            return Errno.EINVAL;
        }
        if (NoSetxattr)
        {
            return Errno.EOPNOTSUPP;
        }
        var arg = new FuseSetxattrIn { Length = (uint)value.Length, Flags = (uint)flags };
        int argSize = Conn.Has(FuseInitFlags.SetxattrExt) ? FuseSetxattrIn.Size : FuseConstants.CompatSetxattrInSize;
        var reply = Conn.Send(FuseOpcode.Setxattr, node.NodeId, c, new FuseArgs(Bytes(in arg)[..argSize], nameBuffer[..nameLength], value),
            Span<byte>.Empty, FuseReplyShape.Fixed);
        if (reply.Errno == Errno.ENOSYS)
        {
            NoSetxattr = true;
            return Errno.EOPNOTSUPP;
        }
        if (reply.IsOk)
        {
            node.InvalidateAttr();
        }
        return reply.Errno;
    }

    /// <summary>getxattr(2): with an empty <paramref name="value"/> the size is asked (getxattr_out), else the
    /// value is read into it (ERANGE when it does not fit). EOPNOTSUPP after ENOSYS.</summary>
    public Errno GetXattr(FuseNode node, string name, Span<byte> value, out int size, FuseCaller? caller = null)
    {
        var c = Who(caller);
        size = 0;
        Span<byte> nameBuffer = stackalloc byte[XattrNameMax * 4 + 2];
        var rc = CheckXattr(node, name, ModeBits.MayRead, c, nameBuffer, out int nameLength);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (NoGetxattr)
        {
            return Errno.EOPNOTSUPP;
        }
        value = value[..Math.Min(value.Length, XattrSizeMax)];
        var arg = new FuseGetxattrIn { Length = (uint)value.Length };
        rc = SendXattrQuery(FuseOpcode.Getxattr, node, c, Bytes(in arg), nameBuffer[..nameLength], value, out size);
        if (rc == Errno.ENOSYS)
        {
            NoGetxattr = true;
            return Errno.EOPNOTSUPP;
        }
        return rc;
    }

    /// <summary>listxattr(2): the NUL-separated names, or their size with an empty <paramref name="list"/>.
    /// A list whose last name is not NUL-terminated is EIO (fuse_verify_xattr_list).</summary>
    public Errno ListXattr(FuseNode node, Span<byte> list, out int size, FuseCaller? caller = null)
    {
        var c = Who(caller);
        size = 0;
        var rc = CheckLive(node);
        if (rc == Errno.OK)
        {
            rc = CheckAllowed(c);
        }
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (NoListxattr)
        {
            return Errno.EOPNOTSUPP;
        }
        list = list[..Math.Min(list.Length, XattrSizeMax)];
        var arg = new FuseGetxattrIn { Length = (uint)list.Length };
        rc = SendXattrQuery(FuseOpcode.Listxattr, node, c, Bytes(in arg), default, list, out size);
        if (rc == Errno.ENOSYS)
        {
            NoListxattr = true;
            return Errno.EOPNOTSUPP;
        }
        if (rc == Errno.OK && list.Length > 0 && size > 0 && list[size - 1] != 0)
        {
            size = 0;
            return Errno.EIO;
        }
        return rc;
    }

    private Errno SendXattrQuery(FuseOpcode opcode, FuseNode node, in FuseCaller caller, ReadOnlySpan<byte> arg, ReadOnlySpan<byte> name,
        Span<byte> value, out int size)
    {
        size = 0;
        if (value.Length == 0)
        {
            FuseGetxattrOut outArg = default;
            var sizeReply = Conn.Send(opcode, node.NodeId, caller, name.IsEmpty ? new FuseArgs(arg) : new FuseArgs(arg, name),
                MemoryMarshal.AsBytes(new Span<FuseGetxattrOut>(ref outArg)), FuseReplyShape.Fixed);
            if (!sizeReply.IsOk)
            {
                return sizeReply.Errno;
            }
            size = (int)Math.Min(outArg.Length, (uint)XattrSizeMax);
            return Errno.OK;
        }
        var reply = Conn.Send(opcode, node.NodeId, caller, name.IsEmpty ? new FuseArgs(arg) : new FuseArgs(arg, name), value, FuseReplyShape.Variable);
        if (!reply.IsOk)
        {
            return reply.Errno;
        }
        size = reply.Length;
        return Errno.OK;
    }

    /// <summary>removexattr(2): REMOVEXATTR; EOPNOTSUPP after ENOSYS.</summary>
    public Errno RemoveXattr(FuseNode node, string name, FuseCaller? caller = null)
    {
        var c = Who(caller);
        Span<byte> nameBuffer = stackalloc byte[XattrNameMax * 4 + 2];
        var rc = CheckXattr(node, name, ModeBits.MayWrite, c, nameBuffer, out int nameLength);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (NoRemovexattr)
        {
            return Errno.EOPNOTSUPP;
        }
        var reply = Conn.Send(FuseOpcode.Removexattr, node.NodeId, c, new FuseArgs(nameBuffer[..nameLength]), Span<byte>.Empty, FuseReplyShape.Fixed);
        if (reply.Errno == Errno.ENOSYS)
        {
            NoRemovexattr = true;
            return Errno.EOPNOTSUPP;
        }
        if (reply.IsOk)
        {
            node.InvalidateAttr();
        }
        return reply.Errno;
    }
}
