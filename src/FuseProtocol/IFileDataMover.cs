namespace Vhostfsd.FuseProtocol;

/// <summary>A side of a request that carries file data by reference: a reply whose READ data the
/// transport takes from the file (<see cref="ReplyWriter.AppendFromFile"/>), or a request whose WRITE
/// data the transport holds (<see cref="RequestReader.MoveToFile"/>).</summary>
public interface IFileDataMover
{
    /// <summary>Moves up to <paramref name="length"/> bytes between the transport and file
    /// <paramref name="fd"/> at <paramref name="offset"/>: the bytes moved (0 at end of file), or
    /// -errno.</summary>
    int MoveFileData(int fd, long offset, int length);
}
