using System.Buffers.Binary;
using Vhostfsd.FusePassthrough.Passthrough;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.FusePassthrough;

// Credentials, capabilities and the calling thread's own file-system state for one request; the
// fds a node is reached through; the names a security label may take on the host.
public sealed unsafe partial class PassthroughFs
{
    private static bool IsDot(ReadOnlySpan<byte> name) => name.Length == 1 && name[0] == (byte)'.';

    private static bool IsDotDot(ReadOnlySpan<byte> name) => name.Length == 2 && name[0] == (byte)'.' && name[1] == (byte)'.';

    [ThreadStatic]
    private static byte[]? t_secctxName;

    private static ReadOnlySpan<byte> SecurityPrefix => "security."u8;

    private static ReadOnlySpan<byte> FileCapability => "security.capability"u8;

    /// <summary>The host name of a security context that came with a creating request: a context is
    /// an LSM's label (security.selinux, security.SMACK64, ...), so only security.* names are taken,
    /// and never security.capability (file capabilities are not a label; as root the daemon could set
    /// them). The name then goes through the same --xattrmap rules as SETXATTR, so a deny rule
    /// refuses the request and a prefix rule renames it. <paramref name="hostName"/> (NUL-terminated)
    /// is valid until the next request on this thread. Returns 0 or -errno.</summary>
    private int MapSecurityContextName(ReadOnlySpan<byte> name, out ReadOnlySpan<byte> hostName)
    {
        hostName = default;
        if (!name.StartsWith(SecurityPrefix) || name.Length == SecurityPrefix.Length || name.SequenceEqual(FileCapability))
        {
            return -(int)Errno.EPERM;
        }
        byte[] buffer = t_secctxName ??= GC.AllocateArray<byte>(Libc.XATTR_NAME_MAX + 2, pinned: true);
        int length = MapXattrName(name, buffer, forGet: false);
        if (length < 0)
        {
            return length;
        }
        hostName = buffer.AsSpan(0, length + 1);
        return 0;
    }

    /// <summary>What <see cref="EnterCredentials"/> changed, for <see cref="LeaveCredentials"/>.</summary>
    private struct CredentialState
    {
        public bool Uid;
        public bool Gid;
        public bool Groups;
    }

    /// <summary>True once the calling thread holds no supplementary group (set by the raw setgroups,
    /// which changes only this thread). A thread acting for the guest must hold exactly the
    /// request's groups or none: a group it kept from the daemon (root's group 0, a sudo login's
    /// groups) lets the kernel keep S_ISGID on a file the guest user creates in a setgid directory
    /// of that group (CVE-2022-0358), or grants group permissions the guest user does not have.</summary>
    [ThreadStatic]
    private static bool t_noGroups;

    /// <summary>Switches the calling thread's file-system credentials to the requester's (setfsuid,
    /// setfsgid, and exactly the supplementary groups of the CREATE_SUPP_GROUP extension, or none)
    /// so that the host creates files owned by them and checks their permissions. Only when the
    /// daemon runs as root; otherwise files are created as the daemon user. Returns 0 or -errno.</summary>
    private int EnterCredentials(in RequestContext context, out CredentialState state)
    {
        state = default;
        int rc = EnsureThreadUmask();
        if (rc < 0 || !_privileged)
        {
            return rc;
        }
        if (context.Uid == FuseConstants.InvalidUidGid || context.Gid == FuseConstants.InvalidUidGid)
        {
            return -(int)Errno.EINVAL;
        }
        if (context.GroupCount > 0)
        {
            uint* groups = stackalloc uint[context.GroupCount];
            for (int i = 0; i < context.GroupCount; i++)
            {
                groups[i] = BinaryPrimitives.ReadUInt32LittleEndian(context.Groups[(i * 4)..]);
            }
            if (Libc.SetGroupsThread(context.GroupCount, groups) < 0)
            {
                return Libc.NegErrno;
            }
            t_noGroups = false;
            state.Groups = true;
        }
        else if (!t_noGroups)
        {
            rc = DropThreadGroups();
            if (rc < 0)
            {
                return rc;
            }
        }
        // setfsuid/setfsgid never report an error: without CAP_SETUID/CAP_SETGID (--modcaps) they
        // leave the thread as it was, and the request would run as root. Each switch is read back
        // (an invalid id changes nothing and returns the current one).
        if (context.Gid != 0)
        {
            Libc.SetFsGid(context.Gid);
            state.Gid = true;
            if ((uint)Libc.SetFsGid(uint.MaxValue) != context.Gid)
            {
                LeaveCredentials(in state);
                return -(int)Errno.EPERM;
            }
        }
        if (context.Uid != 0)
        {
            Libc.SetFsUid(context.Uid);
            state.Uid = true;
            if ((uint)Libc.SetFsUid(uint.MaxValue) != context.Uid)
            {
                LeaveCredentials(in state);
                return -(int)Errno.EPERM;
            }
        }
        return 0;
    }

    private void LeaveCredentials(in CredentialState state)
    {
        // Back to root first: it restores the file-system capabilities needed for the rest.
        if (state.Uid)
        {
            Libc.SetFsUid(0);
        }
        if (state.Gid)
        {
            Libc.SetFsGid(0);
        }
        if (state.Groups)
        {
            // The daemon's own state between requests is no group at all, never the daemon's groups.
            DropThreadGroups();
        }
    }

    private static int DropThreadGroups()
    {
        if (Libc.SetGroupsThread(0, null) < 0)
        {
            return Libc.NegErrno;
        }
        t_noGroups = true;
        return 0;
    }

    /// <summary>For an operation the guest marked KILL_SUIDGID (HANDLE_KILLPRIV_V2: the guest's caller
    /// lacks CAP_FSETID): clears CAP_FSETID from the calling thread's effective set, so that the
    /// kernel clears S_ISUID/S_ISGID as part of the write, truncation or chown itself, exactly as it
    /// would for that caller — not in a chmod after the operation, which left a window with the new
    /// contents still setuid. Capability sets are per thread, so no other request is affected.
    /// Returns true when the set changed; <see cref="RestoreFsetid"/> puts it back.</summary>
    private bool DropFsetid()
    {
        if (!_privileged)
        {
            return false;
        }
        var header = new CapUserHeader { Version = Libc._LINUX_CAPABILITY_VERSION_3 };
        CapUserData* data = stackalloc CapUserData[2];
        if (Libc.Capget(&header, data) < 0 || (data[0].Effective & (1u << Libc.CAP_FSETID)) == 0)
        {
            return false;
        }
        data[0].Effective &= ~(1u << Libc.CAP_FSETID);
        return Libc.Capset(&header, data) == 0;
    }

    private static void RestoreFsetid(bool dropped)
    {
        if (!dropped)
        {
            return;
        }
        var header = new CapUserHeader { Version = Libc._LINUX_CAPABILITY_VERSION_3 };
        CapUserData* data = stackalloc CapUserData[2];
        if (Libc.Capget(&header, data) == 0)
        {
            data[0].Effective |= 1u << Libc.CAP_FSETID;
            Libc.Capset(&header, data);
        }
    }

    /// <summary>The mode to create with: with DONT_MASK negotiated the guest left the umask to us, and
    /// (as the host kernel would) it applies only when the parent has no default ACL.</summary>
    private uint EffectiveMode(int parentFd, uint mode, uint umask)
    {
        if ((_negotiated & FuseInitFlags.DontMask) == 0)
        {
            return mode;
        }
        byte* fdName = stackalloc byte[16];
        FormatFd(parentFd, new Span<byte>(fdName, 16));
        int dir = Libc.OpenAt(_procSelfFd, fdName, Libc.O_RDONLY | Libc.O_DIRECTORY | Libc.O_CLOEXEC, 0);
        if (dir >= 0)
        {
            ReadOnlySpan<byte> acl = "system.posix_acl_default\0"u8;
            nint size;
            fixed (byte* name = acl)
            {
                size = Libc.Fgetxattr(dir, name, null, 0);
            }
            Libc.Close(dir);
            if (size >= 0)
            {
                return mode;
            }
        }
        return mode & ~umask;
    }

    /// <summary>True once the calling thread has its own fs_struct (unshare(CLONE_FS)): its working
    /// directory and umask can then change without changing any other thread's.</summary>
    [ThreadStatic]
    private static bool t_ownFsStruct;

    /// <summary>True once the calling thread's umask is 0.</summary>
    [ThreadStatic]
    private static bool t_umaskCleared;

    /// <summary>Gives the calling thread its own fs_struct (working directory and umask), once.</summary>
    private static int EnsureOwnFsStruct()
    {
        if (!t_ownFsStruct)
        {
            if (Libc.Unshare(Libc.CLONE_FS) < 0)
            {
                return Libc.NegErrno;
            }
            t_ownFsStruct = true;
        }
        return 0;
    }

    /// <summary>Entries are created with exactly the mode the guest asks for (its kernel applied the
    /// caller's umask already, or left it to <see cref="EffectiveMode"/> with DONT_MASK), so a thread
    /// that creates them has umask 0 — its own, set once, leaving the process's alone.</summary>
    private static int EnsureThreadUmask()
    {
        if (t_umaskCleared)
        {
            return 0;
        }
        int rc = EnsureOwnFsStruct();
        if (rc < 0)
        {
            return rc;
        }
        Libc.Umask(0);
        t_umaskCleared = true;
        return 0;
    }

    /// <summary>For the path-only xattr calls of kernels without the *xattrat calls (before 6.13):
    /// makes the /proc/self/fd directory fd (opened before the sandbox) the calling thread's working
    /// directory, so that a relative "N" names fd N's inode. An absolute "/proc/self/fd/N" would be
    /// resolved in the sandbox's root — the share, where the guest can create proc/self/fd/N itself
    /// as a symlink to a file of its choosing. The thread first gets its own fs_struct, so no other
    /// thread's working directory moves. Returns an O_PATH fd on the previous working directory (to
    /// hand to <see cref="LeaveProcFdDirectory"/>) or -errno.</summary>
    private int EnterProcFdDirectory()
    {
        int own = EnsureOwnFsStruct();
        if (own < 0)
        {
            return own;
        }
        byte* dot = stackalloc byte[2];
        dot[0] = (byte)'.';
        dot[1] = 0;
        int previous = Libc.OpenAt(Libc.AT_FDCWD, dot, Libc.O_PATH | Libc.O_DIRECTORY | Libc.O_CLOEXEC, 0);
        if (previous < 0)
        {
            return Libc.NegErrno;
        }
        if (Libc.Fchdir(_procSelfFd) < 0)
        {
            int error = Libc.NegErrno;
            Libc.Close(previous);
            return error;
        }
        return previous;
    }

    /// <summary>Returns the thread to the working directory it had before <see cref="EnterProcFdDirectory"/>,
    /// so that no relative name used later on this thread reaches the daemon's descriptors.</summary>
    private static void LeaveProcFdDirectory(int previous)
    {
        Libc.Fchdir(previous);
        Libc.Close(previous);
    }

    /// <summary>An fd usable with *at() calls for <paramref name="node"/>: its O_PATH fd, or a
    /// temporary one opened from its file handle (returned in <paramref name="temporary"/>, to be
    /// closed with <see cref="CloseTemporary"/>). Returns the fd or -errno.</summary>
    private int PathFd(Node node, ref int temporary)
    {
        if (node.Fd >= 0)
        {
            return node.Fd;
        }
        byte[]? handle = node.FileHandle;
        if (handle is null)
        {
            return -(int)Errno.EBADF;
        }
        fixed (byte* p = handle)
        {
            int fd = Libc.OpenByHandleAt(node.MountFd, (FileHandleHeader*)p, Libc.O_PATH | Libc.O_CLOEXEC);
            if (fd < 0)
            {
                return Libc.NegErrno;
            }
            temporary = fd;
            return fd;
        }
    }

    private static void CloseTemporary(int temporary)
    {
        if (temporary >= 0)
        {
            Libc.Close(temporary);
        }
    }

    /// <summary>Opens <paramref name="node"/> again with real access <paramref name="flags"/>: through
    /// /proc/self/fd for an O_PATH fd, or open_by_handle_at for a file handle. Returns fd or -errno.</summary>
    private int Reopen(Node node, int flags)
    {
        if (node.Fd >= 0)
        {
            return ReopenPathFd(node.Fd, flags);
        }
        byte[]? handle = node.FileHandle;
        if (handle is null)
        {
            return -(int)Errno.EBADF;
        }
        fixed (byte* p = handle)
        {
            int fd = Libc.OpenByHandleAt(node.MountFd, (FileHandleHeader*)p, (flags | Libc.O_CLOEXEC) & ~(Libc.O_CREAT | Libc.O_EXCL | Libc.O_NOCTTY));
            return fd < 0 ? Libc.NegErrno : fd;
        }
    }

    /// <summary>Opens the inode an O_PATH <paramref name="pathFd"/> pins again, through /proc/self/fd, with real
    /// access <paramref name="flags"/> (creation flags and O_NOFOLLOW dropped: the /proc link is itself a
    /// symlink). Returns fd or -errno.</summary>
    private int ReopenPathFd(int pathFd, int flags)
    {
        byte* name = stackalloc byte[16];
        FormatFd(pathFd, new Span<byte>(name, 16));
        int fd = Libc.OpenAt(_procSelfFd, name, (flags | Libc.O_CLOEXEC) & ~(Libc.O_CREAT | Libc.O_EXCL | Libc.O_NOCTTY | Libc.O_NOFOLLOW), 0);
        return fd < 0 ? Libc.NegErrno : fd;
    }
}
