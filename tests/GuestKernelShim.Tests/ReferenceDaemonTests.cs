using Vhostfsd.Testing;
using Xunit;

namespace Vhostfsd.GuestKernelShim.Tests;

/// <summary>The core suite against the reference C daemon /usr/lib/qemu/virtiofsd over a real vhost-user
/// socket: the shim speaks the protocol as a real guest does.</summary>
[Trait("Category", "Conformance")]
public sealed class ReferenceDaemonCoreTests : CoreSuite
{
    private sealed class Target : ICoreTarget
    {
        private readonly DaemonProcess _daemon;

        public Target()
        {
            _daemon = DaemonProcess.StartReference();
            try
            {
                Fs = _daemon.Mount();
            }
            catch
            {
                _daemon.Dispose();
                throw;
            }
        }

        public FuseFs Fs { get; }
        public string HostDir => _daemon.SharedDir;

        public void Dispose()
        {
            Fs.Dispose();
            _daemon.Dispose();
        }
    }

    protected override ICoreTarget Start() => new Target();
}
