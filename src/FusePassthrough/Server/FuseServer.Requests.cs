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
}
