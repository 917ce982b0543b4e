using Vhostfsd.Posix;

namespace Vhostfsd.FuseProtocol;

/// <summary>What the request reader and the reply writer share: describing the next bytes of a
/// segment list, from a position inside it, as iovecs for one vectored system call.</summary>
internal static unsafe class SegmentSpan
{
    /// <summary>Fills <paramref name="destination"/> with iovecs for <paramref name="count"/> bytes
    /// of <paramref name="segments"/> starting at byte <paramref name="offset"/> of segment
    /// <paramref name="segment"/> (the caller has checked that many bytes are there). Returns how
    /// many iovecs were filled, or -1 when <paramref name="destination"/> is too small.</summary>
    public static int Describe(ReadOnlySpan<IoVec> segments, int segment, nuint offset, int count, Span<IoVec> destination)
    {
        int filled = 0;
        int left = count;
        while (left > 0)
        {
            IoVec seg = segments[segment];
            nuint available = seg.Length - offset;
            if (available == 0)
            {
                segment++;
                offset = 0;
                continue;
            }
            if (filled == destination.Length)
            {
                return -1;
            }
            int n = (int)Math.Min((nuint)left, available);
            destination[filled++] = new IoVec((byte*)seg.Base + offset, (nuint)n);
            offset += (nuint)n;
            left -= n;
        }
        return filled;
    }
}
