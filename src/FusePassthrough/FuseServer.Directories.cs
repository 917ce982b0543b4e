using Vhostfsd.FusePassthrough.Passthrough;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.FusePassthrough;

// Directory handles and listing.
public sealed unsafe partial class FuseServer
{
    private const int DirentBufferSize = 32768;

    [ThreadStatic]
    private static byte[]? t_dirents;

    private int DoOpendir(in FuseInHeader h, ref RequestReader r, ref ReplyWriter w)
    {
        if (!r.TryRead(out FuseOpenIn _))
        {
            return Malformed();
        }
        if (w.Available < FuseOpenOut.Size)
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
            if (!node.IsDirectory)
            {
                return -(int)Errno.ENOTDIR;
            }
            if (!_budget.TryTake())
            {
                return -(int)Errno.ENFILE;
            }
            int flags = Libc.O_RDONLY | Libc.O_DIRECTORY | Libc.O_NONBLOCK;
            int fd = Reopen(node, flags);
            if (fd < 0)
            {
                _budget.Return();
                return fd;
            }
            Handle handle = _handles.Add(node, fd, flags, flags, isDirectory: true);
            var reply = new FuseOpenOut { Fh = handle.Id, OpenFlags = FileOpenOutFlags(directory: true) };
            w.TryWrite(in reply);
            return 0;
        }
        finally
        {
            _nodes.Release(node);
        }
    }

    /// <summary>READDIR / READDIRPLUS. Every call seeks the host directory to the guest's offset,
    /// which is the d_off cookie of the last entry it received: host file systems keep those
    /// cookies valid while the directory changes, so a listing resumes exactly after the last entry
    /// delivered, without repeating or skipping any that stayed. An entry that does not fit is not
    /// consumed (and, for READDIRPLUS, not looked up).</summary>
    private int DoReaddir(in FuseInHeader h, ref RequestReader r, ref ReplyWriter w, bool plus)
    {
        if (!r.TryRead(out FuseReadIn a))
        {
            return Malformed();
        }
        if (a.Offset > long.MaxValue)
        {
            return EINVAL;
        }
        Handle? handle = _handles.Acquire(a.Fh, h.NodeId);
        if (handle is null)
        {
            return EBADF;
        }
        try
        {
            if (!handle.IsDirectory)
            {
                return -(int)Errno.ENOTDIR;
            }
            int budget = Math.Min(Math.Min((int)Math.Min(a.Length, (uint)MaxWrite), w.Available), MaxWrite);
            byte[] buffer = t_dirents ??= GC.AllocateArray<byte>(DirentBufferSize, pinned: true);
            int readSize = Math.Clamp(plus ? budget / 4 : budget, 1024, DirentBufferSize);
            Node parent = handle.Node;
            int temporary = -1;
            try
            {
                lock (handle.DirectoryLock)
                {
                    if (Libc.Lseek(handle.Fd, (long)a.Offset, Libc.SEEK_SET) < 0)
                    {
                        return Libc.NegErrno;
                    }
                    int parentFd = plus ? PathFd(parent, ref temporary) : -1;
                    if (plus && parentFd < 0)
                    {
                        return parentFd;
                    }
                    int written = 0;
                    bool full = false;
                    while (!full)
                    {
                        nint n;
                        fixed (byte* p = buffer)
                        {
                            n = Libc.Getdents64(handle.Fd, p, (nuint)readSize);
                        }
                        if (n < 0)
                        {
                            if (Libc.LastErrno == Errno.EINTR)
                            {
                                continue;
                            }
                            if (written > 0)
                            {
                                break;
                            }
                            return Libc.NegErrno;
                        }
                        if (n == 0)
                        {
                            break;
                        }
                        int pos = 0;
                        while (pos < n)
                        {
                            ulong ino = BitConverter.ToUInt64(buffer, pos);
                            long off = BitConverter.ToInt64(buffer, pos + 8);
                            int recordLength = BitConverter.ToUInt16(buffer, pos + 16);
                            byte type = buffer[pos + 18];
                            if (recordLength < Libc.Dirent64NameOffset + 1 || pos + recordLength > n)
                            {
                                return EIO;
                            }
                            ReadOnlySpan<byte> rawName = buffer.AsSpan(pos + Libc.Dirent64NameOffset, recordLength - Libc.Dirent64NameOffset);
                            int nameLength = rawName.IndexOf((byte)0);
                            if (nameLength < 0)
                            {
                                nameLength = rawName.Length;
                            }
                            ReadOnlySpan<byte> name = rawName[..nameLength];
                            int size = plus ? FuseConstants.DirentplusSize(nameLength) : FuseConstants.DirentSize(nameLength);
                            if (written + size > budget)
                            {
                                full = true;
                                break;
                            }
                            if (plus)
                            {
                                FuseEntryOut entry = default;
                                if (!IsDot(name) && !IsDotDot(name))
                                {
                                    int rc;
                                    fixed (byte* namePtr = rawName)
                                    {
                                        rc = LookupChild(parent, parentFd, namePtr, out entry);
                                    }
                                    if (rc == -(int)Errno.ENOENT)
                                    {
                                        // Removed since getdents64 saw it: leave it out.
                                        pos += recordLength;
                                        continue;
                                    }
                                    if (rc < 0)
                                    {
                                        // Listed without attributes (node id 0): the guest looks it up itself.
                                        entry = default;
                                    }
                                }
                                w.TryWrite(in entry);
                            }
                            var dirent = new FuseDirent { Ino = ino, Off = (ulong)off, NameLen = (uint)nameLength, Type = type };
                            w.TryWrite(in dirent);
                            w.TryWrite(name);
                            int header = plus ? FuseConstants.NameOffsetDirentplus : FuseConstants.NameOffset;
                            w.TryWriteZeros(size - header - nameLength);
                            written += size;
                            pos += recordLength;
                        }
                    }
                    return 0;
                }
            }
            finally
            {
                CloseTemporary(temporary);
            }
        }
        finally
        {
            _handles.Release(handle);
        }
    }
}
