using System.Text;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Xunit;

namespace Vhostfsd.FusePassthrough.Tests;

public class BasicTests
{
    [Fact]
    public void LookupMatchesHostStat()
    {
        using var f = new ShareFixture();
        File.WriteAllText(f.HostPath("a.txt"), "hello");
        FuseEntryOut e = f.Client.LookupOk(FuseConstants.RootId, "a.txt");
        Statx st = ShareFixture.HostStat(f.HostPath("a.txt"));
        Assert.NotEqual(0UL, e.NodeId);
        Assert.NotEqual(FuseConstants.RootId, e.NodeId);
        Assert.Equal(st.Ino, e.Attr.Ino);
        Assert.Equal(5UL, e.Attr.FileSize);
        Assert.Equal((uint)st.Mode, e.Attr.Mode);
        Assert.Equal(Errno.ENOENT, f.Client.Lookup(FuseConstants.RootId, "missing").Errno);
    }

    [Fact]
    public void CreateWriteReadRoundTrip()
    {
        using var f = new ShareFixture();
        var (entry, fh) = f.Client.CreateOk(FuseConstants.RootId, "data.bin");
        byte[] data = Encoding.ASCII.GetBytes("0123456789abcdef");
        FuseReply w = f.Client.Write(entry.NodeId, fh, 0, data).Ok();
        Assert.Equal((uint)data.Length, w.Read<FuseWriteOut>().Length);
        FuseReply r = f.Client.Read(entry.NodeId, fh, 4, 8).Ok();
        Assert.Equal("456789ab", Encoding.ASCII.GetString(r.Payload));
        Assert.Equal(0, f.Client.Release(entry.NodeId, fh).Error);
        Assert.Equal("0123456789abcdef", File.ReadAllText(f.HostPath("data.bin")));
    }
}
