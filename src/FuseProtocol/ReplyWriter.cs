using System.Runtime.CompilerServices;
using Vhostfsd.Posix;

namespace Vhostfsd.FuseProtocol;

/// <summary>Writes a FUSE reply into scattered writable segments. Never writes past their total:
/// every write checks the space left first and reports failure instead.</summary>
public unsafe ref struct ReplyWriter : IFileDataMover
{
    private readonly ReadOnlySpan<IoVec> _segments;
    private readonly int _capacity;
    private int _position;
    private int _segment;
    private nuint _offset;
    private readonly ReplyFileData? _fileData;

    public ReplyWriter(ReadOnlySpan<IoVec> segments, int capacity)
        : this(segments, capacity, null)
    {
    }

    /// <param name="fileData">The transport's carrier for file data that ends the reply
    /// (<see cref="AppendFromFile"/>), or null when every byte goes through the segments.</param>
    public ReplyWriter(ReadOnlySpan<IoVec> segments, int capacity, ReplyFileData? fileData)
    {
        _segments = segments;
        _capacity = capacity;
        _position = 0;
        _segment = 0;
        _offset = 0;
        _fileData = fileData;
    }

    /// <summary>Whether the transport takes <paramref name="length"/> bytes of file data by reference
    /// (<see cref="AppendFromFile"/>): it offers to, they fit, and they are worth it.</summary>
    public readonly bool TakesFileData(int length) =>
        _fileData is not null && length >= _fileData.MinimumLength && length <= Math.Min(Available, _fileData.Capacity - _fileData.Length);

    int IFileDataMover.MoveFileData(int fd, long offset, int length) => AppendFromFile(fd, offset, length);

    /// <summary>Appends up to <paramref name="length"/> bytes of file <paramref name="fd"/> from
    /// <paramref name="offset"/> to the reply by reference: the transport moves them, the segments
    /// are skipped over, not written. They must end the reply. Returns the bytes appended (0 at end
    /// of file) or -errno; when nothing was appended, the caller may copy into the segments instead.</summary>
    public int AppendFromFile(int fd, long offset, int length)
    {
        if (_fileData is null)
        {
            return -(int)Errno.EOPNOTSUPP;
        }
        if (length < 0 || length > Available)
        {
            return -(int)Errno.EINVAL;
        }
        int moved = _fileData.Append(_position, fd, offset, length);
        if (moved > 0)
        {
            Advance(moved);
        }
        return moved;
    }

    /// <summary>Segments from the current position on: an upper bound on the iovecs Describe needs.</summary>
    public readonly int SegmentsLeft => _segments.Length - _segment;

    /// <summary>Total writable bytes.</summary>
    public readonly int Capacity => _capacity;

    /// <summary>Current write position (bytes from the start of the reply).</summary>
    public readonly int Position => _position;

    /// <summary>Bytes left after the current position.</summary>
    public readonly int Available => _capacity - _position;

    /// <summary>Moves the write position to <paramref name="position"/> (0..Capacity).</summary>
    public void Seek(int position)
    {
        if (position < 0 || position > _capacity)
        {
            throw new ArgumentOutOfRangeException(nameof(position));
        }
        _position = 0;
        _segment = 0;
        _offset = 0;
        Advance(position);
    }

    /// <summary>Moves forward <paramref name="count"/> bytes (data already placed by preadv2 or Describe users).</summary>
    public void Advance(int count)
    {
        if (count < 0 || count > Available)
        {
            throw new ArgumentOutOfRangeException(nameof(count));
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
        _position += count;
    }

    public bool TryWrite<T>(in T value) where T : unmanaged
    {
        // SAFETY: value is a readonly reference to sizeof(T) bytes; we only read them.
        return TryWrite(new ReadOnlySpan<byte>(Unsafe.AsPointer(ref Unsafe.AsRef(in value)), sizeof(T)));
    }

    /// <summary>Writes all of <paramref name="source"/> or nothing.</summary>
    public bool TryWrite(scoped ReadOnlySpan<byte> source)
    {
        if (source.Length > Available)
        {
            return false;
        }
        int done = 0;
        while (done < source.Length)
        {
            IoVec seg = _segments[_segment];
            nuint available = seg.Length - _offset;
            if (available == 0)
            {
                _segment++;
                _offset = 0;
                continue;
            }
            int n = (int)Math.Min((nuint)(source.Length - done), available);
            // SAFETY: [Base + _offset, + n) lies inside this writable segment (n <= Length - _offset).
            source.Slice(done, n).CopyTo(new Span<byte>((byte*)seg.Base + _offset, n));
            _offset += (nuint)n;
            done += n;
        }
        _position += source.Length;
        return true;
    }

    /// <summary>Writes <paramref name="count"/> zero bytes (record padding) or nothing.</summary>
    public bool TryWriteZeros(int count)
    {
        Span<byte> zeros = stackalloc byte[8];
        zeros.Clear();
        if (count > Available)
        {
            return false;
        }
        while (count > 0)
        {
            int n = Math.Min(count, 8);
            TryWrite(zeros[..n]);
            count -= n;
        }
        return true;
    }

    /// <summary>Describes the next <paramref name="count"/> writable bytes as iovecs (for preadv2)
    /// without advancing. Returns the iovec count, or -1 when they do not fit.</summary>
    public readonly int Describe(int count, Span<IoVec> destination)
    {
        if (count > Available)
        {
            return -1;
        }
        return SegmentSpan.Describe(_segments, _segment, _offset, count, destination);
    }
}
