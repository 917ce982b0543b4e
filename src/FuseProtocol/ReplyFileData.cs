namespace Vhostfsd.FuseProtocol;

/// <summary>A transport's way to carry the data of a READ reply without copying it through the
/// reply buffer: the file system hands over "bytes of file F from offset O" and the transport moves
/// them to their reader itself (the /dev/fuse transport splices the file's pages through a pipe).
/// The data always ends the reply: it follows whatever the <see cref="ReplyWriter"/> holds when the
/// first bytes are appended, and nothing is written after it.
/// <para>A transport that offers one reads <see cref="Start"/> and <see cref="Length"/> after the
/// request to assemble the reply, and calls <see cref="Reset"/> before the next.</para></summary>
public abstract class ReplyFileData
{
    /// <summary>Reply offset at which the appended data starts (-1: nothing appended).</summary>
    public int Start { get; private set; } = -1;

    /// <summary>Bytes appended to the reply so far.</summary>
    public int Length { get; private set; }

    /// <summary>Largest total this transport can carry for one reply; a file system copies a READ
    /// bigger than that through the reply buffer instead.</summary>
    public abstract int Capacity { get; }

    /// <summary>Smallest READ worth carrying by reference: below it a copy costs the transport less
    /// than the extra system calls (0: any).</summary>
    public virtual int MinimumLength => 0;

    /// <summary>Forgets the appended data's position (the transport has sent or discarded it).</summary>
    public void Reset()
    {
        Start = -1;
        Length = 0;
    }

    /// <summary>Called by <see cref="ReplyWriter.AppendFromFile"/>: moves up to <paramref name="length"/>
    /// bytes of <paramref name="fd"/> from <paramref name="offset"/> to the transport. Returns the
    /// bytes moved (0 at end of file) or -errno.</summary>
    protected abstract int Move(int fd, long offset, int length);

    internal int Append(int position, int fd, long offset, int length)
    {
        if (Start >= 0 && position != Start + Length)
        {
            // Something was written after the data: the reply could not be assembled.
            return -(int)Posix.Errno.EIO;
        }
        if (length > Capacity - Length)
        {
            return -(int)Posix.Errno.EFBIG;
        }
        int moved = Move(fd, offset, length);
        if (moved > 0)
        {
            if (Start < 0)
            {
                Start = position;
            }
            Length += Math.Min(moved, length);
        }
        return Math.Min(moved, length);
    }
}
