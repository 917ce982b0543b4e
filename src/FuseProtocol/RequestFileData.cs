using Vhostfsd.Posix;

namespace Vhostfsd.FuseProtocol;

/// <summary>A transport's way to hold the data of a WRITE request outside the readable segments: the
/// /dev/fuse transport leaves it in a pipe, and the file system moves it into the file by splice (<see cref="RequestReader.MoveToFile"/>), or asks for it in
/// memory (<see cref="RequestReader.FetchFileData"/>) when it cannot. The held bytes always end the
/// request: they follow the readable segments.
/// <para>A transport that offers one sets <see cref="Hold"/> before the request and, after it, drops
/// whatever the file system left (an error answered before the data was needed).</para></summary>
public abstract class RequestFileData
{
    /// <summary>Request bytes still held after the segments.</summary>
    public int Length { get; private set; }

    /// <summary>The transport holds <paramref name="length"/> bytes of the next request.</summary>
    protected void Hold(int length) => Length = length;

    /// <summary>Moves up to <paramref name="length"/> held bytes into <paramref name="fd"/> at
    /// <paramref name="offset"/>. Returns the bytes moved or -errno.</summary>
    protected abstract int Move(int fd, long offset, int length);

    /// <summary>Copies the <paramref name="length"/> held bytes into the transport's memory and
    /// describes them; false when it cannot (the request is then answered EIO).</summary>
    protected abstract bool Fetch(int length, out ReadOnlySpan<IoVec> segments);

    internal int MoveTo(int fd, long offset, int length)
    {
        int moved = Move(fd, offset, Math.Min(length, Length));
        if (moved > 0)
        {
            Length -= Math.Min(moved, Length);
        }
        return moved;
    }

    internal bool FetchAll(out ReadOnlySpan<IoVec> segments, out int length)
    {
        length = Length;
        Length = 0;
        return Fetch(length, out segments);
    }
}
