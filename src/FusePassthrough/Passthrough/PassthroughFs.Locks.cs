using Vhostfsd.FusePassthrough.Passthrough;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.FusePassthrough;

// POSIX record locks (as OFD locks, one open file description per guest lock owner) and flock.
public sealed unsafe partial class PassthroughFs
{
    /// <summary>OFFSET_MAX: a lock end meaning "to the end of the file".</summary>
    private const ulong LockOffsetMax = long.MaxValue;

    private const int LockPollFirstMs = 1;
    private const int LockPollMaxMs = 50;

    /// <summary>The current description of <paramref name="owner"/> on the inode of <paramref name="handle"/>
    /// (see <see cref="LockOwnerFile"/>), with a reference the caller releases. Created on first use when
    /// <paramref name="create"/>, with the handle's access (read-write for a writable handle, read-only
    /// otherwise); replaced by a read-write one when <paramref name="needWrite"/> finds it read-only.
    /// Null with <paramref name="error"/> 0 when the owner has none and none was created, else -errno.</summary>
    private LockOwnerFile? AcquireLockOwner(Handle handle, ulong owner, bool create, bool needWrite, out int error)
    {
        error = 0;
        Node node = handle.Node;
        lock (node.OwnersLock)
        {
            LockOwnerFile? current = null;
            node.LockOwners?.TryGetValue(owner, out current);
            if (current is not null && (!needWrite || current.Writable))
            {
                current.AddRef();
                return current;
            }
            if (current is null && !create)
            {
                return null;
            }
            if (!_budget.TryTake())
            {
                error = -(int)Errno.ENFILE;
                return null;
            }
            bool writable = (handle.OpenFlags & Libc.O_ACCMODE) != Libc.O_RDONLY;
            byte* fdName = stackalloc byte[16];
            FormatFd(handle.Fd, new Span<byte>(fdName, 16));
            int fd = Libc.OpenAt(_procSelfFd, fdName, (writable ? Libc.O_RDWR : Libc.O_RDONLY) | Libc.O_CLOEXEC | Libc.O_NONBLOCK, 0);
            if (fd < 0)
            {
                error = Libc.NegErrno;
                _budget.Return();
                return null;
            }
            var file = new LockOwnerFile(fd, writable, _budget);
            if (current is not null)
            {
                file.Replace(current);
            }
            (node.LockOwners ??= new Dictionary<ulong, LockOwnerFile>())[owner] = file;
            file.AddRef();
            return file;
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

    public int Getlk(in RequestContext context, ulong nodeId, in FuseLkIn a, out FuseFileLock conflict)
    {
        conflict = default;
        int rc = ToFileLock(in a.Lk, out FileLock fl);
        if (rc < 0)
        {
            return rc;
        }
        Handle? handle = _handles.Acquire(a.Fh, nodeId);
        if (handle is null)
        {
            return EBADF;
        }
        LockOwnerFile? owner = null;
        try
        {
            // An owner without a description holds no lock, so the handle's own description (which
            // never carries one) answers exactly; otherwise the owner's own locks must not count.
            owner = AcquireLockOwner(handle, a.Owner, create: false, needWrite: false, out int error);
            if (error < 0)
            {
                return error;
            }
            if (Libc.FcntlLock(owner?.Fd ?? handle.Fd, Libc.F_OFD_GETLK, &fl) < 0)
            {
                return Libc.NegErrno;
            }
            conflict.Type = (uint)fl.Type;
            if (fl.Type != Libc.F_UNLCK)
            {
                conflict.Start = (ulong)fl.Start;
                conflict.End = fl.Length == 0 ? LockOffsetMax : (ulong)(fl.Start + fl.Length - 1);
                // Host pids (or -1 for OFD locks) mean nothing in the guest.
                conflict.Pid = 0;
            }
            return 0;
        }
        finally
        {
            owner?.Release();
            _handles.Release(handle);
        }
    }

    public int Setlk(in RequestContext context, ulong nodeId, in FuseLkIn a, bool wait)
    {
        bool flock = ((FuseLkFlags)a.LkFlags & FuseLkFlags.Flock) != 0;
        int rc = ToFileLock(in a.Lk, out FileLock fl);
        if (rc < 0)
        {
            return rc;
        }
        Handle? handle = _handles.Acquire(a.Fh, nodeId);
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
                return SetFlock(handle.Fd, context.Unique, wait && operation != Libc.LOCK_UN, operation);
            }
            if (!AccessAllows(handle, fl.Type))
            {
                return EBADF;
            }
            return SetPosixLock(handle, a.Owner, context.Unique, wait && fl.Type != Libc.F_UNLCK, fl);
        }
        finally
        {
            _handles.Release(handle);
        }
    }

    /// <summary>F_OFD_SETLK on the owner's current description; with <paramref name="wait"/>, retried
    /// (see <see cref="PauseBeforeRetry"/>) until it succeeds, the guest interrupts the request (EINTR) or the
    /// session is reset — so a SETLKW never parks a thread in the kernel where nothing could wake it.
    /// Every attempt takes the owner's description afresh, with a reference: a FLUSH of the owner
    /// meanwhile closes it for later attempts (which then start a new one, as the owner's next lock
    /// would) but never under an attempt, so no attempt can lock whatever file reuses its number.</summary>
    private int SetPosixLock(Handle handle, ulong owner, ulong unique, bool wait, FileLock fl)
    {
        long generation = _interrupts.Generation;
        int delay = LockPollFirstMs;
        bool unlock = fl.Type == Libc.F_UNLCK;
        while (true)
        {
            LockOwnerFile? file = AcquireLockOwner(handle, owner, create: !unlock, needWrite: fl.Type == Libc.F_WRLCK, out int error);
            if (file is null)
            {
                // 0: an unlock by an owner that never locked anything here.
                return error;
            }
            int rc;
            Errno errno = Errno.OK;
            try
            {
                FileLock request = fl;
                if (file.Retired is { } retired)
                {
                    // The owner's locks on the read-only description it had before must not overlap
                    // what it takes now: locks of two descriptions conflict with each other.
                    FileLock release = fl;
                    release.Type = Libc.F_UNLCK;
                    Libc.FcntlLock(retired.Fd, Libc.F_OFD_SETLK, &release);
                }
                rc = Libc.FcntlLock(file.Fd, Libc.F_OFD_SETLK, &request);
                if (rc < 0)
                {
                    errno = Libc.LastErrno;
                }
            }
            finally
            {
                file.Release();
            }
            if (rc == 0 || errno == Errno.EINTR)
            {
                if (rc == 0)
                {
                    return 0;
                }
                continue;
            }
            if (!wait || errno is not (Errno.EAGAIN or Errno.EACCES))
            {
                return -(int)errno;
            }
            int paused = PauseBeforeRetry(unique, generation, ref delay);
            if (paused < 0)
            {
                return paused;
            }
        }
    }

    /// <summary>flock on the handle's own description, retried like <see cref="SetPosixLock"/> (the
    /// caller holds the handle, so its descriptor stays open).</summary>
    private int SetFlock(int fd, ulong unique, bool wait, int operation)
    {
        long generation = _interrupts.Generation;
        int delay = LockPollFirstMs;
        while (true)
        {
            if (Libc.Flock(fd, operation | Libc.LOCK_NB) == 0)
            {
                return 0;
            }
            Errno errno = Libc.LastErrno;
            if (errno == Errno.EINTR)
            {
                continue;
            }
            if (!wait || errno != Errno.EAGAIN)
            {
                return -(int)errno;
            }
            int rc = PauseBeforeRetry(unique, generation, ref delay);
            if (rc < 0)
            {
                return rc;
            }
        }
    }

    /// <summary>Between two attempts of a waiting lock: -EINTR when the guest interrupted the request or
    /// the session ended; otherwise sleeps (1 ms doubling to 50 ms) and returns 0.</summary>
    private int PauseBeforeRetry(ulong unique, long generation, ref int delay)
    {
        if (_interrupts.Contains(unique) || _interrupts.Generation != generation || _disposed)
        {
            return -(int)Errno.EINTR;
        }
        Thread.Sleep(delay);
        delay = Math.Min(delay * 2, LockPollMaxMs);
        return 0;
    }
}
