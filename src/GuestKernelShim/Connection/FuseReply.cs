using Vhostfsd.Posix;

namespace Vhostfsd.GuestKernelShim;

/// <summary>The outcome of one request: 0 or a negative errno (from the daemon's fuse_out_header,
/// or from the connection: ENOTCONN, EINTR, EIO for a malformed reply), and the number of reply
/// bytes (after fuse_out_header) copied into the caller's reply buffer.</summary>
public readonly struct FuseReply
{
    public FuseReply(int error, int length)
    {
        Error = error;
        Length = length;
    }

    /// <summary>0, or a negative errno.</summary>
    public int Error { get; }

    /// <summary>Bytes of reply payload written to the caller's buffer (0 when <see cref="Error"/> is set).</summary>
    public int Length { get; }

    public bool IsOk => Error == 0;

    /// <summary>The error as an <see cref="Errno"/> (OK for success).</summary>
    public Errno Errno => (Errno)(-Error);

    public static FuseReply Fail(Errno errno) => new(-(int)errno, 0);

    public override string ToString() => Error == 0 ? $"ok, {Length} bytes" : $"error {Errno}";
}

/// <summary>How a reply's length is checked (Linux: fixed out-args must be exact; an out_argvar
/// reply may be shorter than the buffer).</summary>
public enum FuseReplyShape
{
    /// <summary>Exactly the size of the reply buffer (entry_out, attr_out, open_out, ...).</summary>
    Fixed,
    /// <summary>Any length up to the size of the reply buffer (READ, READDIR, READLINK, xattr data, INIT).</summary>
    Variable,
}

/// <summary>The argument segments of a request, in order (fuse_args.in_args): up to four spans.
/// Transports copy them once, behind the fuse_in_header, into the request buffer.</summary>
public readonly ref struct FuseArgs
{
    public FuseArgs(ReadOnlySpan<byte> arg0)
    {
        Arg0 = arg0;
        Count = 1;
    }

    public FuseArgs(ReadOnlySpan<byte> arg0, ReadOnlySpan<byte> arg1)
    {
        Arg0 = arg0;
        Arg1 = arg1;
        Count = 2;
    }

    public FuseArgs(ReadOnlySpan<byte> arg0, ReadOnlySpan<byte> arg1, ReadOnlySpan<byte> arg2)
    {
        Arg0 = arg0;
        Arg1 = arg1;
        Arg2 = arg2;
        Count = 3;
    }

    public FuseArgs(ReadOnlySpan<byte> arg0, ReadOnlySpan<byte> arg1, ReadOnlySpan<byte> arg2, ReadOnlySpan<byte> arg3)
    {
        Arg0 = arg0;
        Arg1 = arg1;
        Arg2 = arg2;
        Arg3 = arg3;
        Count = 4;
    }

    public ReadOnlySpan<byte> Arg0 { get; }
    public ReadOnlySpan<byte> Arg1 { get; }
    public ReadOnlySpan<byte> Arg2 { get; }
    public ReadOnlySpan<byte> Arg3 { get; }

    /// <summary>Number of segments (0..4).</summary>
    public int Count { get; }

    public int TotalLength => Arg0.Length + Arg1.Length + Arg2.Length + Arg3.Length;

    public ReadOnlySpan<byte> this[int index] => index switch
    {
        0 => Arg0,
        1 => Arg1,
        2 => Arg2,
        3 => Arg3,
        _ => throw new ArgumentOutOfRangeException(nameof(index)),
    };

    /// <summary>Copies every segment, in order, to <paramref name="destination"/>; returns the bytes written.</summary>
    public int CopyTo(Span<byte> destination)
    {
        int offset = 0;
        Arg0.CopyTo(destination);
        offset += Arg0.Length;
        Arg1.CopyTo(destination[offset..]);
        offset += Arg1.Length;
        Arg2.CopyTo(destination[offset..]);
        offset += Arg2.Length;
        Arg3.CopyTo(destination[offset..]);
        return offset + Arg3.Length;
    }
}
