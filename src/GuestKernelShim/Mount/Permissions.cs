using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.GuestKernelShim;

/// <summary>The kernel's mode-bit checks (fs/namei.c generic_permission, fs/attr.c setattr_prepare,
/// may_delete's sticky rule), applied by the shim for a caller when the mount has default_permissions.
/// uid 0 holds the capabilities a root guest process has (DAC_OVERRIDE, DAC_READ_SEARCH, FOWNER,
/// CHOWN, FSETID). POSIX ACLs are not evaluated (POSIX_ACL is not negotiated).</summary>
public static class Permissions
{
    /// <summary>generic_permission(mask) against <paramref name="attr"/>: OK or EACCES.</summary>
    public static Errno Check(in FuseAttr attr, int mask, in FuseCaller caller)
    {
        mask &= ModeBits.MayRead | ModeBits.MayWrite | ModeBits.MayExec;
        uint mode = attr.Mode;
        uint bits;
        if (caller.Uid == attr.Uid)
        {
            bits = (mode >> 6) & 7;
        }
        else if (caller.InGroup(attr.Gid))
        {
            bits = (mode >> 3) & 7;
        }
        else
        {
            bits = mode & 7;
        }
        if ((mask & ~(int)bits) == 0)
        {
            return Errno.OK;
        }
        if (caller.IsRoot)
        {
            // CAP_DAC_OVERRIDE: everything on directories; on other files everything but exec of a
            // file with no x bit at all.
            if (ModeBits.IsDirectory(mode) || (mask & ModeBits.MayExec) == 0 || (mode & ModeBits.ExecAny) != 0)
            {
                return Errno.OK;
            }
        }
        return Errno.EACCES;
    }

    /// <summary>inode_owner_or_capable: the caller owns the file or has CAP_FOWNER.</summary>
    public static bool OwnerOrCapable(in FuseAttr attr, in FuseCaller caller) => caller.IsRoot || caller.Uid == attr.Uid;

    /// <summary>The sticky-directory rule of may_delete/check_sticky: in a sticky directory only the owner of
    /// the entry, the owner of the directory, or a CAP_FOWNER caller may remove or rename it (EPERM).</summary>
    public static Errno CheckSticky(in FuseAttr dir, in FuseAttr victim, in FuseCaller caller)
    {
        if ((dir.Mode & ModeBits.Sticky) == 0 || caller.IsRoot || caller.Uid == victim.Uid || caller.Uid == dir.Uid)
        {
            return Errno.OK;
        }
        return Errno.EPERM;
    }

    /// <summary>setattr_prepare for the attribute changes of <paramref name="change"/>: EPERM when the caller
    /// may not make them, EACCES for a truncate without write permission. May clear S_ISGID from a
    /// requested mode (a non-member without CAP_FSETID cannot set it).</summary>
    public static Errno CheckSetattr(in FuseAttr attr, ref SetAttrChange change, in FuseCaller caller, bool throughOpenFile)
    {
        if (change.Uid is uint uid && (!caller.IsRoot && (caller.Uid != attr.Uid || uid != attr.Uid)))
        {
            return Errno.EPERM;
        }
        if (change.Gid is uint gid && !caller.IsRoot && (caller.Uid != attr.Uid || (gid != attr.Gid && !caller.InGroup(gid))))
        {
            return Errno.EPERM;
        }
        if (change.Mode is uint mode)
        {
            if (!OwnerOrCapable(attr, caller))
            {
                return Errno.EPERM;
            }
            uint gidAfter = change.Gid ?? attr.Gid;
            if (!caller.IsRoot && !caller.InGroup(gidAfter))
            {
                change.Mode = mode & ~ModeBits.SetGid;
            }
        }
        bool explicitTimes = change.Atime.HasValue || change.Mtime.HasValue || change.Ctime.HasValue;
        if (explicitTimes && !OwnerOrCapable(attr, caller))
        {
            return Errno.EPERM;
        }
        if ((change.AtimeNow || change.MtimeNow) && !explicitTimes && !OwnerOrCapable(attr, caller))
        {
            // utimes(NULL): the owner, or anyone who may write.
            if (Check(attr, ModeBits.MayWrite, caller) != Errno.OK)
            {
                return Errno.EACCES;
            }
        }
        if (change.Size.HasValue && !throughOpenFile)
        {
            if (ModeBits.IsDirectory(attr.Mode))
            {
                return Errno.EISDIR;
            }
            var access = Check(attr, ModeBits.MayWrite, caller);
            if (access != Errno.OK)
            {
                return access;
            }
        }
        return Errno.OK;
    }
}
