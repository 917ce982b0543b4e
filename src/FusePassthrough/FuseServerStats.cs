namespace Vhostfsd.FusePassthrough;

/// <summary>Counters of a <see cref="FuseServer"/>, readable at any time (approximate under concurrency).</summary>
public sealed class FuseServerStats
{
    internal long _requests;
    internal long _errorReplies;
    internal long _malformed;
    internal long _replyTooSmall;
    internal long _exceptions;
    internal long _unknownOpcodes;
    internal long _interrupts;

    /// <summary>Requests handed to HandleRequest.</summary>
    public long Requests => Interlocked.Read(ref _requests);

    /// <summary>Replies that carried an errno.</summary>
    public long ErrorReplies => Interlocked.Read(ref _errorReplies);

    /// <summary>Requests rejected for their shape (short header, bad length, missing NUL...).</summary>
    public long Malformed => Interlocked.Read(ref _malformed);

    /// <summary>Requests whose writable space could not hold even fuse_out_header (answered with 0 bytes).</summary>
    public long ReplyTooSmall => Interlocked.Read(ref _replyTooSmall);

    /// <summary>Exceptions caught at the dispatcher top (answered EIO). Should stay 0.</summary>
    public long Exceptions => Interlocked.Read(ref _exceptions);

    public long UnknownOpcodes => Interlocked.Read(ref _unknownOpcodes);

    public long Interrupts => Interlocked.Read(ref _interrupts);
}
