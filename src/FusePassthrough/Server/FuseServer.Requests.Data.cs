using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.FusePassthrough;

// Decoding of the requests on open files and directories, extended attributes and locks (see
// FuseServer.Requests.cs for the rules every decoder follows).
public partial class FuseServer<TFs>
{
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
