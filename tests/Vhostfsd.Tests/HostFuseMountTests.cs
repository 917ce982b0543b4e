using Vhostfsd.FuseDevice;

namespace Vhostfsd.Tests;

/// <summary>The pieces of --fuse-mount that need no mount: the mount(2) data string and the reading of
/// /proc/self/mountinfo paths. (Mounting itself is tested in tests/FuseMount.)</summary>
public class HostFuseMountTests
{
    [Fact]
    public void Mount_data_names_the_connection_root_type_owner_and_largest_read()
    {
        Assert.Equal("fd=7,rootmode=40000,user_id=0,group_id=0,max_read=1048576",
            HostFuseMount.MountData(7, 0, 0, new HostFuseMountOptions(AllowOther: false, DefaultPermissions: false, ReadOnly: false)));
        Assert.Equal("fd=12,rootmode=40000,user_id=1000,group_id=100,max_read=1048576,default_permissions,allow_other",
            HostFuseMount.MountData(12, 1000, 100, new HostFuseMountOptions(AllowOther: true, DefaultPermissions: true, ReadOnly: true)));
    }

    [Theory]
    [InlineData("/tmp/plain", "/tmp/plain")]
    [InlineData(@"/tmp/with\040space", "/tmp/with space")]
    [InlineData(@"/tmp/tab\011and\012newline\134backslash", "/tmp/tab\tand\nnewline\\backslash")]
    [InlineData(@"/tmp/not\9escape\04", @"/tmp/not\9escape\04")]
    public void Mountinfo_escapes_are_undone(string field, string path) => Assert.Equal(path, HostFuseMount.Unescape(field));

    [Theory]
    [InlineData("/srv/share/mnt", "/srv/share", true)]
    [InlineData("/srv/share", "/srv/share", true)]
    [InlineData("/srv/shared", "/srv/share", false)]
    [InlineData("/srv", "/srv/share", false)]
    [InlineData("/anything", "/", true)]
    public void Same_or_below_compares_whole_path_components(string inner, string outer, bool expected) =>
        Assert.Equal(expected, HostFuseMount.IsSameOrBelow(inner, outer));

    [Fact]
    public void One_reader_per_cpu_within_bounds()
    {
        Assert.Equal(1, FuseDeviceDaemon.ReadersFor(0));
        Assert.Equal(2, FuseDeviceDaemon.ReadersFor(2));
        Assert.Equal(64, FuseDeviceDaemon.ReadersFor(256));
    }
}
