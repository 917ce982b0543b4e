using Vhostfsd.FuseProtocol;
using Xunit;

namespace Vhostfsd.FusePassthrough.Tests;

/// <summary>The daemon logs what INIT agreed; the server reports it once per INIT.</summary>
public class InitSummaryTests
{
    [Fact]
    public void EachSuccessfulInitReportsVersionsAndFlags()
    {
        using var f = new ShareFixture(init: false);
        var seen = new List<FuseInitSummary>();
        f.Server.InitNegotiated = seen.Add;

        var offered = FuseInitFlags.AsyncRead | FuseInitFlags.BigWrites | FuseInitFlags.InitExt | FuseInitFlags.WritebackCache;
        FuseInitOut reply = f.Client.Init(offered, 36);

        var summary = Assert.Single(seen);
        Assert.Equal(7u, summary.GuestMajor);
        Assert.Equal(36u, summary.GuestMinor);
        Assert.Equal(reply.Minor, summary.AnsweredMinor);
        Assert.Equal(offered, summary.Offered);
        // Granted is what the reply carries, and never more than offered (writeback is off by default).
        Assert.Equal(FuseConstants.JoinInitFlags(reply.Flags, reply.Flags2), summary.Granted);
        Assert.Equal(FuseInitFlags.None, summary.Granted & ~offered);
        Assert.Equal(FuseInitFlags.None, summary.Granted & FuseInitFlags.WritebackCache);

        // A refused INIT (major 6) reports nothing.
        var old = f.Client.Send(FuseOpcode.Init, 0, new Vhostfsd.Testing.FuseArgs().Add(new FuseInitIn { Major = 6, Minor = 0 }));
        Assert.NotEqual(0, old.Error);
        Assert.Single(seen);
    }
}
