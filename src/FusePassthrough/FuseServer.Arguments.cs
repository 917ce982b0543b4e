using System.Buffers.Binary;
using Vhostfsd.FusePassthrough.Passthrough;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.FusePassthrough;

// Decoding of the variable part of requests (names, extensions) and the per-request credentials.
public sealed unsafe partial class FuseServer
{
    /// <summary>Room for the names and extensions of one request: two names of NAME_MAX, a symlink
    /// target of PATH_MAX, a security context and a supplementary group list.</summary>
    private const int ArgumentScratchSize = 16384;

    /// <summary>Most supplementary groups accepted from the CREATE_SUPP_GROUP extension (the kernel sends one).</summary>
    private const int MaxExtensionGroups = 64;

    [ThreadStatic]
    private static byte[]? t_arguments;

    private static byte[] ArgumentScratch => t_arguments ??= GC.AllocateArray<byte>(ArgumentScratchSize, pinned: true);

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
        public ReadOnlySpan<byte> SecctxName;
        public ReadOnlySpan<byte> SecctxValue;
        public readonly bool HasSecctx => SecctxValue.Length > 0;
    }

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
                Interlocked.Increment(ref Stats._malformed);
                return -(int)Errno.EINVAL;
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
                Interlocked.Increment(ref Stats._malformed);
                return -(int)Errno.EINVAL;
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
        if (IsDot(name) || IsDotDot(name))
        {
            return -(int)Errno.EINVAL;
        }
        return 0;
    }

    private static bool IsDot(ReadOnlySpan<byte> name) => name.Length == 1 && name[0] == (byte)'.';

    private static bool IsDotDot(ReadOnlySpan<byte> name) => name.Length == 2 && name[0] == (byte)'.' && name[1] == (byte)'.';

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
                    int mapped = MapSecurityContextName(rest[..nul], out ext.SecctxName);
                    if (mapped < 0)
                    {
                        return mapped;
                    }
                    ext.SecctxValue = rest.Slice(nul + 1, (int)labelSize);
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
            Interlocked.Increment(ref Stats._malformed);
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

    private int Malformed()
    {
        Interlocked.Increment(ref Stats._malformed);
        return -(int)Errno.EINVAL;
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
    private int EnterCredentials(in FuseInHeader h, scoped in RequestExtensions ext, out CredentialState state)
    {
        state = default;
        if (!_privileged)
        {
            return 0;
        }
        if (h.Uid == FuseConstants.InvalidUidGid || h.Gid == FuseConstants.InvalidUidGid)
        {
            return -(int)Errno.EINVAL;
        }
        if (ext.GroupCount > 0)
        {
            uint* groups = stackalloc uint[ext.GroupCount];
            for (int i = 0; i < ext.GroupCount; i++)
            {
                groups[i] = BinaryPrimitives.ReadUInt32LittleEndian(ext.Groups[(i * 4)..]);
            }
            if (Libc.SetGroupsThread(ext.GroupCount, groups) < 0)
            {
                return Libc.NegErrno;
            }
            t_noGroups = false;
            state.Groups = true;
        }
        else if (!t_noGroups)
        {
            int rc = DropThreadGroups();
            if (rc < 0)
            {
                return rc;
            }
        }
        if (h.Gid != 0)
        {
            Libc.SetFsGid(h.Gid);
            state.Gid = true;
        }
        if (h.Uid != 0)
        {
            Libc.SetFsUid(h.Uid);
            state.Uid = true;
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
    /// directory can then move without moving any other thread's.</summary>
    [ThreadStatic]
    private static bool t_ownWorkingDirectory;

    /// <summary>For the path-only xattr calls of kernels without the *xattrat calls (before 6.13):
    /// makes the /proc/self/fd directory fd (opened before the sandbox) the calling thread's working
    /// directory, so that a relative "N" names fd N's inode. An absolute "/proc/self/fd/N" would be
    /// resolved in the sandbox's root — the share, where the guest can create proc/self/fd/N itself
    /// as a symlink to a file of its choosing. The thread first gets its own fs_struct, so no other
    /// thread's working directory moves. Returns an O_PATH fd on the previous working directory (to
    /// hand to <see cref="LeaveProcFdDirectory"/>) or -errno.</summary>
    private int EnterProcFdDirectory()
    {
        if (!t_ownWorkingDirectory)
        {
            if (Libc.Unshare(Libc.CLONE_FS) < 0)
            {
                return Libc.NegErrno;
            }
            t_ownWorkingDirectory = true;
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
