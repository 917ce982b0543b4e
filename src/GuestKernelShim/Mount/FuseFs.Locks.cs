using System.Runtime.InteropServices;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.GuestKernelShim;

/// <summary>A byte-range lock as fcntl(F_GETLK/F_SETLK) describes it; <see cref="End"/> is inclusive
/// (<see cref="ToEof"/> = to the end of the file).</summary>
public struct FileLockRange
{
    public const int ReadLock = 0;   // F_RDLCK
    public const int WriteLock = 1;  // F_WRLCK
    public const int Unlock = 2;     // F_UNLCK
    public const ulong ToEof = long.MaxValue; // OFFSET_MAX

    public int Type;
    public ulong Start;
    public ulong End;
    public uint Pid;

    public FileLockRange(int type, ulong start, ulong end, uint pid = 0)
    {
        Type = type;
        Start = start;
        End = end;
        Pid = pid;
    }

    public override readonly string ToString() => $"{(Type == ReadLock ? "read" : Type == WriteLock ? "write" : "unlock")} {Start}..{End} pid {Pid}";
}

// POSIX (fcntl) and flock locks: forwarded with POSIX_LOCKS / FLOCK_LOCKS, else kept in the shim.
public sealed partial class FuseFs
{
    /// <summary>flock(2) operations.</summary>
    public const int LockShared = 1;
    public const int LockExclusive = 2;
    public const int LockNonBlocking = 4;
    public const int LockUnlock = 8;

    private readonly LocalLocks _localFlocks = new();

    // ---------------------------------------------------------------- locks

    /// <summary>The lock owner of a process's POSIX locks (Linux scrambles fl_owner; here, from the tgid).</summary>
    internal static ulong LockOwnerOf(in FuseCaller caller) => 0x9E37_79B9_7F4A_7C15UL ^ ((ulong)caller.Pid * 0xBF58_476D_1CE4_E5B9UL);

    /// <summary>flock locks belong to the open file.</summary>
    internal static ulong FlockOwnerOf(FuseFile file) => 0xD6E8_FEB8_6659_FD93UL ^ (file.Id * 0x94D0_49BB_1331_11EBUL);

    /// <summary>fcntl(F_GETLK): GETLK when POSIX_LOCKS was negotiated, else the shim's own lock table (locks
    /// stay local to this guest, as Linux does without POSIX_LOCKS). <paramref name="lk"/> comes back as the
    /// conflicting lock, or with type F_UNLCK.</summary>
    public Errno GetLock(FuseFile file, ref FileLockRange lk, FuseCaller? caller = null)
    {
        var c = Who(caller);
        var rc = CheckLockRequest(file, lk);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (!Conn.Has(FuseInitFlags.PosixLocks))
        {
            lk = _localLocks.Test(file.Node.NodeId, LockOwnerOf(c), lk);
            return Errno.OK;
        }
        var arg = new FuseLkIn
        {
            Fh = file.Fh,
            Owner = LockOwnerOf(c),
            Lk = new FuseFileLock { Start = lk.Start, End = lk.End, Type = (uint)lk.Type, Pid = c.Pid },
        };
        FuseLkOut outArg = default;
        var reply = Conn.Send(FuseOpcode.Getlk, file.Node.NodeId, c, new FuseArgs(Bytes(in arg)),
            MemoryMarshal.AsBytes(new Span<FuseLkOut>(ref outArg)), FuseReplyShape.Fixed);
        if (!reply.IsOk)
        {
            return reply.Errno;
        }
        lk = new FileLockRange((int)outArg.Lk.Type, outArg.Lk.Start, outArg.Lk.End, outArg.Lk.Pid);
        return Errno.OK;
    }

    /// <summary>fcntl(F_SETLK / F_SETLKW): SETLK or SETLKW when POSIX_LOCKS was negotiated (a cancelled wait
    /// sends INTERRUPT), else the shim's local lock table. EAGAIN when a non-waiting lock conflicts.</summary>
    public Errno SetLock(FuseFile file, in FileLockRange lk, bool wait, FuseCaller? caller = null, CancellationToken cancellation = default)
    {
        var c = Who(caller);
        var rc = CheckLockRequest(file, lk);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if ((lk.Type == FileLockRange.ReadLock && !file.CanRead) || (lk.Type == FileLockRange.WriteLock && !file.CanWrite))
        {
            return Errno.EBADF;
        }
        if (!Conn.Has(FuseInitFlags.PosixLocks))
        {
            return _localLocks.Set(file.Node.NodeId, LockOwnerOf(c), lk, wait, cancellation);
        }
        return SendSetLock(file, LockOwnerOf(c), lk, wait, 0, c, cancellation);
    }

    /// <summary>flock(2): SETLK/SETLKW with FUSE_LK_FLOCK when FLOCK_LOCKS was negotiated, else local.</summary>
    public Errno Flock(FuseFile file, int operation, FuseCaller? caller = null, CancellationToken cancellation = default)
    {
        var c = Who(caller);
        var rc = CheckLive(file.Node);
        if (rc != Errno.OK)
        {
            return rc;
        }
        int type = (operation & ~LockNonBlocking) switch
        {
            LockShared => FileLockRange.ReadLock,
            LockExclusive => FileLockRange.WriteLock,
            LockUnlock => FileLockRange.Unlock,
            _ => -1,
        };
        if (type < 0)
        {
            return Errno.EINVAL;
        }
        bool wait = (operation & LockNonBlocking) == 0 && type != FileLockRange.Unlock;
        var range = new FileLockRange(type, 0, FileLockRange.ToEof, c.Pid);
        file.UsedFlock = true;
        if (!Conn.Has(FuseInitFlags.FlockLocks))
        {
            return _localFlocks.Set(file.Node.NodeId, FlockOwnerOf(file), range, wait, cancellation);
        }
        return SendSetLock(file, FlockOwnerOf(file), range, wait, (uint)FuseLkFlags.Flock, c, cancellation);
    }

    private Errno SendSetLock(FuseFile file, ulong owner, in FileLockRange lk, bool wait, uint lkFlags, in FuseCaller caller, CancellationToken cancellation)
    {
        var arg = new FuseLkIn
        {
            Fh = file.Fh,
            Owner = owner,
            Lk = new FuseFileLock { Start = lk.Start, End = lk.End, Type = (uint)lk.Type, Pid = lk.Type == FileLockRange.Unlock ? 0 : caller.Pid },
            LkFlags = lkFlags,
        };
        var reply = Conn.Send(wait ? FuseOpcode.Setlkw : FuseOpcode.Setlk, file.Node.NodeId, caller, new FuseArgs(Bytes(in arg)),
            Span<byte>.Empty, FuseReplyShape.Fixed, cancellation);
        // A daemon that cannot lock remotely answers ENOSYS: Linux then reports ENOLCK... as the VFS does.
        return reply.Errno == Errno.ENOSYS ? Errno.ENOLCK : reply.Errno;
    }

    private static Errno CheckLockRequest(FuseFile file, in FileLockRange lk)
    {
        var rc = CheckLive(file.Node);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (file.IsClosed)
        {
            return Errno.EBADF;
        }
        if (lk.Type is < FileLockRange.ReadLock or > FileLockRange.Unlock || lk.End < lk.Start || lk.End > FileLockRange.ToEof)
        {
            return Errno.EINVAL;
        }
        return Errno.OK;
    }
}
