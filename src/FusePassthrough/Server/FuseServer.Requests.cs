using System.Buffers.Binary;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.FusePassthrough;

// Decoding of each opcode's arguments, the call into the file system, and the encoding of its reply.
// Every length is checked here, against the request and against the room the reply has, before the
// file system runs: it never sees a truncated argument or a name without its NUL, and its reply
// always fits.
public partial class FuseServer<TFs>
{
    private const uint NameMax = 255;
    private const int PathMax = 4096;

    /// <summary>Room for the names and extensions of one request: two names of NAME_MAX, a symlink
    /// target of PATH_MAX, a security context and a supplementary group list.</summary>
    private const int ArgumentScratchSize = 16384;

    /// <summary>Most supplementary groups accepted from the CREATE_SUPP_GROUP extension (the kernel sends one).</summary>
    private const int MaxExtensionGroups = 64;

    private const int XattrScratchSize = Libc.XATTR_SIZE_MAX + 512;

    private const int EIO = -(int)Errno.EIO;

    [ThreadStatic]
    private static byte[]? t_arguments;

    [ThreadStatic]
    private static byte[]? t_xattr;

    private static byte[] ArgumentScratch => t_arguments ??= GC.AllocateArray<byte>(ArgumentScratchSize, pinned: true);

    private static byte[] XattrScratch => t_xattr ??= GC.AllocateArray<byte>(XattrScratchSize, pinned: true);

    /// <summary>The NUL-terminated names of a request (each span includes its NUL).</summary>
    private ref struct NameArgs
    {
        public ReadOnlySpan<byte> First;
        public ReadOnlySpan<byte> Second;
        /// <summary>Bytes after the names: old-style (7.36/7.37) security contexts, else empty.</summary>
        public ReadOnlySpan<byte> Trailing;
        /// <summary>Extension bytes (fuse_ext_header records) at the end of the request.</summary>
        public ReadOnlySpan<byte> Extensions;
    }

    /// <summary>Extensions of a creating request.</summary>
    private ref struct RequestExtensions
    {
        public int GroupCount;
        public ReadOnlySpan<byte> Groups;
        public ReadOnlySpan<byte> SecurityName;
        public ReadOnlySpan<byte> SecurityValue;
    }

    private static RequestContext Context(scoped in FuseInHeader h) => new(in h, default, 0);

    // ---- names and extensions ----

    /// <summary>Reads the rest of the request (after the fixed arguments): <paramref name="count"/>
    /// NUL-terminated names followed by any extensions, into <paramref name="buffer"/>. Returns 0 or -errno.</summary>
    private int ReadNames(scoped in FuseInHeader h, scoped ref RequestReader r, Span<byte> buffer, int count, bool validate, out NameArgs names)
    {
        names = default;
        int extensionBytes = h.TotalExtLen * 8;
        int total = r.Remaining;
        if (extensionBytes > total || total > buffer.Length)
        {
            Interlocked.Increment(ref Stats._malformed);
            return total > buffer.Length ? -(int)Errno.ENAMETOOLONG : -(int)Errno.EINVAL;
        }
        Span<byte> all = buffer[..total];
        r.TryCopy(all);
        ReadOnlySpan<byte> args = all[..(total - extensionBytes)];
        names.Extensions = all[(total - extensionBytes)..];
        for (int i = 0; i < count; i++)
        {
            int nul = args.IndexOf((byte)0);
            if (nul < 0)
            {
                return Malformed();
            }
            if (i == 0)
            {
                names.First = args[..(nul + 1)];
            }
            else
            {
                names.Second = args[..(nul + 1)];
            }
            args = args[(nul + 1)..];
        }
        if (args.Length > 0)
        {
            if ((_negotiated & FuseInitFlags.SecurityCtx) != 0 && extensionBytes == 0)
            {
                names.Trailing = args;
            }
            else
            {
                return Malformed();
            }
        }
        if (validate)
        {
            int rc = ValidateName(names.First);
            if (rc == 0 && count > 1)
            {
                rc = ValidateName(names.Second);
            }
            return rc;
        }
        return 0;
    }

    /// <summary>A single path component from the guest: not empty, at most NAME_MAX bytes, no '/',
    /// and not "." or ".." (only LOOKUP gives those a meaning). <paramref name="nameZ"/> includes the NUL.</summary>
    private static int ValidateName(ReadOnlySpan<byte> nameZ)
    {
        ReadOnlySpan<byte> name = nameZ[..^1];
        if (name.Length == 0)
        {
            return -(int)Errno.ENOENT;
        }
        if (name.Length > NameMax)
        {
            return -(int)Errno.ENAMETOOLONG;
        }
        if (name.IndexOf((byte)'/') >= 0)
        {
            return -(int)Errno.EINVAL;
        }
        if (name.SequenceEqual("."u8) || name.SequenceEqual(".."u8))
        {
            return -(int)Errno.EINVAL;
        }
        return 0;
    }

    /// <summary>Parses the extensions of a creating request (fuse_ext_header records, or the
    /// old-style trailing security context). Returns 0 or -EINVAL.</summary>
    private int ParseExtensions(scoped in NameArgs names, out RequestExtensions ext)
    {
        ext = default;
        ReadOnlySpan<byte> area = names.Extensions.Length > 0 ? names.Extensions : names.Trailing;
        while (area.Length > 0)
        {
            if (area.Length < FuseExtHeader.Size)
            {
                return Malformed();
            }
            uint size = BinaryPrimitives.ReadUInt32LittleEndian(area);
            uint type = BinaryPrimitives.ReadUInt32LittleEndian(area[4..]);
            if (size < FuseExtHeader.Size || size > (uint)area.Length)
            {
                return Malformed();
            }
            ReadOnlySpan<byte> body = area[FuseExtHeader.Size..(int)size];
            if (type <= (uint)FuseExtType.MaxNrSecctx)
            {
                if (type > 0 && (_negotiated & FuseInitFlags.SecurityCtx) != 0)
                {
                    // fuse_secctx, then the NUL-terminated context name, then the label.
                    if (body.Length < FuseSecctx.Size)
                    {
                        return Malformed();
                    }
                    uint labelSize = BinaryPrimitives.ReadUInt32LittleEndian(body);
                    ReadOnlySpan<byte> rest = body[FuseSecctx.Size..];
                    int nul = rest.IndexOf((byte)0);
                    if (nul <= 0 || nul > NameMax || labelSize == 0 || labelSize > (uint)(rest.Length - nul - 1))
                    {
                        return Malformed();
                    }
                    ext.SecurityName = rest[..(nul + 1)];
                    ext.SecurityValue = rest.Slice(nul + 1, (int)labelSize);
                }
            }
            else if (type == (uint)FuseExtType.Groups)
            {
                if (body.Length < FuseSuppGroups.Size)
                {
                    return Malformed();
                }
                uint count = BinaryPrimitives.ReadUInt32LittleEndian(body);
                if (count > MaxExtensionGroups || FuseSuppGroups.Size + count * 4 > (uint)body.Length)
                {
                    return Malformed();
                }
                ext.GroupCount = (int)count;
                ext.Groups = body.Slice(FuseSuppGroups.Size, (int)count * 4);
            }
            // Unknown extension types are only sent when negotiated; skip them.
            area = area[(int)size..];
        }
        return 0;
    }

    // ---- entries ----

    private int DoLookup(in FuseInHeader h, ref RequestReader r, ref ReplyWriter w)
    {
        if (w.Available < FuseEntryOut.Size)
        {
            return EIO;
        }
        int rc = ReadNames(in h, ref r, ArgumentScratch, 1, validate: false, out NameArgs names);
        if (rc < 0)
        {
            return rc;
        }
        // "." and ".." are LOOKUP's to answer (the file system decides what they mean at its root).
        ReadOnlySpan<byte> name = names.First[..^1];
        if (name.Length == 0)
        {
            return -(int)Errno.ENOENT;
        }
        if (name.Length > NameMax)
        {
            return -(int)Errno.ENAMETOOLONG;
        }
        if (name.IndexOf((byte)'/') >= 0)
        {
            return -(int)Errno.EINVAL;
        }
        rc = _fs.Lookup(Context(in h), h.NodeId, names.First, out FuseEntryOut entry);
        return rc < 0 ? rc : Reply(ref w, in entry);
    }

    private int DoGetattr(in FuseInHeader h, ref RequestReader r, ref ReplyWriter w)
    {
        if (!r.TryRead(out FuseGetattrIn _))
        {
            return Malformed();
        }
        if (w.Available < FuseAttrOut.Size)
        {
            return EIO;
        }
        int rc = _fs.Getattr(Context(in h), h.NodeId, out FuseAttrOut attr);
        return rc < 0 ? rc : Reply(ref w, in attr);
    }

    private int DoSetattr(in FuseInHeader h, ref RequestReader r, ref ReplyWriter w)
    {
        if (!r.TryRead(out FuseSetattrIn a))
        {
            return Malformed();
        }
        if (w.Available < FuseAttrOut.Size)
        {
            return EIO;
        }
        int rc = _fs.Setattr(Context(in h), h.NodeId, in a, out FuseAttrOut attr);
        return rc < 0 ? rc : Reply(ref w, in attr);
    }

    private int DoReadlink(in FuseInHeader h, ref ReplyWriter w)
    {
        Span<byte> target = ArgumentScratch.AsSpan(0, PathMax);
        int rc = _fs.Readlink(Context(in h), h.NodeId, target, out int length);
        if (rc < 0)
        {
            return rc;
        }
        return w.TryWrite(target[..Math.Clamp(length, 0, PathMax)]) ? 0 : EIO;
    }

    private int DoSymlink(in FuseInHeader h, ref RequestReader r, ref ReplyWriter w)
    {
        if (w.Available < FuseEntryOut.Size)
        {
            return EIO;
        }
        int rc = ReadNames(in h, ref r, ArgumentScratch, 2, validate: false, out NameArgs names);
        if (rc < 0 || (rc = ValidateName(names.First)) < 0)
        {
            return rc;
        }
        if (names.Second.Length <= 1)
        {
            return -(int)Errno.ENOENT;
        }
        if (names.Second.Length > PathMax)
        {
            return -(int)Errno.ENAMETOOLONG;
        }
        if ((rc = ParseExtensions(in names, out RequestExtensions ext)) < 0)
        {
            return rc;
        }
        var context = new RequestContext(in h, ext.Groups, ext.GroupCount);
        rc = _fs.Symlink(context, h.NodeId, names.First, names.Second, new SecurityLabel(ext.SecurityName, ext.SecurityValue), out FuseEntryOut entry);
        return rc < 0 ? rc : Reply(ref w, in entry);
    }

    private int DoMknod(in FuseInHeader h, ref RequestReader r, ref ReplyWriter w)
    {
        if (!r.TryRead(out FuseMknodIn m))
        {
            return Malformed();
        }
        if (w.Available < FuseEntryOut.Size)
        {
            return EIO;
        }
        int rc = ReadNames(in h, ref r, ArgumentScratch, 1, validate: true, out NameArgs names);
        if (rc < 0 || (rc = ParseExtensions(in names, out RequestExtensions ext)) < 0)
        {
            return rc;
        }
        var context = new RequestContext(in h, ext.Groups, ext.GroupCount);
        rc = _fs.Mknod(context, h.NodeId, names.First, in m, new SecurityLabel(ext.SecurityName, ext.SecurityValue), out FuseEntryOut entry);
        return rc < 0 ? rc : Reply(ref w, in entry);
    }

    private int DoMkdir(in FuseInHeader h, ref RequestReader r, ref ReplyWriter w)
    {
        if (!r.TryRead(out FuseMkdirIn m))
        {
            return Malformed();
        }
        if (w.Available < FuseEntryOut.Size)
        {
            return EIO;
        }
        int rc = ReadNames(in h, ref r, ArgumentScratch, 1, validate: true, out NameArgs names);
        if (rc < 0 || (rc = ParseExtensions(in names, out RequestExtensions ext)) < 0)
        {
            return rc;
        }
        var context = new RequestContext(in h, ext.Groups, ext.GroupCount);
        rc = _fs.Mkdir(context, h.NodeId, names.First, in m, new SecurityLabel(ext.SecurityName, ext.SecurityValue), out FuseEntryOut entry);
        return rc < 0 ? rc : Reply(ref w, in entry);
    }

    private int DoUnlink(in FuseInHeader h, ref RequestReader r, bool directory)
    {
        int rc = ReadNames(in h, ref r, ArgumentScratch, 1, validate: true, out NameArgs names);
        if (rc < 0)
        {
            return rc;
        }
        return directory ? _fs.Rmdir(Context(in h), h.NodeId, names.First) : _fs.Unlink(Context(in h), h.NodeId, names.First);
    }

    private int DoRename(in FuseInHeader h, ref RequestReader r, bool extended)
    {
        ulong newDir;
        uint flags = 0;
        if (extended)
        {
            if (!r.TryRead(out FuseRename2In a))
            {
                return Malformed();
            }
            newDir = a.NewDir;
            flags = a.Flags;
        }
        else
        {
            if (!r.TryRead(out FuseRenameIn a))
            {
                return Malformed();
            }
            newDir = a.NewDir;
        }
        int rc = ReadNames(in h, ref r, ArgumentScratch, 2, validate: true, out NameArgs names);
        if (rc < 0)
        {
            return rc;
        }
        return _fs.Rename(Context(in h), h.NodeId, names.First, newDir, names.Second, flags);
    }

    private int DoLink(in FuseInHeader h, ref RequestReader r, ref ReplyWriter w)
    {
        if (!r.TryRead(out FuseLinkIn a))
        {
            return Malformed();
        }
        if (w.Available < FuseEntryOut.Size)
        {
            return EIO;
        }
        int rc = ReadNames(in h, ref r, ArgumentScratch, 1, validate: true, out NameArgs names);
        if (rc < 0)
        {
            return rc;
        }
        // FUSE_LINK: the header's node is the new parent, the argument the existing inode.
        rc = _fs.Link(Context(in h), a.OldNodeId, h.NodeId, names.First, out FuseEntryOut entry);
        return rc < 0 ? rc : Reply(ref w, in entry);
    }

    private int DoStatfs(in FuseInHeader h, ref ReplyWriter w)
    {
        if (w.Available < FuseStatfsOut.Size)
        {
            return EIO;
        }
        int rc = _fs.Statfs(Context(in h), h.NodeId, out FuseStatfsOut statfs);
        return rc < 0 ? rc : Reply(ref w, in statfs);
    }

    private int DoStatx(in FuseInHeader h, ref RequestReader r, ref ReplyWriter w)
    {
        if (!r.TryRead(out FuseStatxIn a))
        {
            return Malformed();
        }
        if (w.Available < FuseStatxOut.Size)
        {
            return EIO;
        }
        int rc = _fs.Statx(Context(in h), h.NodeId, in a, out FuseStatxOut statx);
        return rc < 0 ? rc : Reply(ref w, in statx);
    }

    private int DoAccess(in FuseInHeader h, ref RequestReader r)
    {
        if (!r.TryRead(out FuseAccessIn a))
        {
            return Malformed();
        }
        return _fs.Access(Context(in h), h.NodeId, a.Mask);
    }

    // ---- files and directories ----

    private int DoOpen(in FuseInHeader h, ref RequestReader r, ref ReplyWriter w, bool directory)
    {
        if (!r.TryRead(out FuseOpenIn a))
        {
            return Malformed();
        }
        if (w.Available < FuseOpenOut.Size)
        {
            return EIO;
        }
        FuseOpenOut open;
        int rc = directory ? _fs.Opendir(Context(in h), h.NodeId, in a, out open) : _fs.Open(Context(in h), h.NodeId, in a, out open);
        return rc < 0 ? rc : Reply(ref w, in open);
    }

    private int DoCreate(in FuseInHeader h, ref RequestReader r, ref ReplyWriter w, bool tmpfile)
    {
        if (!r.TryRead(out FuseCreateIn a))
        {
            return Malformed();
        }
        if (w.Available < FuseEntryOut.Size + FuseOpenOut.Size)
        {
            return EIO;
        }
        int rc = ReadNames(in h, ref r, ArgumentScratch, 1, validate: !tmpfile, out NameArgs names);
        if (rc < 0 || (rc = ParseExtensions(in names, out RequestExtensions ext)) < 0)
        {
            return rc;
        }
        var context = new RequestContext(in h, ext.Groups, ext.GroupCount);
        rc = _fs.Create(context, h.NodeId, names.First, in a, new SecurityLabel(ext.SecurityName, ext.SecurityValue), tmpfile,
            out FuseEntryOut entry, out FuseOpenOut open);
        if (rc < 0)
        {
            return rc;
        }
        w.TryWrite(in entry);
        w.TryWrite(in open);
        return 0;
    }

    private int DoRead(in FuseInHeader h, ref RequestReader r, ref ReplyWriter w)
    {
        if (!r.TryRead(out FuseReadIn a))
        {
            return Malformed();
        }
        if (a.Length > MaxWrite || a.Offset > long.MaxValue)
        {
            return -(int)Errno.EINVAL;
        }
        return _fs.Read(Context(in h), h.NodeId, in a, ref w);
    }

    private int DoWrite(in FuseInHeader h, ref RequestReader r, ref ReplyWriter w)
    {
        if (!r.TryRead(out FuseWriteIn a))
        {
            return Malformed();
        }
        if (a.Length != (uint)r.Remaining || a.Length > MaxWrite || a.Offset > long.MaxValue)
        {
            return Malformed();
        }
        if (w.Available < FuseWriteOut.Size)
        {
            return EIO;
        }
        int rc = _fs.Write(Context(in h), h.NodeId, in a, ref r, out uint written);
        if (rc < 0)
        {
            return rc;
        }
        var reply = new FuseWriteOut { Length = written };
        return Reply(ref w, in reply);
    }

    private int DoFlush(in FuseInHeader h, ref RequestReader r)
    {
        if (!r.TryRead(out FuseFlushIn a))
        {
            return Malformed();
        }
        return _fs.Flush(Context(in h), h.NodeId, in a);
    }

    private int DoRelease(in FuseInHeader h, ref RequestReader r, bool directory)
    {
        if (!r.TryRead(out FuseReleaseIn a))
        {
            return Malformed();
        }
        return _fs.Release(Context(in h), h.NodeId, in a, directory);
    }

    private int DoFsync(in FuseInHeader h, ref RequestReader r, bool directory)
    {
        if (!r.TryRead(out FuseFsyncIn a))
        {
            return Malformed();
        }
        return _fs.Fsync(Context(in h), h.NodeId, in a, directory);
    }

    private int DoReaddir(in FuseInHeader h, ref RequestReader r, ref ReplyWriter w, bool plus)
    {
        if (!r.TryRead(out FuseReadIn a))
        {
            return Malformed();
        }
        if (a.Offset > long.MaxValue)
        {
            return -(int)Errno.EINVAL;
        }
        int budget = (int)Math.Min(a.Length, (uint)MaxWrite);
        var entries = new DirentWriter(w, budget, plus);
        int rc = _fs.Readdir(Context(in h), h.NodeId, in a, ref entries);
        if (rc < 0)
        {
            return rc;
        }
        w = entries.Writer;
        return 0;
    }

    private int DoFallocate(in FuseInHeader h, ref RequestReader r)
    {
        if (!r.TryRead(out FuseFallocateIn a))
        {
            return Malformed();
        }
        if (a.Offset > long.MaxValue || a.Length > long.MaxValue)
        {
            return -(int)Errno.EINVAL;
        }
        return _fs.Fallocate(Context(in h), h.NodeId, in a);
    }

    private int DoLseek(in FuseInHeader h, ref RequestReader r, ref ReplyWriter w)
    {
        if (!r.TryRead(out FuseLseekIn a))
        {
            return Malformed();
        }
        if (w.Available < FuseLseekOut.Size)
        {
            return EIO;
        }
        if (a.Offset > long.MaxValue)
        {
            return -(int)Errno.EINVAL;
        }
        int rc = _fs.Lseek(Context(in h), h.NodeId, in a, out ulong offset);
        if (rc < 0)
        {
            return rc;
        }
        var reply = new FuseLseekOut { Offset = offset };
        return Reply(ref w, in reply);
    }

    private int DoCopyFileRange(in FuseInHeader h, ref RequestReader r, ref ReplyWriter w)
    {
        if (!r.TryRead(out FuseCopyFileRangeIn a))
        {
            return Malformed();
        }
        if (w.Available < FuseWriteOut.Size)
        {
            return EIO;
        }
        if (a.OffIn > long.MaxValue || a.OffOut > long.MaxValue)
        {
            return -(int)Errno.EINVAL;
        }
        int rc = _fs.CopyFileRange(Context(in h), h.NodeId, in a, out uint copied);
        if (rc < 0)
        {
            return rc;
        }
        var reply = new FuseWriteOut { Length = copied };
        return Reply(ref w, in reply);
    }

    private int DoSyncfs(in FuseInHeader h, ref RequestReader r)
    {
        if (!r.TryRead(out FuseSyncfsIn _))
        {
            return Malformed();
        }
        return _fs.Syncfs(Context(in h), h.NodeId);
    }

    // ---- extended attributes ----

    /// <summary>Reads an attribute name (NUL-terminated, at most XATTR_NAME_MAX) that fills the rest of
    /// the request into <paramref name="buffer"/>; returns its length without the NUL, or -errno.</summary>
    private int ReadXattrName(ref RequestReader r, scoped Span<byte> buffer)
    {
        int total = r.Remaining;
        if (total > buffer.Length)
        {
            return -(int)Errno.ERANGE;
        }
        r.TryCopy(buffer[..total]);
        if (total == 0 || buffer[total - 1] != 0 || buffer[..(total - 1)].IndexOf((byte)0) >= 0)
        {
            return Malformed();
        }
        return total - 1;
    }

    private int DoSetxattr(in FuseInHeader h, ref RequestReader r)
    {
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
        return _fs.Setxattr(Context(in h), h.NodeId, scratch.AsSpan(0, nameLength), scratch.AsSpan(nameLength + 1, (int)a.Length), a.Flags, a.SetxattrFlags);
    }

    private int DoGetxattr(in FuseInHeader h, ref RequestReader r, ref ReplyWriter w, bool list)
    {
        if (!r.TryRead(out FuseGetxattrIn a))
        {
            return Malformed();
        }
        Span<byte> name = stackalloc byte[Libc.XATTR_NAME_MAX + 2];
        int nameLength = 0;
        if (!list)
        {
            nameLength = ReadXattrName(ref r, name);
            if (nameLength < 0)
            {
                return nameLength;
            }
        }
        int needed = a.Length == 0 ? FuseGetxattrOut.Size : (int)Math.Min(a.Length, (uint)Libc.XATTR_SIZE_MAX);
        if (w.Available < Math.Min(needed, FuseGetxattrOut.Size))
        {
            return EIO;
        }
        Span<byte> value = XattrScratch.AsSpan(0, Libc.XATTR_SIZE_MAX);
        int length;
        int rc = list
            ? _fs.Listxattr(Context(in h), h.NodeId, value, out length)
            : _fs.Getxattr(Context(in h), h.NodeId, name[..nameLength], value, out length);
        if (rc < 0)
        {
            return rc;
        }
        length = Math.Clamp(length, 0, value.Length);
        if (a.Length == 0)
        {
            var size = new FuseGetxattrOut { Length = (uint)length };
            return Reply(ref w, in size);
        }
        if (length > a.Length)
        {
            return -(int)Errno.ERANGE;
        }
        return w.TryWrite(value[..length]) ? 0 : -(int)Errno.ERANGE;
    }

    private int DoRemovexattr(in FuseInHeader h, ref RequestReader r)
    {
        Span<byte> name = stackalloc byte[Libc.XATTR_NAME_MAX + 2];
        int nameLength = ReadXattrName(ref r, name);
        if (nameLength < 0)
        {
            return nameLength;
        }
        return _fs.Removexattr(Context(in h), h.NodeId, name[..nameLength]);
    }

    // ---- locks ----

    private int DoGetlk(in FuseInHeader h, ref RequestReader r, ref ReplyWriter w)
    {
        if (!r.TryRead(out FuseLkIn a))
        {
            return Malformed();
        }
        if (w.Available < FuseLkOut.Size)
        {
            return EIO;
        }
        if ((_negotiated & FuseInitFlags.PosixLocks) == 0)
        {
            return -(int)Errno.ENOSYS;
        }
        int rc = _fs.Getlk(Context(in h), h.NodeId, in a, out FuseFileLock conflict);
        if (rc < 0)
        {
            return rc;
        }
        var reply = new FuseLkOut { Lk = conflict };
        return Reply(ref w, in reply);
    }

    private int DoSetlk(in FuseInHeader h, ref RequestReader r, bool wait)
    {
        if (!r.TryRead(out FuseLkIn a))
        {
            return Malformed();
        }
        bool flock = ((FuseLkFlags)a.LkFlags & FuseLkFlags.Flock) != 0;
        if ((_negotiated & (flock ? FuseInitFlags.FlockLocks : FuseInitFlags.PosixLocks)) == 0)
        {
            return -(int)Errno.ENOSYS;
        }
        return _fs.Setlk(Context(in h), h.NodeId, in a, wait);
    }

    private static int Reply<T>(ref ReplyWriter w, in T value) where T : unmanaged => w.TryWrite(in value) ? 0 : EIO;
}
