using System.Runtime.CompilerServices;
using Vhostfsd.Posix;

namespace Vhostfsd.FuseProtocol;

/// <summary>Reads a FUSE request that lies in scattered readable segments (which may split anywhere,
/// even inside a header). Everything is copied out into private memory before it is looked at,
/// because the segments may be guest memory that the guest can change under us; only WRITE payloads
/// are handed on in place (as iovecs for pwritev2).</summary>
public unsafe ref struct RequestReader : IFileDataMover
{
    private ReadOnlySpan<IoVec> _segments;
    private int _segment;
    private nuint _offset;
    private int _remaining;
    private RequestFileData? _fileData;

    /// <param name="segments">The readable segments; callers guarantee each describes valid memory.</param>
    /// <param name="length">Request bytes to expose (at most the segments' total).</param>
    public RequestReader(ReadOnlySpan<IoVec> segments, int length)
        : this(segments, length, null)
    {
    }

    /// <param name="fileData">The rest of the request, held by the transport after the segments'
    /// <paramref name="length"/> bytes (a WRITE's data), or null.</param>
    public RequestReader(ReadOnlySpan<IoVec> segments, int length, RequestFileData? fileData)
    {
        _segments = segments;
        _segment = 0;
        _offset = 0;
        _remaining = length;
        _fileData = fileData;
    }

    /// <summary>Segments from the current position on: an upper bound on the iovecs Describe needs.</summary>
    public readonly int SegmentsLeft => _segments.Length - _segment;

    /// <summary>Bytes of the request not consumed yet, those the transport holds included.</summary>
    public readonly int Remaining => _remaining + HeldRemaining;

    /// <summary>Bytes of the request the transport holds outside the segments (see
    /// <see cref="RequestFileData"/>). They can only be moved to a file or fetched, once every byte
    /// in the segments has been consumed; TryRead, TryCopy, Skip and Describe stop before them.</summary>
    public readonly int HeldRemaining => _fileData?.Length ?? 0;

    int IFileDataMover.MoveFileData(int fd, long offset, int length) => MoveToFile(fd, offset, length);

    /// <summary>Moves up to <paramref name="length"/> held bytes into <paramref name="fd"/> at
    /// <paramref name="offset"/> (splice: no copy through this process). Returns the bytes moved or
    /// -errno; when nothing was moved, <see cref="FetchFileData"/> gives the bytes in memory instead.</summary>
    public int MoveToFile(int fd, long offset, int length)
    {
        if (_fileData is null || _remaining != 0)
        {
            return -(int)Errno.EOPNOTSUPP;
        }
        if (length < 0 || length > _fileData.Length)
        {
            return -(int)Errno.EINVAL;
        }
        return _fileData.MoveTo(fd, offset, length);
    }

    /// <summary>Brings the held bytes into memory: from then on they are ordinary segments, for
    /// Describe and the rest. True when there were none; false when the transport could not.</summary>
    public bool FetchFileData()
    {
        if (_fileData is null || _fileData.Length == 0)
        {
            return true;
        }
        if (_remaining != 0 || !_fileData.FetchAll(out ReadOnlySpan<IoVec> segments, out int length))
        {
            return false;
        }
        _fileData = null;
        _segments = segments;
        _segment = 0;
        _offset = 0;
        _remaining = length;
        return true;
    }

    /// <summary>Sum of the segment lengths, saturated at int.MaxValue.</summary>
    public static int TotalLength(ReadOnlySpan<IoVec> segments)
    {
        ulong total = 0;
        foreach (ref readonly IoVec s in segments)
        {
            total += s.Length;
            if (total > int.MaxValue)
            {
                return int.MaxValue;
            }
        }
        return (int)total;
    }

    /// <summary>Copies the next sizeof(T) bytes into <paramref name="value"/>; false (nothing consumed) when too few remain.</summary>
    public bool TryRead<T>(out T value) where T : unmanaged
    {
        value = default;
        // SAFETY: value is a local of exactly sizeof(T) bytes.
        return TryCopy(new Span<byte>(Unsafe.AsPointer(ref value), sizeof(T)));
    }

    /// <summary>Copies the next <paramref name="destination"/>.Length bytes; false (nothing consumed) when too few remain.</summary>
    public bool TryCopy(scoped Span<byte> destination)
    {
        if (destination.Length > _remaining)
        {
            return false;
        }
        int done = 0;
        while (done < destination.Length)
        {
            IoVec seg = _segments[_segment];
            nuint available = seg.Length - _offset;
            if (available == 0)
            {
                _segment++;
                _offset = 0;
                continue;
            }
            int n = (int)Math.Min((nuint)(destination.Length - done), available);
            // SAFETY: [Base + _offset, + n) lies inside this segment (n <= Length - _offset), and the
            // caller of HandleRequest guarantees the segment is readable memory.
            new ReadOnlySpan<byte>((byte*)seg.Base + _offset, n).CopyTo(destination[done..]);
            _offset += (nuint)n;
            done += n;
        }
        _remaining -= destination.Length;
        return true;
    }

    /// <summary>Skips <paramref name="count"/> bytes; false when fewer remain.</summary>
    public bool Skip(int count)
    {
        if (count < 0 || count > _remaining)
        {
            return false;
        }
        int left = count;
        while (left > 0)
        {
            IoVec seg = _segments[_segment];
            nuint available = seg.Length - _offset;
            if (available == 0)
            {
                _segment++;
                _offset = 0;
                continue;
            }
            int n = (int)Math.Min((nuint)left, available);
            _offset += (nuint)n;
            left -= n;
        }
        _remaining -= count;
        return true;
    }

    /// <summary>Describes the next <paramref name="count"/> bytes as iovecs pointing into the
    /// segments (for pwritev2) without consuming them. Returns how many iovecs were filled, or -1
    /// when <paramref name="destination"/> is too small or fewer bytes remain.</summary>
    public readonly int Describe(int count, Span<IoVec> destination)
    {
        if (count > _remaining)
        {
            return -1;
        }
        return SegmentSpan.Describe(_segments, _segment, _offset, count, destination);
    }
}
