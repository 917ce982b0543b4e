using System.Runtime.InteropServices;
using System.Text;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.GuestKernelShim;

// Extended attributes: getxattr, setxattr, listxattr, removexattr and their permission rules.
public sealed partial class FuseFs
{
    /// <summary>XATTR_CREATE / XATTR_REPLACE.</summary>
    public const int XattrCreate = 1;
    public const int XattrReplace = 2;

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
