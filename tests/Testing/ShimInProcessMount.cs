using Vhostfsd.FusePassthrough;
using Vhostfsd.GuestKernelShim;

namespace Vhostfsd.Testing;

/// <summary>A temporary shared directory served by FusePassthrough's FuseServer over the shim's in-process
/// channel (/dev/fuse semantics, no socket), mounted with the shim: the socket-less way to drive the
/// passthrough file system through a guest-like FUSE client.</summary>
public sealed class ShimInProcessMount : IDisposable
{
    public ShimInProcessMount(Func<string, PassthroughOptions>? options = null, MountOptions? mountOptions = null, FuseConnOptions? connOptions = null)
    {
        Dir = Directory.CreateTempSubdirectory("shim-fs-").FullName;
        var passthrough = options?.Invoke(Dir) ?? new PassthroughOptions { SharedDir = Dir };
        Server = new InProcessFuseServer(passthrough);
        Fs = Server.Mount(mountOptions, connOptions);
    }

    public string Dir { get; }
    public InProcessFuseServer Server { get; }
    public FuseFs Fs { get; }

    public string HostPath(string relative) => Path.Combine(Dir, relative);

    public long Requests => Server.Server.Stats.Requests;

    public void Dispose()
    {
        Fs.Dispose();
        Server.Dispose();
        try
        {
            Directory.Delete(Dir, recursive: true);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }
}
