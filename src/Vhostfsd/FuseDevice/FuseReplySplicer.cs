using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.FuseDevice;

/// <summary>One reader's zero-copy path for READ replies. The file system appends file data
/// (<see cref="ReplyWriter.AppendFromFile"/>): splice(2) puts references to the file's page-cache
/// (or tmpfs) pages into the data pipe, no copy. To send, the reply's header is written into the
/// reply pipe, the data pipe's buffers are spliced after it (a pipe-to-pipe splice moves buffer
/// references), and the reply pipe is spliced to /dev/fuse, where the kernel makes the one copy
/// left: into the caller's pages. Two pipes because the header must come first and its length is
/// known only once the data is in (a read may stop short at end of file).
/// <para>Never SPLICE_F_MOVE towards /dev/fuse: for a cached READ the kernel would then try to steal
/// the pipe's pages into the FUSE file's page cache, and these pages belong to the shared file.</para>
/// <para>Both pipes are non-blocking and empty between requests: every failure drains them, either
/// back into the reply buffer (the reply is then written as before) or away.</para></summary>
internal sealed unsafe class FuseReplySplicer : ReplyFileData, IDisposable
{
    /// <summary>Pipe size wanted: a maximal READ (256 pages, 257 slots when the file offset is not
    /// page-aligned) plus the header's slot fits in a pipe of 512 slots, the next power of two.</summary>
    public const int WantedPipeBytes = 2 << 20;

    private const int PageSize = 4096;

    /// <summary>Smallest READ spliced: a splice reply takes four system calls instead of two
    /// (preadv2 and write), about 2 µs more, which a copy of fewer than 64 KiB costs less than.</summary>
    public const int Threshold = 64 * 1024;

    private int _dataRead;
    private int _dataWrite;
    private int _replyRead;
    private int _replyWrite;
    private readonly int _capacity;

    private FuseReplySplicer(int* data, int* reply, int pipeBytes)
    {
        _dataRead = data[0];
        _dataWrite = data[1];
        _replyRead = reply[0];
        _replyWrite = reply[1];
        // Room for the header's slot and for one partly used page at each end of the data.
        _capacity = pipeBytes - 2 * PageSize;
    }

    /// <summary>The largest READ this splicer carries: at least <see cref="FuseServer.MaxWrite"/> with
    /// pipes of <see cref="WantedPipeBytes"/>; less when they could not grow (larger READs are copied).</summary>
    public override int Capacity => _capacity;

    public override int MinimumLength => Threshold;

    /// <summary>Makes the two pipes and grows them towards <see cref="WantedPipeBytes"/>. Null, with
    /// the reason, when pipes cannot be made or do not even hold a page of data.</summary>
    public static FuseReplySplicer? TryCreate(out string? failure)
    {
        int* data = stackalloc int[2];
        int* reply = stackalloc int[2];
        failure = null;
        if (Libc.Pipe2(data, Libc.O_NONBLOCK | Libc.O_CLOEXEC) < 0)
        {
            failure = "pipe2: " + PosixException.Describe(Libc.LastErrno);
            return null;
        }
        if (Libc.Pipe2(reply, Libc.O_NONBLOCK | Libc.O_CLOEXEC) < 0)
        {
            failure = "pipe2: " + PosixException.Describe(Libc.LastErrno);
            Libc.Close(data[0]);
            Libc.Close(data[1]);
            return null;
        }
        int size = Math.Min(Grow(data[1]), Grow(reply[1]));
        var splicer = new FuseReplySplicer(data, reply, size);
        if (splicer._capacity < PageSize)
        {
            failure = $"pipes of {size} bytes";
            splicer.Dispose();
            return null;
        }
        return splicer;
    }

    /// <summary>Grows a pipe to <see cref="WantedPipeBytes"/>, or as far as fs.pipe-max-size lets a
    /// process without CAP_SYS_RESOURCE; returns its size.</summary>
    private static int Grow(int fd)
    {
        for (int size = WantedPipeBytes; size > PageSize; size /= 2)
        {
            int got = Libc.Fcntl(fd, Libc.F_SETPIPE_SZ, size);
            if (got >= size)
            {
                return got;
            }
        }
        int current = Libc.Fcntl(fd, Libc.F_GETPIPE_SZ, 0);
        return Math.Max(current, 0);
    }

    protected override int Move(int fd, long offset, int length)
    {
        long position = offset;
        nint n = Libc.Splice(fd, &position, _dataWrite, null, (nuint)length, Libc.SPLICE_F_NONBLOCK);
        return n < 0 ? Libc.NegErrno : (int)n;
    }

    /// <summary>Sends <paramref name="reply"/>[0..<see cref="ReplyFileData.Start"/>) followed by the
    /// appended data to <paramref name="device"/> as one reply. 0 when sent; -errno of /dev/fuse when
    /// it refused the reply (the pipes are empty again); 1 when the reply could not be assembled in
    /// the pipes: its data was then copied back into <paramref name="reply"/> after the header, which
    /// holds the whole reply to write instead (<paramref name="replyCapacity"/> bounds the copy).</summary>
    public int Send(int device, byte* reply, int replyCapacity, bool failAssembly)
    {
        int start = Start;
        int length = Length;
        bool headerIn = false;
        int moved = 0;
        if (!failAssembly && Libc.Write(_replyWrite, reply, (nuint)start) == start)
        {
            headerIn = true;
            while (moved < length)
            {
                nint n = Libc.Splice(_dataRead, null, _replyWrite, null, (nuint)(length - moved), Libc.SPLICE_F_NONBLOCK);
                if (n < 0 && Libc.LastErrno == Errno.EINTR)
                {
                    continue;
                }
                if (n <= 0)
                {
                    break;
                }
                moved += (int)n;
            }
        }
        if (moved == length && headerIn)
        {
            while (true)
            {
                nint n = Libc.Splice(_replyRead, null, device, null, (nuint)(start + length), 0);
                if (n >= 0)
                {
                    return 0;
                }
                var errno = Libc.LastErrno;
                if (errno == Errno.EINTR)
                {
                    continue;
                }
                // Whatever /dev/fuse left in the pipe goes: the reply is answered or gone.
                Discard(reply, replyCapacity);
                return -(int)errno;
            }
        }
        // Could not assemble: copy the bytes back, in order, into the reply buffer.
        int at = 0;
        if (headerIn)
        {
            at = DrainInto(_replyRead, reply, replyCapacity);
        }
        else
        {
            at = start;
        }
        at += DrainInto(_dataRead, reply + at, replyCapacity - at);
        if (at != start + length)
        {
            Discard(reply, replyCapacity);
            return -(int)Errno.EIO;
        }
        return 1;
    }

    /// <summary>Drops whatever the pipes hold (the reply became an error, or was refused), using
    /// <paramref name="scratch"/> as the place to read it into.</summary>
    public void Discard(byte* scratch, int size)
    {
        DrainInto(_replyRead, scratch, size, discard: true);
        DrainInto(_dataRead, scratch, size, discard: true);
    }

    /// <summary>Reads a pipe until it is empty (it never blocks: non-blocking). Returns the bytes read;
    /// when not <paramref name="discard"/>, stops at <paramref name="size"/>.</summary>
    private static int DrainInto(int pipe, byte* buffer, int size, bool discard = false)
    {
        int total = 0;
        while (true)
        {
            int room = discard ? size : size - total;
            if (room <= 0)
            {
                return total;
            }
            nint n = Libc.Read(pipe, discard ? buffer : buffer + total, (nuint)room);
            if (n < 0 && Libc.LastErrno == Errno.EINTR)
            {
                continue;
            }
            if (n <= 0)
            {
                return total;
            }
            total += (int)n;
        }
    }

    public void Dispose()
    {
        foreach (int fd in new[] { _dataRead, _dataWrite, _replyRead, _replyWrite })
        {
            if (fd >= 0)
            {
                Libc.Close(fd);
            }
        }
        _dataRead = _dataWrite = _replyRead = _replyWrite = -1;
    }
}
