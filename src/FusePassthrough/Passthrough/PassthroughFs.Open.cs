using System.Buffers;
using Vhostfsd.FusePassthrough.Passthrough;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.FusePassthrough;

// Opening files: open, create, tmpfile — the open flags the host gets, and labels on new files.
public sealed unsafe partial class PassthroughFs
{
    /// <summary>Open flags passed on to the host; the rest (O_CREAT, O_EXCL, O_NOCTTY, O_PATH,
    /// O_TMPFILE, O_NOFOLLOW, O_DIRECTORY, FASYNC, O_CLOEXEC from the guest) are its own business.</summary>
    private const int PassedOpenFlags = Libc.O_ACCMODE | Libc.O_TRUNC | Libc.O_APPEND | Libc.O_DIRECT | Libc.O_NOATIME
        | Libc.O_SYNC | Libc.O_DSYNC | Libc.O_NONBLOCK | Libc.O_LARGEFILE;

    private bool Writeback => (_negotiated & FuseInitFlags.WritebackCache) != 0;

    /// <summary>The host open flags for a guest OPEN/CREATE, or -errno.</summary>
    private int HostOpenFlags(uint guestFlags)
    {
        int flags = (int)guestFlags & PassedOpenFlags;
        if ((flags & Libc.O_ACCMODE) == Libc.O_ACCMODE)
        {
            return EINVAL;
        }
        // Appends go through RWF_APPEND per write (or are the guest's job with writeback), so that a
        // mmap'd file or an fcntl(F_SETFL) in the guest cannot leave the host fd in the wrong mode.
        flags &= ~Libc.O_APPEND;
        if (Writeback && (flags & Libc.O_ACCMODE) == Libc.O_WRONLY)
        {
            // The guest page cache may read pages of a file opened write-only.
            flags = (flags & ~Libc.O_ACCMODE) | Libc.O_RDWR;
        }
        if (!_options.AllowDirectIo)
        {
            flags &= ~Libc.O_DIRECT;
        }
        if (!_options.PreserveNoatime)
        {
            flags &= ~Libc.O_NOATIME;
        }
        if (_options.ReadOnly && ((flags & Libc.O_ACCMODE) != Libc.O_RDONLY || (flags & Libc.O_TRUNC) != 0))
        {
            return -(int)Errno.EROFS;
        }
        return flags | Libc.O_CLOEXEC;
    }

    /// <summary>Direct-I/O files also get PARALLEL_DIRECT_WRITES: the client kernel otherwise holds the
    /// file's inode lock exclusively for each direct WRITE's round trip, so writers of one file wait
    /// for each other's replies (16 writers of 1 MiB ran no faster than one). Each WRITE is a pwritev
    /// at its own offset here; the kernel still serializes appends and writes past the end.</summary>
    private uint FileOpenOutFlags(bool directory)
    {
        const FuseOpenOutFlags directFile = FuseOpenOutFlags.DirectIo | FuseOpenOutFlags.ParallelDirectWrites;
        FuseOpenOutFlags f = _options.Cache switch
        {
            CachePolicy.Never => directory ? FuseOpenOutFlags.None : directFile,
            CachePolicy.Metadata => directory ? FuseOpenOutFlags.CacheDir | FuseOpenOutFlags.KeepCache : directFile,
            CachePolicy.Always => directory ? FuseOpenOutFlags.KeepCache | FuseOpenOutFlags.CacheDir : FuseOpenOutFlags.KeepCache,
            _ => FuseOpenOutFlags.None,
        };
        return (uint)f;
    }

    public int Open(in RequestContext context, ulong nodeId, in FuseOpenIn a, out FuseOpenOut open)
    {
        open = default;
        int flags = HostOpenFlags(a.Flags);
        if (flags < 0)
        {
            return flags;
        }
        Node? node = _nodes.Acquire(nodeId);
        if (node is null)
        {
            return EBADF;
        }
        try
        {
            if (node.IsDirectory)
            {
                return -(int)Errno.EISDIR;
            }
            if (node.IsSymlink)
            {
                return -(int)Errno.ELOOP;
            }
            if (!node.IsRegular)
            {
                // Device nodes and FIFOs are opened by the guest kernel itself, never through us:
                // opening a host device the guest created would hand it the host's device.
                return -(int)Errno.EACCES;
            }
            if (!_budget.TryTake())
            {
                return -(int)Errno.ENFILE;
            }
            bool fsetidDropped = (flags & Libc.O_TRUNC) != 0 && KillsPrivileges(a.OpenFlags) && DropFsetid();
            int fd = Reopen(node, flags);
            RestoreFsetid(fsetidDropped);
            if (fd < 0)
            {
                _budget.Return();
                return fd;
            }
            Handle handle = _handles.Add(node, fd, flags, (int)a.Flags, isDirectory: false);
            open = new FuseOpenOut { Fh = handle.Id, OpenFlags = FileOpenOutFlags(directory: false) };
            return 0;
        }
        finally
        {
            _nodes.Release(node);
        }
    }

    /// <summary>OPEN/CREATE's FUSE_OPEN_KILL_SUIDGID, when HANDLE_KILLPRIV_V2 was agreed.</summary>
    private bool KillsPrivileges(uint openFlags) =>
        (openFlags & (uint)FuseOpenInFlags.KillSuidgid) != 0 && (_negotiated & FuseInitFlags.HandleKillprivV2) != 0;

    public int Create(in RequestContext context, ulong parentId, ReadOnlySpan<byte> nameZ, in FuseCreateIn a, in SecurityLabel label, bool tmpfile,
        out FuseEntryOut entry, out FuseOpenOut open)
    {
        entry = default;
        open = default;
        int rc;
        ReadOnlySpan<byte> labelName = default;
        if (label.IsPresent && (rc = MapSecurityContextName(label.Name[..^1], out labelName)) < 0)
        {
            return rc;
        }
        int flags = HostOpenFlags(a.Flags);
        if (flags < 0)
        {
            return flags;
        }
        if (tmpfile)
        {
            if ((flags & Libc.O_ACCMODE) == Libc.O_RDONLY)
            {
                return EINVAL;
            }
            flags = (flags & ~Libc.O_TRUNC) | Libc.O_TMPFILE;
        }
        else
        {
            flags |= Libc.O_CREAT | ((int)a.Flags & Libc.O_EXCL) | Libc.O_NOFOLLOW;
        }
        Node? parent = _nodes.Acquire(parentId);
        if (parent is null)
        {
            return EBADF;
        }
        int temporary = -1;
        int fd = -1;
        bool fdBudgeted = false;
        bool created = true;
        try
        {
            if (!parent.IsDirectory)
            {
                return -(int)Errno.ENOTDIR;
            }
            int parentFd = PathFd(parent, ref temporary);
            if (parentFd < 0)
            {
                return parentFd;
            }
            if (!_budget.TryTake())
            {
                return -(int)Errno.ENFILE;
            }
            fdBudgeted = true;
            uint mode = EffectiveMode(parentFd, a.Mode & 0xFFF, a.Umask);
            rc = EnterCredentials(in context, out CredentialState saved);
            if (rc < 0)
            {
                return rc;
            }
            // O_TRUNC of an existing file: the guest's caller may not keep its setuid bits.
            bool fsetidDropped = (flags & Libc.O_TRUNC) != 0 && KillsPrivileges(a.OpenFlags) && DropFsetid();
            try
            {
                fixed (byte* name = nameZ)
                {
                    byte* dot = stackalloc byte[2];
                    dot[0] = (byte)'.';
                    dot[1] = 0;
                    if (tmpfile || (flags & Libc.O_EXCL) != 0)
                    {
                        fd = OpenBelow(parentFd, tmpfile ? dot : name, flags, mode);
                    }
                    else
                    {
                        fd = CreateOrOpenRegular(parentFd, name, flags, mode, out created);
                    }
                }
            }
            finally
            {
                RestoreFsetid(fsetidDropped);
                LeaveCredentials(in saved);
            }
            if (fd < 0)
            {
                return fd;
            }
            // The label is the new file's, like virtiofsd's fscreate: an existing file keeps its own,
            // and a failure must not remove a file this request did not create.
            if (label.IsPresent && created)
            {
                if (!tmpfile)
                {
                    AfterCreateBeforeLabel?.Invoke(System.Text.Encoding.UTF8.GetString(nameZ[..^1]));
                }
                // Through the open fd, never by name: the name may already point to an entry a host
                // user renamed in after the creation (see LabelCreatedEntry).
                rc = SetLabelOnFd(fd, labelName, label.Value);
                if (rc < 0)
                {
                    if (!tmpfile)
                    {
                        RemoveCreatedFile(parentFd, nameZ, fd);
                    }
                    return rc;
                }
            }
            // The node comes from the opened file itself (not from the name, which may already
            // point elsewhere): an O_PATH twin through the magic link.
            if (!_budget.TryTake())
            {
                return -(int)Errno.ENFILE;
            }
            byte* fdName = stackalloc byte[16];
            FormatFd(fd, new Span<byte>(fdName, 16));
            int pathFd = Libc.OpenAt(_procSelfFd, fdName, Libc.O_PATH | Libc.O_CLOEXEC, 0);
            if (pathFd < 0)
            {
                _budget.Return();
                return Libc.NegErrno;
            }
            rc = InsertFromFdKeep(parent, pathFd, out entry, out Node node);
            if (rc < 0)
            {
                return rc;
            }
            Handle handle = _handles.Add(node, fd, flags & ~(Libc.O_CREAT | Libc.O_EXCL | Libc.O_TMPFILE | Libc.O_NOFOLLOW), (int)a.Flags, isDirectory: false);
            _nodes.Release(node);
            fd = -1;
            fdBudgeted = false;
            open = new FuseOpenOut { Fh = handle.Id, OpenFlags = FileOpenOutFlags(directory: false) };
            return 0;
        }
        finally
        {
            if (fd >= 0)
            {
                Libc.Close(fd);
            }
            if (fdBudgeted)
            {
                _budget.Return();
            }
            CloseTemporary(temporary);
            _nodes.Release(parent);
        }
    }

    /// <summary>CREATE without O_EXCL: creates the file, or opens the one already there — but only a
    /// regular file. A plain open(O_CREAT) of an existing name would open whatever is there: a FIFO
    /// (the worker then blocks until a reader comes, found by the FUSE fuzzer) or a device node the
    /// guest made with MKNOD (handing it the host's device, which OPEN refuses). So: try O_EXCL
    /// first; on EEXIST pin the existing inode with an O_PATH fd, check its type, and reopen that
    /// inode through /proc/self/fd, so no rename in between can swap another file in.
    /// <paramref name="created"/> says whether the file is new. Returns fd or -errno.</summary>
    private int CreateOrOpenRegular(int parentFd, byte* name, int flags, uint mode, out bool created)
    {
        created = false;
        for (int attempt = 0; attempt < 8; attempt++)
        {
            int fd = OpenBelow(parentFd, name, flags | Libc.O_EXCL, mode);
            if (fd != -(int)Errno.EEXIST)
            {
                created = fd >= 0;
                return fd;
            }
            int pathFd = OpenBelow(parentFd, name, Libc.O_PATH | Libc.O_NOFOLLOW | Libc.O_CLOEXEC, 0);
            if (pathFd == -(int)Errno.ENOENT)
            {
                continue; // removed in between: try to create it again
            }
            if (pathFd < 0)
            {
                return pathFd;
            }
            try
            {
                Statx st;
                byte empty = 0;
                if (Libc.StatxAt(pathFd, &empty, Libc.AT_EMPTY_PATH, Libc.STATX_TYPE, &st) < 0)
                {
                    return Libc.NegErrno;
                }
                switch (st.Mode & Libc.S_IFMT)
                {
                    case Libc.S_IFREG:
                        break;
                    case Libc.S_IFDIR:
                        return -(int)Errno.EISDIR;
                    case Libc.S_IFLNK:
                        return -(int)Errno.ELOOP;
                    default:
                        return -(int)Errno.EACCES;
                }
                return ReopenPathFd(pathFd, flags);
            }
            finally
            {
                Libc.Close(pathFd);
            }
        }
        return -(int)Errno.EAGAIN;
    }

    /// <summary>Opens (creating) a name below <paramref name="parentFd"/>, confined like
    /// <see cref="OpenPathBelow"/>. Returns fd or -errno.</summary>
    private int OpenBelow(int parentFd, byte* name, int flags, uint mode)
    {
        int fd;
        if (_useOpenat2)
        {
            var how = new OpenHow
            {
                Flags = (ulong)(uint)flags,
                Mode = (flags & (Libc.O_CREAT | Libc.O_TMPFILE)) != 0 ? mode : 0,
                Resolve = Libc.RESOLVE_BENEATH | Libc.RESOLVE_NO_SYMLINKS | Libc.RESOLVE_NO_MAGICLINKS,
            };
            fd = Libc.OpenAt2(parentFd, name, &how);
        }
        else
        {
            fd = Libc.OpenAt(parentFd, name, flags, mode);
        }
        return fd < 0 ? Libc.NegErrno : fd;
    }

    /// <summary>Removes the file CREATE made (open as <paramref name="fd"/>) after its label failed,
    /// if <paramref name="nameZ"/> still names it.</summary>
    private static void RemoveCreatedFile(int parentFd, ReadOnlySpan<byte> nameZ, int fd)
    {
        Statx st;
        byte empty = 0;
        if (Libc.StatxAt(fd, &empty, Libc.AT_EMPTY_PATH, Libc.STATX_TYPE | Libc.STATX_INO, &st) == 0)
        {
            fixed (byte* name = nameZ)
            {
                RemoveIfSame(parentFd, name, in st);
            }
        }
    }

    private static int SetLabelOnFd(int fd, ReadOnlySpan<byte> labelName, ReadOnlySpan<byte> labelValue)
    {
        fixed (byte* xname = labelName)
        fixed (byte* value = labelValue)
        {
            return Libc.Fsetxattr(fd, xname, value, (nuint)labelValue.Length, 0) < 0 ? Libc.NegErrno : 0;
        }
    }

    /// <summary><see cref="InsertFromFd"/> that also hands the caller a reference to the node.</summary>
    private int InsertFromFdKeep(Node parent, int fd, out FuseEntryOut entry, out Node node)
    {
        int rc = InsertFromFd(parent, fd, out entry);
        node = null!;
        if (rc < 0)
        {
            return rc;
        }
        Node? found = _nodes.Acquire(entry.NodeId);
        if (found is null)
        {
            // Forgotten in between by a hostile FORGET: the reply would name a dead node.
            return -(int)Errno.ESTALE;
        }
        node = found;
        return 0;
    }
}
