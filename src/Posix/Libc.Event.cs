using System.Runtime.InteropServices;

namespace Vhostfsd.Posix;

/// <summary>struct epoll_event: packed on x86_64 (12 bytes).</summary>
[StructLayout(LayoutKind.Sequential, Pack = 4)]
public struct EpollEvent
{
    public uint Events;
    public ulong Data;
}

/// <summary>struct pollfd (8 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct PollFd
{
    public int Fd;
    public short Events;
    public short REvents;
}

public static unsafe partial class Libc
{
    public const int EFD_SEMAPHORE = 1;
    public const int EFD_NONBLOCK = 0x800;
    public const int EFD_CLOEXEC = 0x80000;
    public const int EPOLL_CLOEXEC = 0x80000;
    public const int EPOLL_CTL_ADD = 1;
    public const int EPOLL_CTL_DEL = 2;
    public const int EPOLL_CTL_MOD = 3;
    public const uint EPOLLIN = 0x001;
    public const uint EPOLLOUT = 0x004;
    public const uint EPOLLERR = 0x008;
    public const uint EPOLLHUP = 0x010;
    public const uint EPOLLRDHUP = 0x2000;
    public const short POLLIN = 0x001;
    public const short POLLOUT = 0x004;
    public const short POLLERR = 0x008;
    public const short POLLHUP = 0x010;
    public const short POLLNVAL = 0x020;

    [LibraryImport(Lib, EntryPoint = "eventfd", SetLastError = true)]
    public static partial int EventFdCreate(uint initval, int flags);

    [LibraryImport(Lib, EntryPoint = "epoll_create1", SetLastError = true)]
    public static partial int EpollCreate1(int flags);

    [LibraryImport(Lib, EntryPoint = "epoll_ctl", SetLastError = true)]
    public static partial int EpollCtl(int epfd, int op, int fd, EpollEvent* ev);

    [LibraryImport(Lib, EntryPoint = "epoll_wait", SetLastError = true)]
    public static partial int EpollWait(int epfd, EpollEvent* events, int maxEvents, int timeoutMs);

    [LibraryImport(Lib, EntryPoint = "poll", SetLastError = true)]
    public static partial int Poll(PollFd* fds, nuint nfds, int timeoutMs);
}

/// <summary>An eventfd: the kick and call doorbells of a virtqueue.</summary>
public sealed unsafe class EventFd : IDisposable
{
    private readonly SafeFd _fd;

    public EventFd(SafeFd fd)
    {
        _fd = fd;
    }

    /// <summary>A new eventfd (counter mode), close-on-exec.</summary>
    public static EventFd Create(bool nonBlocking = false)
    {
        int flags = Libc.EFD_CLOEXEC | (nonBlocking ? Libc.EFD_NONBLOCK : 0);
        return new EventFd(SafeFd.FromResult(Libc.EventFdCreate(0, flags), "eventfd"));
    }

    public SafeFd Handle => _fd;
    public int Fd => _fd.Fd;

    /// <summary>Adds 1 to the counter, waking a reader. Returns 0 or -errno.</summary>
    public int Signal()
    {
        ulong one = 1;
        while (true)
        {
            nint n = Libc.Write(_fd.Fd, (byte*)&one, sizeof(ulong));
            if (n == sizeof(ulong))
            {
                return 0;
            }
            if (Libc.LastErrno != Errno.EINTR)
            {
                return Libc.NegErrno;
            }
        }
    }

    /// <summary>Reads and resets the counter: blocks when the eventfd is blocking and the counter is 0.
    /// Returns the counter, 0 when non-blocking and nothing was pending, or -errno.</summary>
    public long Consume()
    {
        ulong value;
        while (true)
        {
            nint n = Libc.Read(_fd.Fd, (byte*)&value, sizeof(ulong));
            if (n == sizeof(ulong))
            {
                return (long)value;
            }
            var errno = Libc.LastErrno;
            if (errno == Errno.EINTR)
            {
                continue;
            }
            return errno == Errno.EAGAIN ? 0 : -(int)errno;
        }
    }

    public void Dispose() => _fd.Dispose();
}

/// <summary>An epoll instance for loops that wait on several fds.</summary>
public sealed unsafe class Epoll : IDisposable
{
    private readonly SafeFd _fd;

    public Epoll()
    {
        _fd = SafeFd.FromResult(Libc.EpollCreate1(Libc.EPOLL_CLOEXEC), "epoll_create1");
    }

    public int Fd => _fd.Fd;

    public void Add(int fd, uint events, ulong data) => Control(Libc.EPOLL_CTL_ADD, fd, events, data);

    public void Modify(int fd, uint events, ulong data) => Control(Libc.EPOLL_CTL_MOD, fd, events, data);

    /// <summary>Removes fd; a descriptor that is already closed or absent is ignored.</summary>
    public void Remove(int fd)
    {
        EpollEvent ev = default;
        Libc.EpollCtl(_fd.Fd, Libc.EPOLL_CTL_DEL, fd, &ev);
    }

    private void Control(int op, int fd, uint events, ulong data)
    {
        var ev = new EpollEvent { Events = events, Data = data };
        PosixException.Check(Libc.EpollCtl(_fd.Fd, op, fd, &ev), "epoll_ctl");
    }

    /// <summary>Waits for events; returns how many were stored (0 on timeout), retrying on EINTR.</summary>
    public int Wait(Span<EpollEvent> events, int timeoutMs)
    {
        fixed (EpollEvent* p = events)
        {
            while (true)
            {
                int n = Libc.EpollWait(_fd.Fd, p, events.Length, timeoutMs);
                if (n >= 0)
                {
                    return n;
                }
                if (Libc.LastErrno != Errno.EINTR)
                {
                    PosixException.ThrowLast("epoll_wait");
                }
            }
        }
    }

    public void Dispose() => _fd.Dispose();
}
