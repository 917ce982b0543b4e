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

/// <summary>The page-cache suite against the reference daemon (its cache=, writeback and killpriv_v2 options).</summary>
[Trait("Category", "Conformance")]
public sealed class ReferenceDaemonPageCacheTests : PageCacheSuite
{
    protected override DaemonProcess StartDaemon(DaemonCache cache, bool writeback, string? sharedDir = null, bool killprivV2 = false)
    {
        var options = new List<string> { "-o", "cache=" + cache switch
        {
            DaemonCache.None => "none",
            DaemonCache.Auto => "auto",
            _ => "always",
        } };
        if (writeback)
        {
            options.AddRange(["-o", "writeback"]);
        }
        if (killprivV2)
        {
            options.AddRange(["-o", "killpriv_v2"]);
        }
        return DaemonProcess.StartReference(sharedDir, options.ToArray());
    }
}
