using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Xunit;

namespace Vhostfsd.FusePassthrough.Tests;

/// <summary>Lookup/forget balance, DESTROY, the guest fd budget. Not run in parallel with other
/// classes' fd counting (xunit runs one class at a time within a collection).</summary>
[Collection("fd-counting")]
public class LifecycleTests
{
    private const ulong Root = FuseConstants.RootId;

    [Fact]
    public void ForgettingEverythingClosesEveryFd()
    {
        using var f = new ShareFixture();
        for (int i = 0; i < 100; i++)
        {
            Directory.CreateDirectory(f.HostPath($"d{i}"));
            File.WriteAllText(f.HostPath($"d{i}/f"), "x");
        }
        int before = ShareFixture.OpenFdCount();
        var lookups = new Dictionary<ulong, ulong>();
        void Count(ulong node) => lookups[node] = lookups.GetValueOrDefault(node) + 1;
        var handles = new List<(ulong Node, ulong Fh, bool Dir)>();
        for (int i = 0; i < 100; i++)
        {
            FuseEntryOut d = f.Client.LookupOk(Root, $"d{i}");
            Count(d.NodeId);
            FuseEntryOut file = f.Client.LookupOk(d.NodeId, "f");
            Count(file.NodeId);
            Count(f.Client.LookupOk(Root, $"d{i}").NodeId);
            handles.Add((file.NodeId, f.Client.Open(file.NodeId, Libc.O_RDONLY).Ok().Read<FuseOpenOut>().Fh, false));
            if (i % 10 == 0)
            {
                ulong dh = f.Client.Opendir(d.NodeId).Ok().Read<FuseOpenOut>().Fh;
                foreach (var e in f.Client.ReadAll(d.NodeId, dh, plus: true).Where(e => e.Entry.NodeId != 0))
                {
                    Count(e.Entry.NodeId);
                }
                handles.Add((d.NodeId, dh, true));
            }
        }
        Assert.True(ShareFixture.OpenFdCount() >= before + 200);
        foreach (var (node, fh, dir) in handles)
        {
            f.Client.Release(node, fh, dir).Ok();
        }
        // Forget in a mix of FORGET and BATCH_FORGET.
        var items = lookups.ToList();
        for (int i = 0; i < items.Count; i++)
        {
            if (i % 2 == 0)
            {
                f.Client.Forget(items[i].Key, items[i].Value);
            }
            else
            {
                f.Client.BatchForget((items[i].Key, items[i].Value));
            }
        }
        Assert.Equal(1, f.Server.NodeCount);
        Assert.Equal(0, f.Server.HandleCount);
        Assert.Equal(0, f.Server.FdUsage.Used);
        Assert.Equal(before, ShareFixture.OpenFdCount());
    }

    [Fact]
    public void DestroyDropsAllNodesAndHandles()
    {
        using var f = new ShareFixture();
        for (int i = 0; i < 30; i++)
        {
            File.WriteAllText(f.HostPath($"f{i}"), "x");
        }
        int before = ShareFixture.OpenFdCount();
        var nodes = new List<ulong>();
        for (int i = 0; i < 30; i++)
        {
            FuseEntryOut e = f.Client.LookupOk(Root, $"f{i}");
            nodes.Add(e.NodeId);
            f.Client.Open(e.NodeId, Libc.O_RDONLY).Ok();
        }
        Assert.True(ShareFixture.OpenFdCount() >= before + 60);
        Assert.Equal(0, f.Client.Send(FuseOpcode.Destroy, 0).Error);
        Assert.Equal(before, ShareFixture.OpenFdCount());
        Assert.Equal(1, f.Server.NodeCount);
        Assert.Equal(0, f.Server.HandleCount);
        // The session is over until a new INIT.
        Assert.Equal(Errno.EIO, f.Client.Getattr(Root).Errno);
        f.Client.Init();
        Assert.Equal(Errno.EBADF, f.Client.Getattr(nodes[0]).Errno);
        Assert.Equal(0, f.Client.Getattr(Root).Error);
        // Reset() from the device (reset, disconnect) does the same.
        f.Client.LookupOk(Root, "f1");
        f.Server.Reset();
        Assert.Equal(before, ShareFixture.OpenFdCount());
    }

    [Fact]
    public void SecondInitStartsAFreshSession()
    {
        using var f = new ShareFixture();
        File.WriteAllText(f.HostPath("f"), "x");
        FuseEntryOut e = f.Client.LookupOk(Root, "f");
        f.Client.Init();
        Assert.Equal(Errno.EBADF, f.Client.Getattr(e.NodeId).Errno);
        Assert.Equal(1, f.Server.NodeCount);
    }

    [Fact]
    public void TheGuestFdBudgetEndsInEnfileNotInExhaustion()
    {
        using var f = new ShareFixture(makeOptions: s => new PassthroughOptions { SharedDir = s, MaxGuestFds = 10 });
        for (int i = 0; i < 20; i++)
        {
            File.WriteAllText(f.HostPath($"f{i}"), "x");
        }
        var got = new List<ulong>();
        for (int i = 0; i < 10; i++)
        {
            got.Add(f.Client.LookupOk(Root, $"f{i}").NodeId);
        }
        Assert.Equal(Errno.ENFILE, f.Client.Lookup(Root, "f10").Errno);
        Assert.Equal(Errno.ENFILE, f.Client.Open(got[0], Libc.O_RDONLY).Errno);
        Assert.Equal(Errno.ENFILE, f.Client.Create(Root, "new", Libc.O_RDWR | Libc.O_CREAT).Errno);
        Assert.False(File.Exists(f.HostPath("new")));
        // Known inodes need no new fd.
        Assert.Equal(got[3], f.Client.LookupOk(Root, "f3").NodeId);
        f.Client.Forget(got[0], 1);
        Assert.Equal(0, f.Client.Lookup(Root, "f10").Error);
        Assert.Equal(10, f.Server.FdUsage.Used);
        Assert.Equal(10, f.Server.FdUsage.Limit);
    }
}

[CollectionDefinition("fd-counting", DisableParallelization = true)]
public class FdCountingCollection
{
}
