using System.Runtime.InteropServices;

namespace Vhostfsd.Posix;

/// <summary>struct iovec.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct IoVec
{
    public void* Base;
    public nuint Length;

    public IoVec(void* @base, nuint length)
    {
        Base = @base;
        Length = length;
    }
}

/// <summary>struct msghdr, x86_64 layout (56 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct MsgHdr
{
    public void* Name;
    public uint NameLen;
    public IoVec* Iov;
    public nuint IovLen;
    public void* Control;
    public nuint ControlLen;
    public int Flags;
}

/// <summary>struct cmsghdr header (16 bytes on x86_64); data follows.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct CMsgHdr
{
    public nuint Len;
    public int Level;
    public int Type;
}

/// <summary>struct sockaddr_un (110 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct SockAddrUn
{
    public const int PathCapacity = 108;
    public ushort Family;
    public fixed byte Path[PathCapacity];
}

/// <summary>struct ucred, as returned by SO_PEERCRED.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct UCred
{
    public int Pid;
    public uint Uid;
    public uint Gid;
}

public static unsafe partial class Libc
{
    public const int AF_UNIX = 1;
    public const int SOCK_STREAM = 1;
    public const int SOCK_SEQPACKET = 5;
    public const int SOCK_NONBLOCK = 0x800;
    public const int SOCK_CLOEXEC = 0x80000;
    public const int SOL_SOCKET = 1;
    public const int SO_PEERCRED = 17;
    public const int SO_ACCEPTCONN = 30;
    public const int SO_DOMAIN = 39;
    public const int SO_TYPE = 3;
    public const int SCM_RIGHTS = 1;
    public const int MSG_PEEK = 0x2;
    public const int MSG_CTRUNC = 0x8;
    public const int MSG_DONTWAIT = 0x40;
    public const int MSG_NOSIGNAL = 0x4000;
    public const int MSG_CMSG_CLOEXEC = 0x40000000;
    public const int SHUT_WR = 1;
    public const int SHUT_RDWR = 2;

    [LibraryImport(Lib, EntryPoint = "socket", SetLastError = true)]
    public static partial int Socket(int domain, int type, int protocol);

    [LibraryImport(Lib, EntryPoint = "socketpair", SetLastError = true)]
    public static partial int SocketPair(int domain, int type, int protocol, int* sv);

    [LibraryImport(Lib, EntryPoint = "bind", SetLastError = true)]
    public static partial int Bind(int fd, SockAddrUn* addr, uint addrLen);

    [LibraryImport(Lib, EntryPoint = "listen", SetLastError = true)]
    public static partial int Listen(int fd, int backlog);

    [LibraryImport(Lib, EntryPoint = "accept4", SetLastError = true)]
    public static partial int Accept4(int fd, SockAddrUn* addr, uint* addrLen, int flags);

    [LibraryImport(Lib, EntryPoint = "connect", SetLastError = true)]
    public static partial int Connect(int fd, SockAddrUn* addr, uint addrLen);

    [LibraryImport(Lib, EntryPoint = "sendmsg", SetLastError = true)]
    public static partial nint SendMsg(int fd, MsgHdr* msg, int flags);

    [LibraryImport(Lib, EntryPoint = "recvmsg", SetLastError = true)]
    public static partial nint RecvMsg(int fd, MsgHdr* msg, int flags);

    [LibraryImport(Lib, EntryPoint = "shutdown", SetLastError = true)]
    public static partial int Shutdown(int fd, int how);

    [LibraryImport(Lib, EntryPoint = "getsockopt", SetLastError = true)]
    public static partial int GetSockOpt(int fd, int level, int name, void* value, uint* len);

    [LibraryImport(Lib, EntryPoint = "getsockname", SetLastError = true)]
    public static partial int GetSockName(int fd, SockAddrUn* addr, uint* addrLen);

    /// <summary>Fills a sockaddr_un; throws ArgumentException when the path does not fit.</summary>
    public static uint MakeUnixAddress(string path, out SockAddrUn addr)
    {
        addr = default;
        addr.Family = AF_UNIX;
        int max = SockAddrUn.PathCapacity - 1;
        int len = System.Text.Encoding.UTF8.GetByteCount(path);
        if (len == 0 || len > max)
        {
            throw new ArgumentException($"socket path is {len} bytes; a UNIX socket path must be 1..{max} bytes: {path}", nameof(path));
        }
        fixed (byte* dst = addr.Path)
        {
            System.Text.Encoding.UTF8.GetBytes(path, new Span<byte>(dst, max));
        }
        return (uint)(sizeof(ushort) + len + 1);
    }
}
