using System.Globalization;
using System.Text;
using Vhostfsd.Cli;
using Vhostfsd.Logging;
using Vhostfsd.Posix;

namespace Vhostfsd.Hosting;

/// <summary>The listening vhost-user socket: created at --socket-path (with its PATH.pid lock
/// file, as the Rust virtiofsd does) or taken over from --fd. Knows what to remove at exit.</summary>
internal sealed unsafe class DaemonListener : IDisposable
{
    /// <summary>umask 077 / 007 (octal) while binding: the socket is 0700, or 0770 with --socket-group.</summary>
    private const uint OwnerOnlyUmask = 0x3F;
    private const uint GroupUmask = 0x07;

    /// <summary>0600 (octal).</summary>
    private const uint PidFileMode = 0x180;

    private readonly SafeFd? _pidFile;

    /// <summary>The directory holding the socket and lock file, opened before any sandbox so the
    /// files can be removed at exit even from inside a chroot.</summary>
    private readonly SafeFd? _directory;

    private DaemonListener(UnixSocket socket, string? socketPath, string? pidFilePath, SafeFd? pidFile, SafeFd? directory)
    {
        Socket = socket;
        SocketPath = socketPath;
        PidFilePath = pidFilePath;
        _pidFile = pidFile;
        _directory = directory;
    }

    public UnixSocket Socket { get; }

    /// <summary>The socket file this process created, or null for --fd.</summary>
    public string? SocketPath { get; }

    public string? PidFilePath { get; }

    /// <summary>Creates the socket at <paramref name="path"/>. Takes PATH.pid with an exclusive
    /// flock first: if another daemon holds it, the socket is live and start-up fails. A socket
    /// file left by a dead daemon (nothing accepts on it) is removed and replaced; any other
    /// kind of file at the path is left alone and start-up fails. With <paramref name="group"/>
    /// the socket is created group-accessible (umask 007) and given to that group; otherwise
    /// only the owner may connect (umask 077).</summary>
    public static DaemonListener Create(string path, string? group, Logger log)
    {
        string full = Path.GetFullPath(path);
        string? directory = Path.GetDirectoryName(full);
        if (directory == null || !Directory.Exists(directory))
        {
            throw new StartupException($"cannot create socket {path}: directory {directory} does not exist");
        }
        // Checked before anything is created, so a bad path leaves no lock file behind.
        try
        {
            Libc.MakeUnixAddress(path, out _);
        }
        catch (ArgumentException e)
        {
            throw new StartupException(e.Message);
        }
        uint? gid = null;
        if (group != null)
        {
            gid = ResolveGroup(group);
        }

        string pidPath = path + ".pid";
        SafeFd pidFile = LockPidFile(pidPath, path);
        try
        {
            RemoveStaleSocket(path, log);
            uint previous = Libc.Umask(gid == null ? OwnerOnlyUmask : GroupUmask);
            UnixSocket socket;
            try
            {
                socket = UnixSocket.Listen(path, backlog: 1);
            }
            catch (PosixException e)
            {
                throw new StartupException($"cannot listen on {path}: {e.Message}");
            }
            finally
            {
                Libc.Umask(previous);
            }
            if (gid != null)
            {
                fixed (byte* p = Encoding.UTF8.GetBytes(path + "\0"))
                {
                    if (Libc.Chown(p, uint.MaxValue, gid.Value) < 0)
                    {
                        var errno = Libc.LastErrno;
                        socket.Dispose();
                        File.Delete(path);
                        throw new StartupException($"cannot give socket {path} to group {group}: {PosixException.Describe(errno)}");
                    }
                }
            }
            int directoryFd;
            fixed (byte* d = Encoding.UTF8.GetBytes(directory + "\0"))
            {
                directoryFd = Libc.Open(d, Libc.O_PATH | Libc.O_DIRECTORY | Libc.O_CLOEXEC, 0);
            }
            if (directoryFd < 0)
            {
                var errno = Libc.LastErrno;
                socket.Dispose();
                File.Delete(path);
                throw new StartupException($"cannot open the socket's directory {directory}: {PosixException.Describe(errno)}");
            }
            return new DaemonListener(socket, path, pidPath, pidFile, new SafeFd(directoryFd));
        }
        catch
        {
            RemoveQuietly(pidPath);
            pidFile.Dispose();
            throw;
        }
    }

    /// <summary>Takes over an already-listening socket (socket activation, libvirt, Kata). The
    /// fd must be an AF_UNIX SOCK_STREAM socket in the listening state. It is made close-on-exec
    /// so it does not leak into anything the daemon might start.</summary>
    public static DaemonListener Adopt(int fd)
    {
        if (Libc.Fcntl(fd, Libc.F_GETFD, 0) < 0)
        {
            throw new StartupException($"--fd={fd}: not an open file descriptor ({PosixException.Describe(Libc.LastErrno)})");
        }
        int domain = GetIntOption(fd, Libc.SO_DOMAIN, out Errno error);
        if (error == Errno.ENOTSOCK)
        {
            throw new StartupException($"--fd={fd}: not a socket");
        }
        int type = GetIntOption(fd, Libc.SO_TYPE, out _);
        int accepting = GetIntOption(fd, Libc.SO_ACCEPTCONN, out _);
        if (domain != Libc.AF_UNIX || type != Libc.SOCK_STREAM)
        {
            throw new StartupException($"--fd={fd}: not a UNIX stream socket (domain {domain}, type {type}); vhost-user needs AF_UNIX SOCK_STREAM");
        }
        if (accepting != 1)
        {
            throw new StartupException($"--fd={fd}: the socket is not listening (call listen() before passing it)");
        }
        Libc.Fcntl(fd, Libc.F_SETFD, Libc.FD_CLOEXEC);
        return new DaemonListener(new UnixSocket(new SafeFd(fd)), null, null, null, null);
    }

    /// <summary>systemd socket activation (sd_listen_fds): when LISTEN_PID is this process and
    /// LISTEN_FDS is at least 1, the first passed fd (3). The variables are removed so nothing
    /// started later mistakes them for its own.</summary>
    public static int? SocketActivationFd()
    {
        string? pid = Environment.GetEnvironmentVariable("LISTEN_PID");
        string? count = Environment.GetEnvironmentVariable("LISTEN_FDS");
        if (pid == null || count == null)
        {
            return null;
        }
        Environment.SetEnvironmentVariable("LISTEN_PID", null);
        Environment.SetEnvironmentVariable("LISTEN_FDS", null);
        Environment.SetEnvironmentVariable("LISTEN_FDNAMES", null);
        if (!int.TryParse(pid, NumberStyles.None, CultureInfo.InvariantCulture, out int listenPid) || listenPid != Environment.ProcessId)
        {
            return null;
        }
        if (!int.TryParse(count, NumberStyles.None, CultureInfo.InvariantCulture, out int fds) || fds < 1)
        {
            return null;
        }
        return 3;
    }

    private static int GetIntOption(int fd, int option, out Errno error)
    {
        int value = 0;
        uint length = sizeof(int);
        if (Libc.GetSockOpt(fd, Libc.SOL_SOCKET, option, &value, &length) < 0)
        {
            error = Libc.LastErrno;
            return -1;
        }
        error = Errno.OK;
        return value;
    }

    private static uint ResolveGroup(string group)
    {
        uint? gid;
        try
        {
            gid = Libc.LookUpGroup(group);
        }
        catch (PosixException e)
        {
            throw new StartupException($"--socket-group {group}: group lookup failed: {e.Message}");
        }
        if (gid != null)
        {
            return gid.Value;
        }
        if (uint.TryParse(group, NumberStyles.None, CultureInfo.InvariantCulture, out uint numeric))
        {
            return numeric;
        }
        throw new StartupException($"--socket-group {group}: no such group");
    }

    /// <summary>Opens PATH.pid, takes an exclusive non-blocking flock, checks that the locked
    /// file is still the one at the path (a racing daemon may have replaced it), and writes our pid.</summary>
    private static SafeFd LockPidFile(string pidPath, string socketPath)
    {
        byte[] pathBytes = Encoding.UTF8.GetBytes(pidPath + "\0");
        for (int attempt = 0; attempt < 10; attempt++)
        {
            int raw;
            fixed (byte* p = pathBytes)
            {
                raw = Libc.Open(p, Libc.O_RDWR | Libc.O_CREAT | Libc.O_CLOEXEC | Libc.O_NOFOLLOW, PidFileMode);
            }
            if (raw < 0)
            {
                throw new StartupException($"cannot create lock file {pidPath}: {PosixException.Describe(Libc.LastErrno)}");
            }
            var fd = new SafeFd(raw);
            if (Libc.Flock(fd.Fd, Libc.LOCK_EX | Libc.LOCK_NB) < 0)
            {
                var errno = Libc.LastErrno;
                string holder = ReadPid(fd.Fd);
                fd.Dispose();
                if (errno == Errno.EAGAIN)
                {
                    throw new StartupException($"socket {socketPath} is in use: another daemon{holder} holds the lock on {pidPath}");
                }
                throw new StartupException($"cannot lock {pidPath}: {PosixException.Describe(errno)}");
            }
            if (!SameFile(fd, pidPath))
            {
                fd.Dispose();
                continue;
            }
            byte[] text = Encoding.ASCII.GetBytes(Environment.ProcessId.ToString(CultureInfo.InvariantCulture) + "\n");
            if (Libc.FTruncate(fd.Fd, 0) < 0 || Libc.WriteAll(fd.Fd, text) < 0)
            {
                var errno = Libc.LastErrno;
                fd.Dispose();
                throw new StartupException($"cannot write {pidPath}: {PosixException.Describe(errno)}");
            }
            return fd;
        }
        throw new StartupException($"cannot lock {pidPath}: it keeps being replaced by another process");
    }

    private static string ReadPid(int fd)
    {
        byte* buffer = stackalloc byte[32];
        // SAFETY: reads at most 31 bytes into a 32-byte buffer.
        nint n = Libc.Read(fd, buffer, 31);
        if (n <= 0)
        {
            return "";
        }
        string text = Encoding.ASCII.GetString(buffer, (int)n).Trim();
        return int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out int pid) ? $" (pid {pid})" : "";
    }

    /// <summary>True when the open <paramref name="fd"/> and <paramref name="path"/> are the same inode.</summary>
    private static bool SameFile(SafeFd fd, string path) =>
        Libc.Identify(fd.Fd, out FileIdentity open) == 0
        && Libc.Identify(path, out FileIdentity named) == 0
        && open.Device == named.Device && open.Inode == named.Inode;

    private static void RemoveStaleSocket(string path, Logger log)
    {
        int rc = Libc.Identify(path, out FileIdentity identity);
        if (rc == -(int)Errno.ENOENT)
        {
            return;
        }
        if (rc < 0)
        {
            throw new StartupException($"cannot check {path}: {PosixException.Describe((Errno)(-rc))}");
        }
        if (identity.Type != Libc.S_IFSOCK)
        {
            throw new StartupException($"{path} exists and is not a socket; refusing to replace it");
        }
        try
        {
            using var probe = UnixSocket.Connect(path);
            throw new StartupException($"socket {path} is in use: a process accepts connections on it");
        }
        catch (PosixException e) when (e.Errno == Errno.ECONNREFUSED)
        {
            // Nobody listens: a daemon died without cleaning up. Replace it, as virtiofsd does.
            File.Delete(path);
            log.Information("Removed stale socket {Path} left by a daemon that is gone", path);
        }
        catch (PosixException e)
        {
            throw new StartupException($"cannot check socket {path}: {e.Message}");
        }
    }

    private static void RemoveQuietly(string path)
    {
        try
        {
            File.Delete(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Best effort at exit: a missing or foreign file is not worth failing for.
        }
    }

    /// <summary>Removes the socket file and the lock file this process created (through the
    /// directory fd, so this works after chroot too). The lock file goes first, while the lock
    /// is still held, so a new daemon never sees a locked file vanish.</summary>
    public void RemoveFiles()
    {
        if (_directory == null)
        {
            return;
        }
        foreach (string? path in new[] { PidFilePath, SocketPath })
        {
            if (path != null)
            {
                fixed (byte* name = Encoding.UTF8.GetBytes(Path.GetFileName(path) + "\0"))
                {
                    // Best effort at exit: a file someone else already removed is fine.
                    Libc.UnlinkAt(_directory.Fd, name, 0);
                }
            }
        }
    }

    public void Dispose()
    {
        Socket.Dispose();
        _pidFile?.Dispose();
        _directory?.Dispose();
    }
}
