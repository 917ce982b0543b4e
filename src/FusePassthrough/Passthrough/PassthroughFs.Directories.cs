using Vhostfsd.FusePassthrough.Passthrough;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.FusePassthrough;

// Directory handles and listing.
public sealed unsafe partial class PassthroughFs
{
    private const int DirentBufferSize = 32768;

    [ThreadStatic]
    private static byte[]? t_dirents;

    public int Opendir(in RequestContext context, ulong nodeId, in FuseOpenIn a, out FuseOpenOut open)
    {
        open = default;
        Node? node = _nodes.Acquire(nodeId);
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
            open = new FuseOpenOut { Fh = handle.Id, OpenFlags = FileOpenOutFlags(directory: true) };
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
    public int Readdir(scoped in RequestContext context, ulong nodeId, in FuseReadIn a, ref DirentWriter entries)
    {
        bool plus = entries.Plus;
        Handle? handle = _handles.Acquire(a.Fh, nodeId);
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
            byte[] buffer = t_dirents ??= GC.AllocateArray<byte>(DirentBufferSize, pinned: true);
            // READDIRPLUS looks every entry up, so it reads fewer names at a time.
            int readSize = Math.Clamp(plus ? (int)Math.Min(a.Length, int.MaxValue) / 4 : (int)Math.Min(a.Length, int.MaxValue), 1024, DirentBufferSize);
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
                            if (entries.Written > 0)
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
                            if (!entries.Fits(nameLength))
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
                                entries.TryAddPlus(in entry, ino, (ulong)off, type, name);
                            }
                            else
                            {
                                entries.TryAdd(ino, (ulong)off, type, name);
                            }
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
