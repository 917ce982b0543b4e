using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.FuseDevice;

/// <summary>One reader's path for WRITE data by splice. While large WRITEs come (the reader
/// decides), requests are spliced from /dev/fuse into a pipe: the kernel copies the headers and
/// arguments into a pipe page, and the data follows — references to the FUSE page cache's pages for
/// a write-back, copies of the caller's pages for a direct-I/O WRITE (/dev/fuse does not lend those
/// out). The reader then reads the request's first <see cref="WriteHeaders"/> bytes into its
/// buffer: a WRITE's data stays in the pipe (held, <see cref="RequestFileData"/>) until the file
/// system splices it into the file; any other request is read whole. Either way the pass through
/// the reader's buffer in user space is saved.
/// <para>Only with a pipe that holds a maximal request: /dev/fuse fails a request (EIO to its
/// caller) that does not fit the pipe it is spliced into. The pipe is non-blocking and empty
/// between requests.</para></summary>
internal sealed unsafe class FuseRequestSplicer : RequestFileData, IDisposable
{
    /// <summary>fuse_in_header and fuse_write_in: what precedes a WRITE's data.</summary>
    public const int WriteHeaders = FuseInHeader.Size + FuseWriteIn.Size;

    /// <summary>Smallest WRITE whose data is worth splicing (as <see cref="FuseReplySplicer.Threshold"/>).</summary>
    public const int Threshold = FuseReplySplicer.Threshold;

    private int _read;
    private int _write;
    private byte* _buffer;
    private int _bufferSize;
    private readonly bool _failMoves;
    private readonly IoVec[] _fetched = new IoVec[1];

    private FuseRequestSplicer(int* fds, bool failMoves)
    {
        _read = fds[0];
        _write = fds[1];
        _failMoves = failMoves;
    }

    /// <summary>The reader's request buffer, where requests are read to (from its start) and held
    /// data is fetched to (after <see cref="WriteHeaders"/>): set before the first request.</summary>
    public void UseBuffer(byte* buffer, int size)
    {
        _buffer = buffer;
        _bufferSize = size;
    }

    /// <summary>WRITEs whose data went to the file by splice, and those fetched into memory instead.</summary>
    public long Moved { get; private set; }

    public long Fetched { get; private set; }

    /// <summary>A pipe of <see cref="FuseReplySplicer.WantedPipeBytes"/>, or null when the pipe cannot
    /// grow that far. <paramref name="failMoves"/>: test hook, every move into a file fails, so the
    /// data is fetched.</summary>
    public static FuseRequestSplicer? TryCreate(bool failMoves)
    {
        int* fds = stackalloc int[2];
        if (Libc.Pipe2(fds, Libc.O_NONBLOCK | Libc.O_CLOEXEC) < 0)
        {
            return null;
        }
        if (Libc.Fcntl(fds[1], Libc.F_SETPIPE_SZ, FuseReplySplicer.WantedPipeBytes) < FuseReplySplicer.WantedPipeBytes)
        {
            Libc.Close(fds[0]);
            Libc.Close(fds[1]);
            return null;
        }
        return new FuseRequestSplicer(fds, failMoves);
    }

    /// <summary>Receives the next request: splices it from <paramref name="device"/> into the pipe and
    /// reads into the buffer all of it but a WRITE's data, which stays held. Returns the bytes in the
    /// buffer, or -1 with the errno of /dev/fuse (as read(2) would), or -2 when the pipe did not give
    /// back what the kernel put in (the request is lost; the reader stops).</summary>
    public int Receive(int device)
    {
        Hold(0);
        nint total = Libc.Splice(device, null, _write, null, (nuint)_bufferSize, 0);
        if (total < 0)
        {
            return -1;
        }
        int first = (int)Math.Min(total, WriteHeaders);
        if (ReadFully(_buffer, first) != first)
        {
            return -2;
        }
        if (total == first)
        {
            return first;
        }
        // SAFETY: the buffer holds a whole fuse_in_header (total > WriteHeaders).
        uint opcode = ((FuseInHeader*)_buffer)->Opcode;
        if (opcode == (uint)FuseOpcode.Write)
        {
            Hold((int)(total - first));
            return first;
        }
        int rest = (int)(total - first);
        return ReadFully(_buffer + first, rest) == rest ? (int)total : -2;
    }

    protected override int Move(int fd, long offset, int length)
    {
        if (_failMoves)
        {
            return -(int)Errno.EINVAL;
        }
        long position = offset;
        nint n = Libc.Splice(_read, null, fd, &position, (nuint)length, Libc.SPLICE_F_NONBLOCK);
        if (n > 0 && Length == n)
        {
            Moved++;
        }
        return n < 0 ? Libc.NegErrno : (int)n;
    }

    protected override bool Fetch(int length, out ReadOnlySpan<IoVec> segments)
    {
        segments = default;
        if (length > _bufferSize - WriteHeaders || ReadFully(_buffer + WriteHeaders, length) != length)
        {
            return false;
        }
        Fetched++;
        _fetched[0] = new IoVec(_buffer + WriteHeaders, (nuint)length);
        segments = _fetched;
        return true;
    }

    /// <summary>Drops what the file system left of a WRITE's data, reading it into
    /// <paramref name="scratch"/>.</summary>
    public void Discard(byte* scratch, int size)
    {
        while (Length > 0)
        {
            nint n = Libc.Read(_read, scratch, (nuint)Math.Min(size, Length));
            if (n < 0 && Libc.LastErrno == Errno.EINTR)
            {
                continue;
            }
            if (n <= 0)
            {
                break;
            }
            Hold(Length - (int)n);
        }
        Hold(0);
    }

    private int ReadFully(byte* to, int length)
    {
        int done = 0;
        while (done < length)
        {
            nint n = Libc.Read(_read, to + done, (nuint)(length - done));
            if (n < 0 && Libc.LastErrno == Errno.EINTR)
            {
                continue;
            }
            if (n <= 0)
            {
                break;
            }
            done += (int)n;
        }
        return done;
    }

    public void Dispose()
    {
        if (_read >= 0)
        {
            Libc.Close(_read);
            Libc.Close(_write);
        }
        _read = _write = -1;
    }
}
