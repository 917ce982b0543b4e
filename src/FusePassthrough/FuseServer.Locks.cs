using Vhostfsd.FusePassthrough.Passthrough;
using Vhostfsd.FusePassthrough.Protocol;
using Vhostfsd.FusePassthrough.Server;
using Vhostfsd.Posix;

namespace Vhostfsd.FusePassthrough;

// POSIX record locks (as OFD locks, one open file description per guest lock owner) and flock.
public sealed unsafe partial class FuseServer
{
    /// <summary>OFFSET_MAX: a lock end meaning "to the end of the file".</summary>
    private const ulong LockOffsetMax = long.MaxValue;

    private const int LockPollFirstMs = 1;
    private const int LockPollMaxMs = 50;

    /// <summary>The open file description of <paramref name="owner"/> on the inode of
    /// <paramref name="handle"/>, opened on first use (read-write when possible, so that one
    /// description serves all of the owner's handles). Returns fd, -1 when absent and not created, or -errno.</summary>
    private int LockOwnerFd(Handle handle, ulong owner, bool create)
    {
        Node node = handle.Node;
        lock (node.OwnersLock)
        {
            if (node.LockOwnerFds is not null && node.LockOwnerFds.TryGetValue(owner, out int existing))
            {
                return existing;
            }
            if (!create)
            {
                return -1;
            }
            if (!_budget.TryTake())
            {
                return -(int)Errno.ENFILE;
            }
            byte* fdName = stackalloc byte[16];
            FormatFd(handle.Fd, new Span<byte>(fdName, 16));
            int fd = Libc.OpenAt(_procSelfFd, fdName, Libc.O_RDWR | Libc.O_CLOEXEC | Libc.O_NONBLOCK, 0);
            if (fd < 0)
            {
                fd = Libc.OpenAt(_procSelfFd, fdName, (handle.OpenFlags & Libc.O_ACCMODE) | Libc.O_CLOEXEC | Libc.O_NONBLOCK, 0);
            }
            if (fd < 0)
            {
                _budget.Return();
                return Libc.NegErrno;
            }
            (node.LockOwnerFds ??= new Dictionary<ulong, int>()).Add(owner, fd);
            return fd;
        }
    }

    /// <summary>POSIX: a read lock needs a handle open for reading, a write lock one open for writing.</summary>
    private static bool AccessAllows(Handle handle, short type)
    {
        int mode = handle.OpenFlags & Libc.O_ACCMODE;
        return type switch
        {
            Libc.F_RDLCK => mode != Libc.O_WRONLY,
            Libc.F_WRLCK => mode != Libc.O_RDONLY,
            _ => true,
        };
    }

    private static int ToFileLock(in FuseFileLock lk, out FileLock fl)
    {
        fl = default;
        if (lk.Type is not (uint)Libc.F_RDLCK and not (uint)Libc.F_WRLCK and not (uint)Libc.F_UNLCK)
        {
            return -(int)Errno.EINVAL;
        }
        if (lk.Start > LockOffsetMax || lk.End < lk.Start)
        {
            return -(int)Errno.EINVAL;
        }
        fl.Type = (short)lk.Type;
        fl.Whence = Libc.SEEK_SET;
        fl.Start = (long)lk.Start;
        fl.Length = lk.End >= LockOffsetMax ? 0 : (long)(lk.End - lk.Start + 1);
        return 0;
    }

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
        int rc = ToFileLock(in a.Lk, out FileLock fl);
        if (rc < 0)
        {
            return rc;
        }
        Handle? handle = _handles.Acquire(a.Fh, h.NodeId);
        if (handle is null)
        {
            return EBADF;
        }
        try
        {
            int fd = LockOwnerFd(handle, a.Owner, create: true);
            if (fd < 0)
            {
                return fd;
            }
            if (Libc.FcntlLock(fd, Libc.F_OFD_GETLK, &fl) < 0)
            {
                return Libc.NegErrno;
            }
            var reply = new FuseLkOut();
            reply.Lk.Type = (uint)fl.Type;
            if (fl.Type != Libc.F_UNLCK)
            {
                reply.Lk.Start = (ulong)fl.Start;
                reply.Lk.End = fl.Length == 0 ? LockOffsetMax : (ulong)(fl.Start + fl.Length - 1);
                // Host pids (or -1 for OFD locks) mean nothing in the guest.
                reply.Lk.Pid = 0;
            }
            w.TryWrite(in reply);
            return 0;
        }
        finally
        {
            _handles.Release(handle);
        }
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
        int rc = ToFileLock(in a.Lk, out FileLock fl);
        if (rc < 0)
        {
            return rc;
        }
        Handle? handle = _handles.Acquire(a.Fh, h.NodeId);
        if (handle is null)
        {
            return EBADF;
        }
        try
        {
            if (flock)
            {
                int operation = fl.Type switch
                {
                    Libc.F_RDLCK => Libc.LOCK_SH,
                    Libc.F_WRLCK => Libc.LOCK_EX,
                    _ => Libc.LOCK_UN,
                };
                return Retry(handle.Fd, h.Unique, wait && operation != Libc.LOCK_UN, static (fd, op) => Libc.Flock(fd, op | Libc.LOCK_NB), operation, null);
            }
            if (!AccessAllows(handle, fl.Type))
            {
                return EBADF;
            }
            int fd = LockOwnerFd(handle, a.Owner, create: fl.Type != Libc.F_UNLCK);
            if (fd == -1 && fl.Type == Libc.F_UNLCK)
            {
                // The owner never locked anything here: nothing to release.
                return 0;
            }
            if (fd < 0)
            {
                return fd;
            }
            return Retry(fd, h.Unique, wait && fl.Type != Libc.F_UNLCK, null, 0, &fl);
        }
        finally
        {
            _handles.Release(handle);
        }
    }

    /// <summary>Tries a non-blocking lock; with <paramref name="wait"/>, retries (1 ms doubling to 50 ms)
    /// until it succeeds, the guest interrupts the request (EINTR) or the session is reset. So a
    /// SETLKW never parks a thread in the kernel where nothing could wake it.</summary>
    private int Retry(int fd, ulong unique, bool wait, Func<int, int, int>? flockCall, int operation, FileLock* fl)
    {
        long generation = _interrupts.Generation;
        int delay = LockPollFirstMs;
        while (true)
        {
            int rc = flockCall is not null ? flockCall(fd, operation) : Libc.FcntlLock(fd, Libc.F_OFD_SETLK, fl);
            if (rc == 0)
            {
                return 0;
            }
            Errno errno = Libc.LastErrno;
            if (errno == Errno.EINTR)
            {
                continue;
            }
            if (!wait || errno is not (Errno.EAGAIN or Errno.EACCES))
            {
                return -(int)errno;
            }
            if (_interrupts.Contains(unique) || _interrupts.Generation != generation || _disposed)
            {
                return -(int)Errno.EINTR;
            }
            Thread.Sleep(delay);
            delay = Math.Min(delay * 2, LockPollMaxMs);
        }
    }
}
