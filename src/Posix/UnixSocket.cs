namespace Vhostfsd.Posix;

/// <summary>An AF_UNIX stream socket with blocking message I/O and SCM_RIGHTS fd passing,
/// the transport of vhost-user.</summary>
public sealed unsafe class UnixSocket : IDisposable
{
    /// <summary>Most fds one message may carry (vhost-user's VHOST_MEMORY_BASELINE_NREGIONS).</summary>
    public const int MaxFds = 8;

    private readonly SafeFd _fd;

    public UnixSocket(SafeFd fd)
    {
        _fd = fd;
    }

    public SafeFd Handle => _fd;
    public int Fd => _fd.Fd;

    /// <summary>Creates, binds and listens on <paramref name="path"/>.</summary>
    public static UnixSocket Listen(string path, int backlog = 1)
    {
        uint len = Libc.MakeUnixAddress(path, out SockAddrUn addr);
        var fd = SafeFd.FromResult(Libc.Socket(Libc.AF_UNIX, Libc.SOCK_STREAM | Libc.SOCK_CLOEXEC, 0), "socket");
        try
        {
            PosixException.Check(Libc.Bind(fd.Fd, &addr, len), "bind " + path);
            PosixException.Check(Libc.Listen(fd.Fd, backlog), "listen " + path);
            return new UnixSocket(fd);
        }
        catch
        {
            fd.Dispose();
            throw;
        }
    }

    /// <summary>Connects to a listening socket at <paramref name="path"/>.</summary>
    public static UnixSocket Connect(string path)
    {
        uint len = Libc.MakeUnixAddress(path, out SockAddrUn addr);
        var fd = SafeFd.FromResult(Libc.Socket(Libc.AF_UNIX, Libc.SOCK_STREAM | Libc.SOCK_CLOEXEC, 0), "socket");
        try
        {
            while (Libc.Connect(fd.Fd, &addr, len) < 0)
            {
                if (Libc.LastErrno != Errno.EINTR)
                {
                    PosixException.ThrowLast("connect " + path);
                }
            }
            return new UnixSocket(fd);
        }
        catch
        {
            fd.Dispose();
            throw;
        }
    }

    /// <summary>A connected pair (for tests and in-process transports).</summary>
    public static (UnixSocket, UnixSocket) Pair()
    {
        int* sv = stackalloc int[2];
        PosixException.Check(Libc.SocketPair(Libc.AF_UNIX, Libc.SOCK_STREAM | Libc.SOCK_CLOEXEC, 0, sv), "socketpair");
        return (new UnixSocket(new SafeFd(sv[0])), new UnixSocket(new SafeFd(sv[1])));
    }

    /// <summary>Blocks until a peer connects.</summary>
    public UnixSocket Accept()
    {
        while (true)
        {
            int fd = Libc.Accept4(_fd.Fd, null, null, Libc.SOCK_CLOEXEC);
            if (fd >= 0)
            {
                return new UnixSocket(new SafeFd(fd));
            }
            if (Libc.LastErrno != Errno.EINTR)
            {
                PosixException.ThrowLast("accept");
            }
        }
    }

    /// <summary>Credentials of the connected peer.</summary>
    public UCred PeerCredentials()
    {
        UCred cred;
        uint len = (uint)sizeof(UCred);
        PosixException.Check(Libc.GetSockOpt(_fd.Fd, Libc.SOL_SOCKET, Libc.SO_PEERCRED, &cred, &len), "getsockopt(SO_PEERCRED)");
        return cred;
    }

    /// <summary>Sends <paramref name="data"/> in full; the fds ride with the first byte.</summary>
    public void Send(ReadOnlySpan<byte> data, ReadOnlySpan<int> fds = default)
    {
        if (fds.Length > MaxFds)
        {
            throw new ArgumentException($"at most {MaxFds} fds per message", nameof(fds));
        }
        const int cmsgSpace = 16 + MaxFds * sizeof(int);
        byte* control = stackalloc byte[cmsgSpace];
        fixed (byte* p = data)
        {
            int sent = 0;
            bool first = true;
            while (sent < data.Length || (first && data.Length == 0))
            {
                var iov = new IoVec(p + sent, (nuint)(data.Length - sent));
                var msg = new MsgHdr { Iov = &iov, IovLen = 1 };
                if (first && fds.Length > 0)
                {
                    var hdr = (CMsgHdr*)control;
                    hdr->Len = (nuint)(sizeof(CMsgHdr) + fds.Length * sizeof(int));
                    hdr->Level = Libc.SOL_SOCKET;
                    hdr->Type = Libc.SCM_RIGHTS;
                    fds.CopyTo(new Span<int>(control + sizeof(CMsgHdr), fds.Length));
                    msg.Control = control;
                    // CMSG_SPACE: header + data rounded up to 8 bytes.
                    msg.ControlLen = (nuint)(sizeof(CMsgHdr) + ((fds.Length * sizeof(int) + 7) & ~7));
                }
                nint n = Libc.SendMsg(_fd.Fd, &msg, Libc.MSG_NOSIGNAL);
                if (n < 0)
                {
                    if (Libc.LastErrno == Errno.EINTR)
                    {
                        continue;
                    }
                    PosixException.ThrowLast("sendmsg");
                }
                first = false;
                sent += (int)n;
                if (data.Length == 0)
                {
                    break;
                }
            }
        }
    }

    /// <summary>Receives up to <paramref name="buffer"/>.Length bytes. Any fds that arrive are
    /// stored in <paramref name="fds"/> (close-on-exec) and counted in <paramref name="fdCount"/>;
    /// fds beyond the span are closed and reported as truncation. Returns bytes read, 0 at EOF.</summary>
    public int Receive(Span<byte> buffer, Span<int> fds, out int fdCount, out bool fdsTruncated)
    {
        const int cmsgSpace = 16 + MaxFds * sizeof(int) + 64;
        byte* control = stackalloc byte[cmsgSpace];
        fdCount = 0;
        fdsTruncated = false;
        fixed (byte* p = buffer)
        {
            var iov = new IoVec(p, (nuint)buffer.Length);
            var msg = new MsgHdr { Iov = &iov, IovLen = 1, Control = control, ControlLen = cmsgSpace };
            nint n;
            while ((n = Libc.RecvMsg(_fd.Fd, &msg, Libc.MSG_CMSG_CLOEXEC)) < 0)
            {
                if (Libc.LastErrno != Errno.EINTR)
                {
                    PosixException.ThrowLast("recvmsg");
                }
            }
            if ((msg.Flags & Libc.MSG_CTRUNC) != 0)
            {
                fdsTruncated = true;
            }
            // Walk the control messages (CMSG_FIRSTHDR / CMSG_NXTHDR).
            nuint offset = 0;
            while (offset + (nuint)sizeof(CMsgHdr) <= msg.ControlLen)
            {
                var hdr = (CMsgHdr*)(control + offset);
                if (hdr->Len < (nuint)sizeof(CMsgHdr) || offset + hdr->Len > msg.ControlLen)
                {
                    break;
                }
                if (hdr->Level == Libc.SOL_SOCKET && hdr->Type == Libc.SCM_RIGHTS)
                {
                    int count = (int)((hdr->Len - (nuint)sizeof(CMsgHdr)) / sizeof(int));
                    int* received = (int*)(control + offset + (nuint)sizeof(CMsgHdr));
                    for (int i = 0; i < count; i++)
                    {
                        if (fdCount < fds.Length)
                        {
                            fds[fdCount++] = received[i];
                        }
                        else
                        {
                            Libc.Close(received[i]);
                            fdsTruncated = true;
                        }
                    }
                }
                offset += (hdr->Len + 7) & ~(nuint)7;
            }
            return (int)n;
        }
    }

    /// <summary>Reads exactly <paramref name="buffer"/>.Length bytes (no fds expected); false at EOF before the first byte.
    /// Throws EndOfStreamException when the stream ends part-way.</summary>
    public bool ReceiveExactly(Span<byte> buffer)
    {
        int got = 0;
        Span<int> none = stackalloc int[MaxFds];
        while (got < buffer.Length)
        {
            int n = Receive(buffer[got..], none, out int fdCount, out _);
            for (int i = 0; i < fdCount; i++)
            {
                Libc.Close(none[i]);
            }
            if (n == 0)
            {
                if (got == 0)
                {
                    return false;
                }
                throw new EndOfStreamException($"connection closed after {got} of {buffer.Length} bytes");
            }
            got += n;
        }
        return true;
    }

    /// <summary>Shuts both directions down, waking any thread blocked on this socket.</summary>
    public void ShutdownBoth() => Libc.Shutdown(_fd.Fd, Libc.SHUT_RDWR);

    public void Dispose() => _fd.Dispose();
}
