using Vhostfsd.Cli;
using Vhostfsd.Hosting;
using Vhostfsd.FusePassthrough;

namespace Vhostfsd.Tests;

public class CapabilitiesTests
{
    private static ulong Bit(int cap) => 1UL << cap;

    [Fact]
    public void Kept_set_is_virtiofsds()
    {
        ulong expected = Bit(Capabilities.Chown) | Bit(Capabilities.DacOverride) | Bit(Capabilities.Fowner) | Bit(Capabilities.Fsetid)
            | Bit(Capabilities.Setgid) | Bit(Capabilities.Setuid) | Bit(Capabilities.Mknod) | Bit(Capabilities.Setfcap);
        Assert.Equal(expected, Capabilities.KeptMask(InodeFileHandles.Never, null));
        Assert.Equal(expected | Bit(Capabilities.DacReadSearch), Capabilities.KeptMask(InodeFileHandles.Prefer, null));
        Assert.Equal(expected | Bit(Capabilities.DacReadSearch), Capabilities.KeptMask(InodeFileHandles.Mandatory, null));
    }

    [Fact]
    public void Modcaps_adds_and_removes_in_order()
    {
        ulong mask = Capabilities.KeptMask(InodeFileHandles.Never, "+SYS_ADMIN:-mknod:+cap_sys_nice:-sys_nice");
        Assert.NotEqual(0UL, mask & Bit(Capabilities.SysAdmin));
        Assert.Equal(0UL, mask & Bit(Capabilities.Mknod));
        Assert.Equal(0UL, mask & Bit(23));
        Assert.NotEqual(0UL, mask & Bit(Capabilities.Chown));
    }

    [Theory]
    [InlineData("")]
    [InlineData("+")]
    [InlineData("chown")]
    [InlineData("+chown::-mknod")]
    [InlineData("*chown")]
    [InlineData("+nonsense")]
    public void Bad_modcaps_are_usage_errors(string text) =>
        Assert.Throws<UsageException>(() => Capabilities.ParseModCaps(text));

    [Fact]
    public void Names_round_trip()
    {
        for (int cap = 0; cap <= Capabilities.LastKnown; cap++)
        {
            Assert.Equal(cap, Capabilities.FromName(Capabilities.Name(cap)));
            Assert.Equal(cap, Capabilities.FromName("CAP_" + Capabilities.Name(cap).ToUpperInvariant()));
        }
        Assert.Equal("chown,mknod", Capabilities.Describe(Bit(0) | Bit(27)));
    }
}
