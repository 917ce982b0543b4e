using System.Runtime.InteropServices;
using System.Text;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.GuestKernelShim;

// Attributes: getattr, statx, setattr (chmod, chown, truncate, utimens), statfs and syncfs.
public sealed partial class FuseFs
{
    // ---------------------------------------------------------------- attributes

    /// <summary>stat: the cached attributes while the attribute timeout runs, else a GETATTR (through the open
    /// file's handle when <paramref name="file"/> is given). <paramref name="force"/> skips the cache.</summary>
    public Errno GetAttr(FuseNode node, out FuseAttr attr, FuseCaller? caller = null, FuseFile? file = null, bool force = false)
    {
        var c = Who(caller);
        attr = default;
        var rc = CheckLiveAndAllowed(node, c);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (!force && node.AttrValid)
        {
            attr = node.Attr;
            return Errno.OK;
        }
        return FetchAttr(node, c, file, out attr);
    }

    /// <summary>The attributes, refreshed when expired (fuse_update_attributes).</summary>
    internal Errno RefreshAttr(FuseNode node, in FuseCaller caller, out FuseAttr attr)
    {
        if (node.AttrValid)
        {
            attr = node.Attr;
            return Errno.OK;
        }
        return FetchAttr(node, caller, null, out attr);
    }

    private Errno FetchAttr(FuseNode node, in FuseCaller caller, FuseFile? file, out FuseAttr attr)
    {
        attr = default;
        var arg = new FuseGetattrIn();
        if (file != null && !file.IsDirectory)
        {
            arg.GetattrFlags = (uint)FuseGetattrFlags.Fh;
            arg.Fh = file.Fh;
        }
        FuseAttrOut outArg = default;
        var reply = Conn.Send(FuseOpcode.Getattr, node.NodeId, caller, new FuseArgs(Bytes(in arg)),
            MemoryMarshal.AsBytes(new Span<FuseAttrOut>(ref outArg)), FuseReplyShape.Fixed);
        if (!reply.IsOk)
        {
            return reply.Errno;
        }
        return AcceptAttr(node, outArg, out attr);
    }

    private static Errno AcceptAttr(FuseNode node, in FuseAttrOut outArg, out FuseAttr attr)
    {
        attr = outArg.Attr;
        if (!ModeBits.IsValidType(attr.Mode) || attr.FileSize > long.MaxValue
            || ((attr.Mode ^ node.Attr.Mode) & ModeBits.TypeMask) != 0)
        {
            // fuse_make_bad: the node changed type under the guest.
            node.IsStale = true;
            return Errno.EIO;
        }
        node.SetAttr(attr, outArg.AttrValid, outArg.AttrValidNsec);
        // What the node holds now: under write-back caching the guest's own size and times.
        attr = node.Attr;
        return Errno.OK;
    }

    private const uint StatxType = 0x1;
    private const uint StatxSize = 0x200;

    /// <summary>statx(2): a STATX request when the daemon speaks 7.39 (falling back to GETATTR for good after
    /// ENOSYS), else built from GETATTR. st_dev is the mount's device, as the guest's VFS fills it in.</summary>
    public Errno Statx(FuseNode node, out FuseStatx statx, uint mask = 0x7FF, FuseCaller? caller = null, FuseFile? file = null)
    {
        var c = Who(caller);
        statx = default;
        var rc = CheckLiveAndAllowed(node, c);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (Conn.Minor >= 39 && !NoStatx)
        {
            var arg = new FuseStatxIn { SxMask = mask };
            if (file != null && !file.IsDirectory)
            {
                arg.GetattrFlags = (uint)FuseGetattrFlags.Fh;
                arg.Fh = file.Fh;
            }
            FuseStatxOut outArg = default;
            var reply = Conn.Send(FuseOpcode.Statx, node.NodeId, c, new FuseArgs(Bytes(in arg)),
                MemoryMarshal.AsBytes(new Span<FuseStatxOut>(ref outArg)), FuseReplyShape.Fixed);
            if (reply.IsOk)
            {
                // fuse_do_statx: a size past the largest file offset or a mode whose type is not a file type
                // or not the node's type marks the node bad (as for GETATTR) rather than reaching the caller.
                var sx = outArg.Stat;
                if (((sx.Mask & StatxSize) != 0 && sx.FileSize > long.MaxValue)
                    || ((sx.Mask & StatxType) != 0
                        && (!ModeBits.IsValidType(sx.Mode) || ((sx.Mode ^ node.Attr.Mode) & ModeBits.TypeMask) != 0)))
                {
                    node.IsStale = true;
                    return Errno.EIO;
                }
                statx = sx;
                if (WritebackCache && node.Pages != null && ModeBits.IsRegular(node.Attr.Mode))
                {
                    // The guest is the authority for size and times of a file it writes back (fuse_get_cache_mask).
                    var local = node.Attr;
                    statx.FileSize = local.FileSize;
                    statx.Mtime = new FuseSxTime { TvSec = (long)local.Mtime, TvNsec = local.MtimeNsec };
                    statx.Ctime = new FuseSxTime { TvSec = (long)local.Ctime, TvNsec = local.CtimeNsec };
                }
                statx.DevMajor = node.Mount.DeviceId >> 8;
                statx.DevMinor = node.Mount.DeviceId & 0xFF;
                return Errno.OK;
            }
            if (reply.Errno != Errno.ENOSYS)
            {
                return reply.Errno;
            }
            NoStatx = true;
        }
        rc = GetAttr(node, out var attr, c, file);
        if (rc != Errno.OK)
        {
            return rc;
        }
        statx = new FuseStatx
        {
            Mask = 0x7FF,
            BlkSize = attr.BlkSize,
            Nlink = attr.Nlink,
            Uid = attr.Uid,
            Gid = attr.Gid,
            Mode = (ushort)attr.Mode,
            Ino = attr.Ino,
            FileSize = attr.FileSize,
            Blocks = attr.Blocks,
            Atime = new FuseSxTime { TvSec = (long)attr.Atime, TvNsec = attr.AtimeNsec },
            Mtime = new FuseSxTime { TvSec = (long)attr.Mtime, TvNsec = attr.MtimeNsec },
            Ctime = new FuseSxTime { TvSec = (long)attr.Ctime, TvNsec = attr.CtimeNsec },
            RdevMajor = (attr.Rdev >> 8) & 0xFFF,
            RdevMinor = (attr.Rdev & 0xFF) | ((attr.Rdev >> 12) & 0xFFF00),
            DevMajor = node.Mount.DeviceId >> 8,
            DevMinor = node.Mount.DeviceId & 0xFF,
        };
        return Errno.OK;
    }

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
        // A truncate holds off write-back of the file's pages until the cache agrees with the new size
        // (fuse_set_nowrite): a page written back after the SETATTR would put cut data back.
        var np = Cache != null && ModeBits.IsRegular(current.Mode) ? node.Pages : null;
        bool sizeChanged = change.Size is ulong requested && requested != current.FileSize;
        bool holdWriteback = np != null && change.Size.HasValue;
        if (holdWriteback)
        {
            Monitor.Enter(np!.WritebackLock);
        }
        try
        {
            FuseAttrOut outArg = default;
            var reply = Conn.Send(FuseOpcode.Setattr, node.NodeId, caller, new FuseArgs(Bytes(in arg)),
                MemoryMarshal.AsBytes(new Span<FuseAttrOut>(ref outArg)), FuseReplyShape.Fixed);
            if (!reply.IsOk)
            {
                node.InvalidateAttr();
                return reply.Errno;
            }
            rc = AcceptAttr(node, outArg, out attr);
            if (rc != Errno.OK || np == null)
            {
                return rc;
            }
            // What the guest changed itself is its own to know, write-back cache or not (fuse_do_setattr).
            node.TakeChangedAttr(outArg.Attr, change.Size.HasValue, (valid & FuseSetattrValid.Mtime) != 0, (valid & FuseSetattrValid.Ctime) != 0);
            if (change.Size is ulong truncatedTo)
            {
                Cache!.TruncateTo(np, (long)truncatedTo);
            }
            attr = node.Attr;
        }
        finally
        {
            if (holdWriteback)
            {
                Monitor.Exit(np!.WritebackLock);
            }
        }
        if (sizeChanged)
        {
            Cache!.Invalidate(np!);
        }
        return Errno.OK;
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
}
