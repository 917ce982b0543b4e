using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

using Vhostfsd.FusePassthrough.Passthrough;

namespace Vhostfsd.FusePassthrough;

/// <summary>The passthrough file system: executes FUSE operations against one host directory with
/// *at() system calls relative to O_PATH fds (or file handles) of the inodes the guest knows. Holds the
/// node table, the open handles, the per-request credentials and the lock owners. Driven by
/// <see cref="FuseServer"/> through <see cref="PassthroughCalls"/>; thread-safe.
/// <para>No process-wide state is changed: the threads that create files get their own umask (0,
/// so that files get exactly the mode the guest asks for) and working directory the first time.</para></summary>
public sealed unsafe partial class PassthroughFs : IDisposable
{
    private const uint NameMax = 255;
    private const int PathMax = 4096;
    private const int EBADF = -(int)Errno.EBADF;
    private const int EIO = -(int)Errno.EIO;
    private const int EINVAL = -(int)Errno.EINVAL;

    private readonly PassthroughOptions _options;
    private readonly Action<string>? _log;
    private readonly FdBudget _budget;
    private readonly NodeTable _nodes;
    private readonly HandleTable _handles;
    private readonly XattrMap? _xattrMap;
    private readonly int _procSelfFd;
    private readonly bool _useOpenat2;
    private readonly bool _hasXattrAt;
    private readonly bool _privileged;
    private readonly ulong _entryValidSec;
    private readonly uint _entryValidNsec;
    private readonly ulong _attrValidSec;
    private readonly uint _attrValidNsec;
    private readonly bool _fileHandles;
    private readonly Dictionary<ulong, int> _mountFds = new();
    private readonly object _mountLock = new();
    private readonly InterruptSet _interrupts = new();

    private volatile bool _disposed;
    private FuseInitFlags _negotiated;

    /// <summary>Opens the shared directory and the /proc/self/fd directory; throws
    /// <see cref="PosixException"/> or ArgumentException when either is unusable.</summary>
    public PassthroughFs(PassthroughOptions options, Action<string>? log = null)
    {
        options.Validate();
        _options = options;
        _log = log;
        _xattrMap = options.XattrMap is null ? null : XattrMap.Parse(options.XattrMap);
        _budget = new FdBudget(FdBudget.ResolveLimit(options.MaxGuestFds));
        _nodes = new NodeTable(_budget, options.EffectiveMaxHandleOnlyNodes);
        _handles = new HandleTable(_budget, _nodes);
        _privileged = Libc.GetEuid() == 0;
        (_entryValidSec, _entryValidNsec) = SplitTimeout(options.EffectiveEntryTimeout);
        (_attrValidSec, _attrValidNsec) = SplitTimeout(options.EffectiveAttrTimeout);

        _procSelfFd = options.ProcSelfFdDir is int procFd
            ? PosixException.Check(Libc.Fcntl(procFd, Libc.F_DUPFD_CLOEXEC, 0), "dup /proc/self/fd")
            : OpenDirectory("/proc/self/fd", Libc.O_PATH | Libc.O_DIRECTORY | Libc.O_CLOEXEC);
        int rootFd;
        try
        {
            rootFd = OpenDirectory(options.SharedDir, Libc.O_PATH | Libc.O_DIRECTORY | Libc.O_CLOEXEC);
        }
        catch
        {
            Libc.Close(_procSelfFd);
            throw;
        }
        Statx st;
        byte empty = 0;
        if (Libc.StatxAt(rootFd, &empty, Libc.AT_EMPTY_PATH | Libc.AT_SYMLINK_NOFOLLOW, StatxMask, &st) < 0)
        {
            var errno = Libc.LastErrno;
            Libc.Close(rootFd);
            Libc.Close(_procSelfFd);
            throw new PosixException("statx " + options.SharedDir, errno);
        }
        _nodes.SetRoot(rootFd, KeyOf(in st));
        _useOpenat2 = ProbeOpenat2(rootFd);
        _hasXattrAt = !options.AvoidXattrAt && ProbeXattrAt(rootFd);
        _fileHandles = options.InodeFileHandles != InodeFileHandles.Never && ProbeFileHandles(rootFd, options.InodeFileHandles);
    }

    /// <summary>The options this file system runs with.</summary>
    public PassthroughOptions Options => _options;

    /// <summary>Nodes the guest holds (root included).</summary>
    public int NodeCount => _nodes.Count;

    /// <summary>Open file and directory handles.</summary>
    public int HandleCount => _handles.Count;

    /// <summary>Guest-held fds in use and the limit (ENFILE beyond it).</summary>
    public (int Used, int Limit) FdUsage => (_budget.Used, _budget.Limit);

    /// <summary>True when openat2 (RESOLVE_BENEATH) is used for name resolution.</summary>
    public bool UsesOpenat2 => _useOpenat2;

    /// <summary>True when xattrs go through the *xattrat calls (Linux 6.13+), false when xattrs of
    /// symlinks and special files (and security labels) take the path calls through the
    /// /proc/self/fd directory.</summary>
    public bool UsesXattrAt => _hasXattrAt;

    /// <summary>True when nodes are held as file handles (prefer/mandatory and supported).</summary>
    public bool UsesFileHandles => _fileHandles;

    public bool IsReadOnly => _options.ReadOnly;

    /// <summary>INIT: the flags the options call for. POSIX ACLs and security labels cannot be served
    /// to a guest without the flags they need (EPROTO, as virtiofsd).</summary>
    public int Init(FuseInitFlags offered, out FuseInitFlags wanted)
    {
        wanted = FuseInitFlags.Submounts;
        if (_options.ReaddirplusEnabled)
        {
            wanted |= FuseInitFlags.DoReaddirplus | FuseInitFlags.ReaddirplusAuto;
        }
        if (_options.Writeback && !_options.ReadOnly)
        {
            wanted |= FuseInitFlags.WritebackCache;
        }
        if (_options.KillprivV2)
        {
            wanted |= FuseInitFlags.HandleKillprivV2;
        }
        if (_options.AllowMmap)
        {
            wanted |= FuseInitFlags.DirectIoAllowMmap;
        }
        if (_options.PosixLocks)
        {
            wanted |= FuseInitFlags.PosixLocks;
        }
        if (_options.FlockLocks)
        {
            wanted |= FuseInitFlags.FlockLocks;
        }
        if (_options.PosixAcl)
        {
            const FuseInitFlags acl = FuseInitFlags.PosixAcl | FuseInitFlags.DontMask | FuseInitFlags.SetxattrExt;
            if ((offered & acl) != acl)
            {
                _log?.Invoke("INIT: POSIX ACLs are enabled but the guest lacks POSIX_ACL/DONT_MASK/SETXATTR_EXT; refusing (EPROTO)");
                return -(int)Errno.EPROTO;
            }
            wanted |= acl;
        }
        if (_options.SecurityLabel)
        {
            if ((offered & FuseInitFlags.SecurityCtx) == 0)
            {
                _log?.Invoke("INIT: security labels are enabled but the guest lacks SECURITY_CTX; refusing (EPROTO)");
                return -(int)Errno.EPROTO;
            }
            wanted |= FuseInitFlags.SecurityCtx;
        }
        return 0;
    }

    public void Negotiated(FuseInitFlags granted) => _negotiated = granted;

    /// <summary>Drops every node (except the root) and every handle: what DESTROY, a device reset or a
    /// disconnect needs; lock waits end.</summary>
    public void Destroy()
    {
        _interrupts.CancelAll();
        _handles.Clear();
        _nodes.Clear();
        _negotiated = FuseInitFlags.None;
    }

    public void Forget(ulong node, ulong lookups) => _nodes.Forget(node, lookups);

    public void Interrupt(ulong unique) => _interrupts.Add(unique);

    public void Dispose()
    {
        if (_disposed)
        {
            return;
        }
        _disposed = true;
        Destroy();
        _nodes.CloseRoot();
        lock (_mountLock)
        {
            foreach (int fd in _mountFds.Values)
            {
                Libc.Close(fd);
            }
            _mountFds.Clear();
        }
        Libc.Close(_procSelfFd);
    }


    private const uint StatxMask = Libc.STATX_BASIC_STATS | Libc.STATX_MNT_ID;

    private static InodeKey KeyOf(in Statx st) => new(st.Dev, st.Ino, (st.Mask & Libc.STATX_MNT_ID) != 0 ? st.MntId : 0);

    private static (ulong, uint) SplitTimeout(TimeSpan t)
    {
        long ticks = Math.Max(0, t.Ticks);
        return ((ulong)(ticks / TimeSpan.TicksPerSecond), (uint)(ticks % TimeSpan.TicksPerSecond * 100));
    }

    /// <summary>glibc's dev_t of the kernel's 32-bit device number.</summary>
    private static ulong DecodeDev(uint dev)
    {
        var (major, minor) = FuseConstants.DecodeDev(dev);
        return Libc.MakeDev(major, minor);
    }

    private static FuseAttr ToAttr(in Statx st, uint flags)
    {
        return new FuseAttr
        {
            Ino = st.Ino,
            FileSize = st.FileSize,
            Blocks = st.Blocks,
            Atime = (ulong)st.Atime.Sec,
            Mtime = (ulong)st.Mtime.Sec,
            Ctime = (ulong)st.Ctime.Sec,
            AtimeNsec = st.Atime.Nsec,
            MtimeNsec = st.Mtime.Nsec,
            CtimeNsec = st.Ctime.Nsec,
            Mode = st.Mode,
            Nlink = st.Nlink,
            Uid = st.Uid,
            Gid = st.Gid,
            Rdev = FuseConstants.EncodeDev(st.RdevMajor, st.RdevMinor),
            BlkSize = st.BlkSize,
            Flags = flags,
        };
    }

    private FuseEntryOut ToEntry(ulong nodeId, in Statx st, uint attrFlags) => new()
    {
        NodeId = nodeId,
        Generation = 0,
        EntryValid = _entryValidSec,
        EntryValidNsec = _entryValidNsec,
        AttrValid = _attrValidSec,
        AttrValidNsec = _attrValidNsec,
        Attr = ToAttr(in st, attrFlags),
    };

    private FuseAttrOut ToAttrOut(in Statx st) => new()
    {
        AttrValid = _attrValidSec,
        AttrValidNsec = _attrValidNsec,
        Attr = ToAttr(in st, 0),
    };

    /// <summary>Writes "N\0" (the fd number) into <paramref name="buffer"/> for *at(procSelfFd, ...).</summary>
    private static void FormatFd(int fd, Span<byte> buffer)
    {
        fd.TryFormat(buffer, out int n);
        buffer[n] = 0;
    }

    private static int OpenDirectory(string path, int flags)
    {
        byte[] bytes = System.Text.Encoding.UTF8.GetBytes(path + "\0");
        fixed (byte* p = bytes)
        {
            int fd = Libc.OpenAt(Libc.AT_FDCWD, p, flags, 0);
            if (fd < 0)
            {
                PosixException.ThrowLast("open " + path);
            }
            return fd;
        }
    }

    private static bool ProbeOpenat2(int rootFd)
    {
        var how = new OpenHow { Flags = (ulong)(Libc.O_PATH | Libc.O_CLOEXEC | Libc.O_DIRECTORY), Resolve = Libc.RESOLVE_BENEATH };
        byte* dot = stackalloc byte[2];
        dot[0] = (byte)'.';
        dot[1] = 0;
        int fd = Libc.OpenAt2(rootFd, dot, &how);
        if (fd < 0)
        {
            return false;
        }
        Libc.Close(fd);
        return true;
    }

    /// <summary>The *xattrat calls (Linux 6.13) reach any file type through its O_PATH fd, without /proc.</summary>
    private static bool ProbeXattrAt(int rootFd)
    {
        byte empty = 0;
        return Libc.ListxattrAt(rootFd, &empty, Libc.AT_EMPTY_PATH, null, 0) >= 0 || Libc.LastErrno != Errno.ENOSYS;
    }

    private bool ProbeFileHandles(int rootFd, InodeFileHandles mode)
    {
        byte* buffer = stackalloc byte[FileHandleHeader.Size + MaxHandleBytes];
        var fh = (FileHandleHeader*)buffer;
        fh->HandleBytes = MaxHandleBytes;
        int mountId;
        byte empty = 0;
        // open_by_handle_at wants a real (not O_PATH) fd on the mount.
        byte* dot = stackalloc byte[2];
        dot[0] = (byte)'.';
        dot[1] = 0;
        int mountFd = Libc.OpenAt(rootFd, dot, Libc.O_RDONLY | Libc.O_DIRECTORY | Libc.O_CLOEXEC, 0);
        if (mountFd >= 0 && Libc.NameToHandleAt(rootFd, &empty, fh, &mountId, Libc.AT_EMPTY_PATH) == 0)
        {
            int fd = Libc.OpenByHandleAt(mountFd, fh, Libc.O_PATH | Libc.O_CLOEXEC);
            if (fd >= 0)
            {
                Libc.Close(fd);
                Libc.Close(mountFd);
                return true;
            }
        }
        var errno = Libc.LastErrno;
        if (mountFd >= 0)
        {
            Libc.Close(mountFd);
        }
        if (mode == InodeFileHandles.Mandatory)
        {
            throw new PosixException("inode file handles (mandatory) are unusable here: open_by_handle_at needs CAP_DAC_READ_SEARCH and file-handle support", errno);
        }
        _log?.Invoke("inode file handles unavailable (" + errno + "); holding O_PATH fds instead");
        return false;
    }

    internal const int MaxHandleBytes = 128;
}
