using System.Text;
using Vhostfsd.Posix;

namespace Vhostfsd.Tests;

/// <summary>Raw sockets for tests, made without close-on-exec when they are to be passed to
/// the daemon by fd number.</summary>
internal static unsafe class TestSockets
{
    /// <summary>A bound, listening AF_UNIX stream socket at <paramref name="path"/>.</summary>
    public static int Listen(string path, bool inheritable)
    {
        int fd = Libc.Socket(Libc.AF_UNIX, Libc.SOCK_STREAM | (inheritable ? 0 : Libc.SOCK_CLOEXEC), 0);
        Assert.True(fd >= 0, "socket: " + Libc.LastErrno);
        uint length = Libc.MakeUnixAddress(path, out SockAddrUn address);
        Assert.True(Libc.Bind(fd, &address, length) == 0, "bind: " + Libc.LastErrno);
        Assert.True(Libc.Listen(fd, 4) == 0, "listen: " + Libc.LastErrno);
        return fd;
    }

    /// <summary>Leaves a socket file behind with nothing listening on it, as a daemon that was
    /// killed does.</summary>
    public static void LeaveStaleSocket(string path)
    {
        int fd = Listen(path, inheritable: false);
        Libc.Close(fd);
        Assert.True(File.Exists(path));
    }

    /// <summary>Connects; null when the connection is refused.</summary>
    public static UnixSocket? TryConnect(string path)
    {
        try
        {
            return UnixSocket.Connect(path);
        }
        catch (PosixException e) when (e.Errno is Errno.ECONNREFUSED or Errno.ENOENT)
        {
            return null;
        }
    }

    public static uint SocketMode(string path) => (uint)File.GetUnixFileMode(path);

    /// <summary>Reads a small file with plain open/read: .NET's File methods take a shared flock,
    /// which the daemon's exclusive lock on its pid file refuses.</summary>
    public static string ReadAll(string path)
    {
        int fd;
        fixed (byte* p = Encoding.UTF8.GetBytes(path + "\0"))
        {
            fd = Libc.Open(p, Libc.O_RDONLY | Libc.O_CLOEXEC, 0);
        }
        Assert.True(fd >= 0, $"open {path}: {Libc.LastErrno}");
        try
        {
            byte[] buffer = new byte[4096];
            int n = Libc.ReadSome(fd, buffer);
            Assert.True(n >= 0);
            return Encoding.UTF8.GetString(buffer, 0, n);
        }
        finally
        {
            Libc.Close(fd);
        }
    }
}
