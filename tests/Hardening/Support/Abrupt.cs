using System.Reflection;
using Vhostfsd.GuestKernelShim;
using Vhostfsd.VhostUser;

namespace Vhostfsd.Hardening.Support;

/// <summary>A VMM that dies: the vhost-user socket is shut down under the shim, with no
/// GET_VRING_BASE and no drain — whatever the daemon is doing at that moment.</summary>
public static class Abrupt
{
    public static void Disconnect(FuseFs fs)
    {
        var backend = (VirtioFsBackend)fs.Conn.Transport;
        // The shim only offers an orderly stop; a crash has no API, so reach for the socket itself.
        var field = typeof(VirtioFsBackend).GetField("_frontend", BindingFlags.NonPublic | BindingFlags.Instance)
            ?? throw new InvalidOperationException("VirtioFsBackend has no _frontend field any more: update Abrupt.Disconnect");
        var frontend = (VhostUserFrontend)field.GetValue(backend)!;
        frontend.Channel.Socket.ShutdownBoth();
    }
}
