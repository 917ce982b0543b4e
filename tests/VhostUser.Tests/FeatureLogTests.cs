using Vhostfsd.Logging;
using Vhostfsd.Testing;
using Vhostfsd.VhostUser;
using Xunit;

namespace Vhostfsd.VhostUser.Tests;

/// <summary>Operators read the negotiated features in the log at info level.</summary>
public class FeatureLogTests
{
    [Fact]
    public void DescribeNamesTransportBitsAndNumbersTheRest()
    {
        Assert.Equal("none", VirtioFeatures.Describe(0));
        Assert.Equal("RING_INDIRECT_DESC, RING_EVENT_IDX, VERSION_1",
            VirtioFeatures.Describe(VirtioFeatures.Version1 | VirtioFeatures.RingEventIdx | VirtioFeatures.RingIndirectDesc));
        Assert.Equal("bit 0, bit 63", VirtioFeatures.Describe(1UL | (1UL << 63)));
    }

    [Fact]
    public void NegotiatedFeaturesAreLoggedAtInformation()
    {
        using var harness = new VhostUserBackendHarness(new VhostUserTestDevice(queueCount: 2));
        using var guest = new VhostUserTestGuest(queueCount: 2, queueSize: 8);
        harness.Frontend.Initialize(2);
        harness.Frontend.Start(guest.RingFeatures, guest.MemoryRegions, guest.Setups);
        var info = harness.Log.Messages(LogEventLevel.Information).ToList();
        Assert.Contains(info, m => m.Contains("virtio features") && m.Contains("VERSION_1") && m.Contains("RING_EVENT_IDX") && m.Contains("negotiated"));
        Assert.Contains(info, m => m.Contains("protocol features") && m.Contains("ReplyAck") && m.Contains("negotiated"));
    }
}
