using Vhostfsd.FuseProtocol;
using Vhostfsd.Testing;
using Xunit;

namespace Vhostfsd.FusePassthrough.Tests;

/// <summary>A hostile guest sends LOOKUPs on some queues while it sends DESTROY (or a second INIT)
/// on another. When NodeTable.Clear emptied the key stripes first and the id stripes second, a
/// LOOKUP that inserted a node in between left it in a key stripe already emptied and an id stripe
/// not yet: Clear dropped the id map's reference, the lookup its own, the node was destroyed (fd
/// closed, object pooled) and stayed in the key map. Later LOOKUPs of that inode got the dead node's
/// id (EBADF on every use) and pooled the object again, so that two inodes could share one node
/// (a node id answering for another file, an fd closed under a live node, the fd budget
/// miscounted). Both tests failed within seconds on that code.</summary>
[Collection("fd-counting")]
public class DestroyRaceTests
{
    private const ulong Root = FuseConstants.RootId;

    [Fact]
    public void LookupsRacingDestroyNeverLeaveADeadNodeInTheTable()
    {
        using var f = new ShareFixture();
        f.Client.ReplyCapacity = 4096;
        const int Files = 256;
        for (int i = 0; i < Files; i++)
        {
            File.WriteAllText(f.HostPath($"f{i}"), "x");
        }
        // Odd while a DESTROY + INIT is under way; even while the session is stable.
        long epoch = 0;
        using var stop = new ManualResetEventSlim();
        var failures = new System.Collections.Concurrent.ConcurrentQueue<string>();
        Thread[] lookers = StartLookers(f, () => stop.IsSet || !failures.IsEmpty, (client, rng) =>
        {
            string name = "f" + rng.Next(Files);
            long before = Volatile.Read(ref epoch);
            FuseReply lookup = client.Lookup(Root, name);
            if (lookup.Error != 0)
            {
                return; // EIO between DESTROY and INIT
            }
            FuseEntryOut entry = lookup.Read<FuseEntryOut>();
            FuseReply getattr = client.Getattr(entry.NodeId);
            long after = Volatile.Read(ref epoch);
            if (before != after || (before & 1) != 0)
            {
                return; // a DESTROY may legitimately have dropped the node meanwhile
            }
            // No DESTROY ran between the LOOKUP and the GETATTR: the node must be alive and be
            // the inode the LOOKUP described.
            if (getattr.Error != 0)
            {
                failures.Enqueue($"LOOKUP {name} in a stable session answered node {entry.NodeId}, which GETATTR refuses: {getattr.Errno}");
            }
            else if (getattr.Read<FuseAttrOut>().Attr.Ino != entry.Attr.Ino)
            {
                failures.Enqueue($"LOOKUP {name} (ino {entry.Attr.Ino}) answered node {entry.NodeId}, which is inode {getattr.Read<FuseAttrOut>().Attr.Ino}");
            }
        });

        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(8);
        try
        {
            while (DateTime.UtcNow < deadline && failures.IsEmpty)
            {
                Interlocked.Increment(ref epoch);
                f.Client.Send(FuseOpcode.Destroy, 0);
                f.Client.Init();
                Interlocked.Increment(ref epoch);
                Thread.Sleep(2);
            }
        }
        finally
        {
            stop.Set();
            foreach (Thread t in lookers)
            {
                t.Join(TimeSpan.FromSeconds(30));
            }
        }
        Assert.True(failures.IsEmpty, string.Join("\n", failures));
        f.Client.Send(FuseOpcode.Destroy, 0);
        Assert.Equal(1, f.Server.NodeCount);
        Assert.Equal(0, f.Server.FdUsage.Used);
    }

    /// <summary>The same storm, then one clean DESTROY: every node and fd of the guest must be gone
    /// (the dead and doubly pooled nodes leave fds open and the fd budget miscounted).</summary>
    [Fact]
    public void AfterLookupsRacingDestroyAFinalDestroyLeavesNoFdBehind()
    {
        int fdsBefore = ShareFixture.OpenFdCount();
        using (var f = new ShareFixture())
        {
            f.Client.ReplyCapacity = 4096;
            const int Files = 256;
            for (int i = 0; i < Files; i++)
            {
                File.WriteAllText(f.HostPath($"f{i}"), "x");
            }
            using var stop = new ManualResetEventSlim();
            Thread[] lookers = StartLookers(f, () => stop.IsSet, (client, rng) =>
            {
                FuseReply r = client.Lookup(Root, "f" + rng.Next(Files));
                if (r.Error == 0)
                {
                    client.Getattr(r.Read<FuseEntryOut>().NodeId);
                }
            });
            var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(5);
            while (DateTime.UtcNow < deadline)
            {
                f.Client.Send(FuseOpcode.Destroy, 0);
                f.Client.Init();
                Thread.Sleep(1);
            }
            stop.Set();
            foreach (Thread t in lookers)
            {
                Assert.True(t.Join(TimeSpan.FromSeconds(30)));
            }
            f.Client.Send(FuseOpcode.Destroy, 0);
            Assert.Equal(0, f.Server.Stats.Exceptions);
            Assert.Equal(1, f.Server.NodeCount);
            Assert.Equal(0, f.Server.FdUsage.Used);
        }
        Assert.Equal(fdsBefore, ShareFixture.OpenFdCountSettled(fdsBefore));
    }

    /// <summary>Four threads, each with its own client and random source, running
    /// <paramref name="step"/> until <paramref name="done"/>.</summary>
    private static Thread[] StartLookers(ShareFixture f, Func<bool> done, Action<FuseTestClient, Random> step)
    {
        var lookers = new Thread[4];
        for (int t = 0; t < lookers.Length; t++)
        {
            int seed = t;
            lookers[t] = new Thread(() =>
            {
                var client = new FuseTestClient(f.Server) { ReplyCapacity = 4096 };
                var rng = new Random(seed);
                while (!done())
                {
                    step(client, rng);
                }
            }) { IsBackground = true };
            lookers[t].Start();
        }
        return lookers;
    }
}
