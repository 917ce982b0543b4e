using Vhostfsd.Posix;

namespace Vhostfsd.FuseProtocol;

/// <summary>A request's fuse_in_header copied out of its readable segments, once, before anything
/// decides what to do with the request; plus the one argument routing looks at (a READ's size).
/// The segments may be guest memory that the guest rewrites at any moment: <see cref="FuseServer.Triage"/>
/// and <see cref="FuseServer.HandleRequest"/> both act on this copy and never read the header again,
/// so the request that runs is the one that was routed (a GETATTR routed to a ring's own thread
/// cannot turn into a SETLKW that waits there for a lock).</summary>
/// <remarks>A small value: the transport builds it on the stack, or keeps it beside the chain it
/// belongs to while the chain waits for a thread, and passes it by reference.</remarks>
public readonly struct FuseRequestHeader
{
    /// <summary>The header as it was copied; meaningful when <see cref="IsComplete"/>.</summary>
    public readonly FuseInHeader In;

    private FuseRequestHeader(in FuseInHeader header, int length, bool complete, ulong unique, uint readSize, bool hasReadSize)
    {
        In = header;
        Length = length;
        IsComplete = complete;
        Unique = unique;
        ReadSize = readSize;
        HasReadSize = hasReadSize;
    }

    /// <summary>The request's unique: from the header, or from the bytes where it would be in a request
    /// too short for a whole header (so its EINVAL still reaches the right caller); 0 when absent.</summary>
    public ulong Unique { get; }

    /// <summary>Bytes in the readable segments: the sum of their lengths, which belong to the
    /// transport (not the guest's len field, which the server checks against it).</summary>
    public int Length { get; }

    /// <summary>fuse_read_in.size of a READ, when <see cref="HasReadSize"/>. It only routes the READ
    /// (on the ring's thread or beside it): the READ's arguments are read again when it runs, and
    /// either way it is one bounded copy, never a wait.</summary>
    public uint ReadSize { get; }

    /// <summary>True for a READ long enough to carry fuse_read_in.size.</summary>
    public bool HasReadSize { get; }

    /// <summary>False when the segments were too short for a fuse_in_header: the server answers EINVAL.</summary>
    public bool IsComplete { get; }

    public FuseOpcode Opcode => (FuseOpcode)In.Opcode;

    /// <summary>Copies the header (and a READ's size) out of <paramref name="readable"/>, which may
    /// split anywhere, even inside the header. Never fails: a request too short for a header gives
    /// one that is not <see cref="IsComplete"/>. Contract: every IoVec describes readable memory for
    /// the duration of the call.</summary>
    public static FuseRequestHeader Read(ReadOnlySpan<IoVec> readable)
    {
        int total = RequestReader.TotalLength(readable);
        var r = new RequestReader(readable, total);
        if (!r.TryRead(out FuseInHeader header))
        {
            ulong unique = 0;
            if (total >= 16)
            {
                r.Skip(8);
                r.TryRead(out unique);
            }
            return new FuseRequestHeader(default, total, complete: false, unique, 0, hasReadSize: false);
        }
        // fuse_read_in: fh, offset, then the 32-bit size.
        bool hasReadSize = false;
        uint readSize = 0;
        if ((FuseOpcode)header.Opcode == FuseOpcode.Read && r.Skip(16))
        {
            hasReadSize = r.TryRead(out readSize);
        }
        return new FuseRequestHeader(in header, total, complete: true, header.Unique, readSize, hasReadSize);
    }
}
