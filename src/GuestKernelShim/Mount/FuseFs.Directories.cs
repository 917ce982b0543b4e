using System.Buffers;
using System.Runtime.InteropServices;
using System.Text;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.GuestKernelShim;

// Creating, removing and renaming names: mkdir, mknod, symlink, link, unlink, rmdir, rename.
public sealed partial class FuseFs
{
    /// <summary>RENAME_NOREPLACE / RENAME_EXCHANGE / RENAME_WHITEOUT.</summary>
    public const uint RenameNoReplace = 1;
    public const uint RenameExchange = 2;
    public const uint RenameWhiteout = 4;

    private static void InvalidateDir(FuseNode dir) => dir.InvalidateAttr();

    // ---------------------------------------------------------------- creating names

    /// <summary>mkdir(2) (fuse_mkdir): MKDIR with the mode (umask applied here unless DONT_MASK).</summary>
    public Errno Mkdir(FuseNode dir, string name, uint mode, out FuseNode? node, FuseCaller? caller = null)
    {
        var c = Who(caller);
        node = null;
        var rc = PrepareCreate(dir, c);
        if (rc != Errno.OK)
        {
            return rc;
        }
        uint perm = CreationPerm(mode, c);
        var arg = new FuseMkdirIn { Mode = perm, Umask = c.Umask };
        return MakeEntry(FuseOpcode.Mkdir, dir, name, Bytes(in arg), default, ModeBits.Directory, c, out node);
    }

    /// <summary>mknod(2): MKNOD for a regular file, fifo, socket or device node.</summary>
    public Errno Mknod(FuseNode dir, string name, uint mode, uint rdev, out FuseNode? node, FuseCaller? caller = null)
    {
        var c = Who(caller);
        node = null;
        uint type = mode & ModeBits.TypeMask;
        if (type == 0)
        {
            type = ModeBits.Regular;
        }
        if (type is ModeBits.Directory or ModeBits.Symlink || !ModeBits.IsValidType(type))
        {
            return Errno.EINVAL;
        }
        if (type is ModeBits.Char or ModeBits.Block && !c.IsRoot)
        {
            return Errno.EPERM;
        }
        var rc = PrepareCreate(dir, c);
        if (rc != Errno.OK)
        {
            return rc;
        }
        uint perm = CreationPerm(mode, c);
        var arg = new FuseMknodIn { Mode = type | perm, Rdev = rdev, Umask = c.Umask };
        return MakeEntry(FuseOpcode.Mknod, dir, name, Bytes(in arg), default, type, c, out node);
    }

    /// <summary>symlink(2): SYMLINK with the name and the target.</summary>
    public Errno Symlink(FuseNode dir, string name, string target, out FuseNode? node, FuseCaller? caller = null)
    {
        var c = Who(caller);
        node = null;
        var rc = PrepareCreate(dir, c);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (target.Length == 0)
        {
            return Errno.ENOENT;
        }
        int targetLength = Encoding.UTF8.GetByteCount(target);
        if (targetLength >= FuseConn.PageSize || target.Contains('\0'))
        {
            return targetLength >= FuseConn.PageSize ? Errno.ENAMETOOLONG : Errno.EINVAL;
        }
        var targetBytes = new byte[targetLength + 1];
        Encoding.UTF8.GetBytes(target, targetBytes);
        return MakeEntry(FuseOpcode.Symlink, dir, name, default, targetBytes, ModeBits.Symlink, c, out node);
    }

    /// <summary>link(2): LINK of <paramref name="node"/> as <paramref name="newName"/> in <paramref name="newDir"/>.</summary>
    public Errno Link(FuseNode node, FuseNode newDir, string newName, out FuseNode? linked, FuseCaller? caller = null)
    {
        var c = Who(caller);
        linked = null;
        var rc = CheckLive(node);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (node.IsDirectory)
        {
            return Errno.EPERM;
        }
        if (!ReferenceEquals(node.Mount, newDir.IsSubmountPoint ? ChildMountOf(newDir) : newDir.Mount))
        {
            return Errno.EXDEV;
        }
        rc = PrepareCreate(newDir, c);
        if (rc != Errno.OK)
        {
            return rc;
        }
        var arg = new FuseLinkIn { OldNodeId = node.NodeId };
        rc = MakeEntry(FuseOpcode.Link, newDir, newName, Bytes(in arg), default, node.Attr.Mode & ModeBits.TypeMask, c, out linked);
        if (rc == Errno.OK)
        {
            node.InvalidateAttr();
        }
        return rc;
    }

    /// <summary>create_new_entry: sends the request (fixed argument, name, optional trailing argument), checks the
    /// entry (type as expected), instantiates the node (+1 lookup) and caches the name.</summary>
    private Errno MakeEntry(FuseOpcode opcode, FuseNode dir, string name, ReadOnlySpan<byte> arg, ReadOnlySpan<byte> trailing, uint expectedType,
        in FuseCaller caller, out FuseNode? node)
    {
        node = null;
        Span<byte> nameBuffer = stackalloc byte[NameBufferSize];
        int nameLength = EncodeName(name, nameBuffer);
        if (nameLength < 0)
        {
            return (Errno)(-nameLength);
        }
        if (name is "." or "..")
        {
            return Errno.EEXIST;
        }
        FuseEntryOut entry = default;
        var replySpan = MemoryMarshal.AsBytes(new Span<FuseEntryOut>(ref entry));
        FuseReply reply;
        if (arg.IsEmpty)
        {
            reply = Conn.Send(opcode, dir.NodeId, caller, new FuseArgs(nameBuffer[..nameLength], trailing), replySpan, FuseReplyShape.Fixed);
        }
        else
        {
            reply = Conn.Send(opcode, dir.NodeId, caller, new FuseArgs(arg, nameBuffer[..nameLength]), replySpan, FuseReplyShape.Fixed);
        }
        if (!reply.IsOk)
        {
            if (reply.Errno == Errno.EEXIST)
            {
                DropDentry(dir, name);
            }
            return reply.Errno;
        }
        if (entry.NodeId == 0)
        {
            return Errno.EIO;
        }
        var rc = ValidateEntry(entry, expectedType);
        if (rc != Errno.OK)
        {
            return rc;
        }
        node = Instantiate(entry, dir);
        SetDentry(dir, name, node, entry.EntryValid, entry.EntryValidNsec);
        InvalidateDir(dir);
        return Errno.OK;
    }

    /// <summary>readlink(2): READLINK into a page (cached on the node with CACHE_SYMLINKS).</summary>
    public Errno ReadLink(FuseNode node, out string target, FuseCaller? caller = null)
    {
        var c = Who(caller);
        target = "";
        var rc = CheckLiveAndAllowed(node, c);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (!node.IsSymlink)
        {
            return Errno.EINVAL;
        }
        bool cache = Conn.Has(FuseInitFlags.CacheSymlinks);
        if (cache && node.CachedLink is string cached)
        {
            target = cached;
            return Errno.OK;
        }
        Span<byte> buffer = stackalloc byte[FuseConn.PageSize - 1];
        var reply = Conn.Send(FuseOpcode.Readlink, node.NodeId, c, buffer, FuseReplyShape.Variable);
        if (!reply.IsOk)
        {
            return reply.Errno;
        }
        var bytes = buffer[..reply.Length];
        int nul = bytes.IndexOf((byte)0);
        if (nul >= 0)
        {
            bytes = bytes[..nul];
        }
        target = Encoding.UTF8.GetString(bytes);
        if (cache)
        {
            node.CachedLink = target;
        }
        return Errno.OK;
    }

    // ---------------------------------------------------------------- removing and renaming names

    /// <summary>unlink(2): the victim is looked up first (as the VFS does), then UNLINK. The name leaves the
    /// cache; a node whose last link went and that is not open is evicted (FORGET).</summary>
    public Errno Unlink(FuseNode dir, string name, FuseCaller? caller = null)
        => Remove(dir, name, directory: false, Who(caller));

    /// <summary>rmdir(2): as <see cref="Unlink"/> for an empty directory (RMDIR).</summary>
    public Errno Rmdir(FuseNode dir, string name, FuseCaller? caller = null)
        => Remove(dir, name, directory: true, Who(caller));

    private Errno Remove(FuseNode dir, string name, bool directory, in FuseCaller caller)
    {
        var rc = PrepareCreate(dir, caller);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (name == ".")
        {
            return directory ? Errno.EINVAL : Errno.EISDIR;
        }
        if (name == "..")
        {
            return directory ? Errno.ENOTEMPTY : Errno.EISDIR;
        }
        rc = LookupCore(dir, name, caller, out var victim);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (directory && !victim!.IsDirectory)
        {
            return Errno.ENOTDIR;
        }
        if (!directory && victim!.IsDirectory)
        {
            return Errno.EISDIR;
        }
        if (victim!.ChildMount != null)
        {
            return Errno.EBUSY;
        }
        if (Options.DefaultPermissions)
        {
            rc = RefreshAttr(victim, caller, out var victimAttr);
            if (rc == Errno.OK)
            {
                rc = Permissions.CheckSticky(dir.Attr, victimAttr, caller);
            }
            if (rc != Errno.OK)
            {
                return rc;
            }
        }
        Span<byte> nameBuffer = stackalloc byte[NameBufferSize];
        int nameLength = EncodeName(name, nameBuffer);
        if (nameLength < 0)
        {
            return (Errno)(-nameLength);
        }
        var reply = Conn.Send(directory ? FuseOpcode.Rmdir : FuseOpcode.Unlink, dir.NodeId, caller, new FuseArgs(nameBuffer[..nameLength]),
            Span<byte>.Empty, FuseReplyShape.Fixed);
        if (reply.IsOk || reply.Errno == Errno.ENOENT)
        {
            DropDentry(dir, name);
        }
        if (!reply.IsOk)
        {
            return reply.Errno;
        }
        InvalidateDir(dir);
        DropLink(victim, directory);
        return Errno.OK;
    }

    /// <summary>rename(2) / renameat2(2): RENAME, or RENAME2 when flags are given (EINVAL after the daemon
    /// answered ENOSYS, as Linux's no_rename2). The VFS checks come first: both names looked up, NOREPLACE
    /// over an existing name is EEXIST, sticky directories, a directory moved to another parent needs write
    /// permission on itself, and file/directory type mismatches.</summary>
    public Errno Rename(FuseNode oldDir, string oldName, FuseNode newDir, string newName, uint flags = 0, FuseCaller? caller = null)
    {
        var c = Who(caller);
        if ((flags & ~(RenameNoReplace | RenameExchange | RenameWhiteout)) != 0
            || ((flags & RenameNoReplace) != 0 && (flags & RenameExchange) != 0))
        {
            return Errno.EINVAL;
        }
        if (flags != 0 && (NoRename2 || Conn.Minor < 23))
        {
            return Errno.EINVAL;
        }
        var rc = PrepareCreate(oldDir, c);
        if (rc == Errno.OK)
        {
            rc = PrepareCreate(newDir, c);
        }
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (oldName is "." or ".." || newName is "." or "..")
        {
            return Errno.EBUSY;
        }
        rc = LookupCore(oldDir, oldName, c, out var source);
        if (rc != Errno.OK)
        {
            return rc;
        }
        var targetRc = LookupCore(newDir, newName, c, out var target);
        if (targetRc != Errno.OK && targetRc != Errno.ENOENT)
        {
            return targetRc;
        }
        if (target != null && (flags & RenameNoReplace) != 0)
        {
            return Errno.EEXIST;
        }
        if (target == null && (flags & RenameExchange) != 0)
        {
            return Errno.ENOENT;
        }
        if (ReferenceEquals(source, target))
        {
            return Errno.OK;
        }
        if (!ReferenceEquals(source!.Mount, newDir.IsSubmountPoint ? ChildMountOf(newDir) : newDir.Mount) || source.ChildMount != null || target?.ChildMount != null)
        {
            return source.ChildMount != null || target?.ChildMount != null ? Errno.EBUSY : Errno.EXDEV;
        }
        if (target != null && (flags & RenameExchange) == 0)
        {
            if (source.IsDirectory && !target.IsDirectory)
            {
                return Errno.ENOTDIR;
            }
            if (!source.IsDirectory && target.IsDirectory)
            {
                return Errno.EISDIR;
            }
        }
        if (source.IsDirectory && IsAncestor(source, newDir))
        {
            return Errno.EINVAL;
        }
        if (Options.DefaultPermissions)
        {
            rc = CheckSticky(oldDir, source, c);
            if (rc == Errno.OK && target != null)
            {
                rc = CheckSticky(newDir, target, c);
            }
            if (rc == Errno.OK && !ReferenceEquals(oldDir, newDir))
            {
                if (source.IsDirectory)
                {
                    rc = CheckPermission(source, ModeBits.MayWrite, c);
                }
                if (rc == Errno.OK && target != null && target.IsDirectory && (flags & RenameExchange) != 0)
                {
                    rc = CheckPermission(target, ModeBits.MayWrite, c);
                }
            }
            if (rc != Errno.OK)
            {
                return rc;
            }
        }
        Span<byte> oldBuffer = stackalloc byte[NameBufferSize];
        Span<byte> newBuffer = stackalloc byte[NameBufferSize];
        int oldLength = EncodeName(oldName, oldBuffer);
        int newLength = EncodeName(newName, newBuffer);
        if (oldLength < 0 || newLength < 0)
        {
            return (Errno)(-Math.Min(oldLength, newLength));
        }
        FuseReply reply;
        if (flags == 0)
        {
            var arg = new FuseRenameIn { NewDir = newDir.NodeId };
            reply = Conn.Send(FuseOpcode.Rename, oldDir.NodeId, c, new FuseArgs(Bytes(in arg), oldBuffer[..oldLength], newBuffer[..newLength]),
                Span<byte>.Empty, FuseReplyShape.Fixed);
        }
        else
        {
            var arg = new FuseRename2In { NewDir = newDir.NodeId, Flags = flags };
            reply = Conn.Send(FuseOpcode.Rename2, oldDir.NodeId, c, new FuseArgs(Bytes(in arg), oldBuffer[..oldLength], newBuffer[..newLength]),
                Span<byte>.Empty, FuseReplyShape.Fixed);
            if (reply.Errno == Errno.ENOSYS)
            {
                NoRename2 = true;
                return Errno.EINVAL;
            }
        }
        if (!reply.IsOk)
        {
            return reply.Errno;
        }
        DropDentry(oldDir, oldName);
        DropDentry(newDir, newName);
        InvalidateDir(oldDir);
        InvalidateDir(newDir);
        source.InvalidateAttr();
        lock (source.Sync)
        {
            source.Parent = newDir;
        }
        if (target != null)
        {
            if ((flags & RenameExchange) != 0)
            {
                lock (target.Sync)
                {
                    target.Parent = oldDir;
                }
                target.InvalidateAttr();
            }
            else
            {
                DropLink(target, target.IsDirectory);
            }
        }
        return Errno.OK;
    }

    private Errno CheckSticky(FuseNode dir, FuseNode victim, in FuseCaller caller)
    {
        var rc = RefreshAttr(victim, caller, out var victimAttr);
        if (rc != Errno.OK)
        {
            return rc;
        }
        rc = RefreshAttr(dir, caller, out var dirAttr);
        if (rc != Errno.OK)
        {
            return rc;
        }
        return Permissions.CheckSticky(dirAttr, victimAttr, caller);
    }

    private static bool IsAncestor(FuseNode ancestor, FuseNode node)
    {
        var current = node;
        for (int depth = 0; depth < 4096 && current != null; depth++)
        {
            if (ReferenceEquals(current, ancestor))
            {
                return true;
            }
            var parent = current.Parent;
            if (parent == null || ReferenceEquals(parent, current))
            {
                return false;
            }
            current = parent;
        }
        return false;
    }
}
