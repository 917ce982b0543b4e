using Vhostfsd.FusePassthrough;

namespace Vhostfsd.GuestKernelShim.Tests;

/// <summary>A temporary shared directory served by FusePassthrough's FuseServer over the in-process channel,
/// mounted with the shim.</summary>
public sealed class InProcessMount : IDisposable
{
    public InProcessMount(Func<string, PassthroughOptions>? options = null, MountOptions? mountOptions = null, FuseConnOptions? connOptions = null)
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
