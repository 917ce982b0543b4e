using System.Text;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Xunit;

namespace Vhostfsd.FusePassthrough.Tests;

[Collection("fd-counting")]
public class ConcurrencyTests
{
    private const ulong Root = FuseConstants.RootId;

    /// <summary>Several workers race lookups, forgets, opens, I/O and releases on the same inodes
    /// (as several virtqueues would). Afterwards every count balances and no fd is left.</summary>
    [Fact]
    public void ConcurrentWorkersKeepTheTablesConsistent()
    {
        using var f = new ShareFixture();
        for (int i = 0; i < 16; i++)
        {
            File.WriteAllBytes(f.HostPath($"f{i}"), new byte[8192]);
        }
        int fdsBefore = ShareFixture.OpenFdCount();
        var errors = new System.Collections.Concurrent.ConcurrentQueue<string>();
        var threads = new Thread[6];
        for (int t = 0; t < threads.Length; t++)
        {
            int seed = t;
            threads[t] = new Thread(() =>
            {
                var client = new FuseTestClient(f.Server);
                var rng = new Random(seed);
                var held = new List<(ulong Node, ulong Count)>();
                try
                {
                    for (int i = 0; i < 150; i++)
                    {
                        string name = "f" + rng.Next(16);
                        FuseEntryOut e = client.LookupOk(Root, name);
                        held.Add((e.NodeId, 1));
                        switch (rng.Next(4))
                        {
                            case 0:
                                ulong fh = client.Open(e.NodeId, Libc.O_RDWR).Ok().Read<FuseOpenOut>().Fh;
                                client.Write(e.NodeId, fh, (ulong)rng.Next(8000), Encoding.ASCII.GetBytes("t" + seed)).Ok();
                                client.Read(e.NodeId, fh, 0, 100).Ok();
                                client.Release(e.NodeId, fh).Ok();
                                break;
                            case 1:
                                client.Getattr(e.NodeId).Ok();
                                break;
                            case 2:
                                if (held.Count > 3)
                                {
                                    var (node, count) = held[0];
                                    held.RemoveAt(0);
                                    client.Forget(node, count);
                                }
                                break;
                            default:
                                ulong dh = client.Opendir(Root).Ok().Read<FuseOpenOut>().Fh;
                                foreach (var d in client.ReadAll(Root, dh, plus: true).Where(d => d.Entry.NodeId != 0))
                                {
                                    held.Add((d.Entry.NodeId, 1));
                                }
                                client.Release(Root, dh, directory: true).Ok();
                                break;
                        }
                    }
                    foreach (var (node, count) in held)
                    {
                        client.Forget(node, count);
                    }
                }
                catch (Exception ex)
                {
                    errors.Enqueue(ex.Message);
                }
            });
            threads[t].Start();
        }
        foreach (Thread t in threads)
        {
            Assert.True(t.Join(TimeSpan.FromMinutes(2)));
        }
        Assert.Empty(errors);
        Assert.Equal(0, f.Server.Stats.Exceptions);
        Assert.Equal(1, f.Server.NodeCount);
        Assert.Equal(0, f.Server.HandleCount);
        Assert.Equal(0, f.Server.FdUsage.Used);
        Assert.Equal(fdsBefore, ShareFixture.OpenFdCountSettled(fdsBefore));
    }

    /// <summary>FORGET racing with requests that use the node: the node's fd stays valid until the
    /// last request using it is done (no use of a closed or reused fd).</summary>
    [Fact]
    public void ForgetDuringUseNeverBreaksARequest()
    {
        using var f = new ShareFixture();
        Directory.CreateDirectory(f.HostPath("d"));
        File.WriteAllText(f.HostPath("d/x"), "x");
        using var stop = new ManualResetEventSlim();
        var errors = new System.Collections.Concurrent.ConcurrentQueue<string>();
        var forgetter = new Thread(() =>
        {
            var client = new FuseTestClient(f.Server);
            while (!stop.IsSet)
            {
                FuseEntryOut d = client.LookupOk(Root, "d");
                client.Forget(d.NodeId, 1);
            }
        });
        var user = new Thread(() =>
        {
            var client = new FuseTestClient(f.Server);
            for (int i = 0; i < 600; i++)
            {
                FuseEntryOut d = client.LookupOk(Root, "d");
                FuseReply r = client.Lookup(d.NodeId, "x");
                if (r.Error != 0)
                {
                    errors.Enqueue("lookup below a held node failed: " + r.Errno);
                }
                else
                {
                    client.Forget(r.Read<FuseEntryOut>().NodeId, 1);
                }
                client.Forget(d.NodeId, 1);
            }
        });
        forgetter.Start();
        user.Start();
        Assert.True(user.Join(TimeSpan.FromMinutes(2)));
        stop.Set();
        Assert.True(forgetter.Join(TimeSpan.FromMinutes(1)));
        Assert.Empty(errors);
        Assert.Equal(1, f.Server.NodeCount);
    }
}
