using System.Diagnostics;
using Vhostfsd.Fuzz.Oracles;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Hardening.Support;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Xunit;
using Xunit.Abstractions;

namespace Vhostfsd.Hardening;

/// <summary>A guest that looks up 100,000 files and never sends FORGET. The design's promise: with
/// inode file handles (the default, "prefer") a known inode costs no fd, so fds stay flat and memory
/// grows by a bounded amount per node; with O_PATH fds (--inode-file-handles=never) the guest's fd
/// budget ends it with ENFILE, and FORGET gives every fd back.</summary>
[Trait("Category", "Hardening")]
public sealed class ForgetTests : IDisposable
{
    private const int Files = 100_000;
    private readonly ITestOutputHelper _output;
    private readonly ScratchMount _mount;
    private readonly string _share;

    public ForgetTests(ITestOutputHelper output)
    {
        _output = output;
        _mount = ScratchMount.Create(512, prefix: "vhostfsd-forget-");
        _share = _mount.CreateDirectory("share");
        Directory.CreateDirectory(Path.Combine(_share, "many"));
    }

    public void Dispose() => _mount.Dispose();

    private void CreateFiles(int count)
    {
        string dir = Path.Combine(_share, "many");
        for (int i = 0; i < count; i++)
        {
            File.Create(Path.Combine(dir, i.ToString(System.Globalization.CultureInfo.InvariantCulture))).Dispose();
        }
    }

    /// <summary>Looks up files [from, to) of many/ on <paramref name="threads"/> threads; returns the
    /// node ids (0 where the lookup failed) and the count of each error.</summary>
    private static (ulong[] Nodes, Dictionary<Errno, int> Errors) LookupAll(RawFuse raw, ulong dir, int count, int threads)
    {
        var nodes = new ulong[count];
        var errors = new Dictionary<Errno, int>();
        int next = -1;
        var workers = new Thread[threads];
        for (int t = 0; t < threads; t++)
        {
            workers[t] = new Thread(() =>
            {
                int i;
                while ((i = Interlocked.Increment(ref next)) < count)
                {
                    var rc = raw.Lookup(dir, i.ToString(System.Globalization.CultureInfo.InvariantCulture), out var entry);
                    if (rc == Errno.OK)
                    {
                        nodes[i] = entry.NodeId;
                    }
                    else
                    {
                        lock (errors)
                        {
                            errors[rc] = errors.GetValueOrDefault(rc) + 1;
                        }
                    }
                }
            });
            workers[t].Start();
        }
        foreach (var w in workers)
        {
            w.Join();
        }
        return (nodes, errors);
    }

    // RLIMIT_NOFILE 4096: the guest's fd budget is 4096 - 640 = 3456. With file handles a node needs no
    // fd: `mandatory` never keeps one, `prefer` keeps one beside the handle (saving the open_by_handle_at
    // on every later request) only while at most half the budget is in use.
    [Theory]
    [InlineData("mandatory", 0)]
    [InlineData("prefer", 3456 / 2)]
    public void HundredThousandLookupsWithoutForgetStayWithinTheFdBoundWithFileHandles(string handles, int fdsPerNodesAtMost)
    {
        CreateFiles(Files);
        using var daemon = DaemonProcess.StartVhostfsd(_share, "--sandbox=none", "--log-level=warn",
            $"--inode-file-handles={handles}", "--rlimit-nofile=4096");
        using var fs = Observe.Mount(daemon, queues: 4);
        var raw = new RawFuse(fs.Conn);
        Assert.Equal(Errno.OK, raw.Lookup(FuseConstants.RootId, "many", out var many));
        int pid = Observe.ServingPid(daemon);
        int fdsBefore = Observe.FdCount(pid);
        long rssBefore = Observe.RssKb(pid);
        var clock = Stopwatch.StartNew();
        var (nodes, errors) = LookupAll(raw, many.NodeId, Files, threads: 4);
        int fdsAfter = Observe.FdCount(pid);
        long rssAfter = Observe.RssKb(pid);
        _output.WriteLine($"{handles}: {Files} lookups in {clock.Elapsed.TotalSeconds:F1} s, no FORGET: fds {fdsBefore} -> {fdsAfter}, " +
            $"RSS {rssBefore / 1024} -> {rssAfter / 1024} MiB ({(rssAfter - rssBefore) * 1024.0 / Files:F0} bytes per node)");
        Assert.Empty(errors);
        Assert.Equal(Files, nodes.Distinct().Count());
        // The descriptors held for nodes stop at the bound however many nodes the guest holds.
        Assert.InRange(fdsAfter, fdsBefore - 8, fdsBefore + fdsPerNodesAtMost + 16);
        // Memory is bounded by the node table: well under 2 KiB per node.
        Assert.InRange(rssAfter - rssBefore, long.MinValue, Files * 2L);
        Assert.False(daemon.HasExited);
    }

    [Fact]
    public void LookupsWithoutForgetRunIntoEnfileWithOPathFdsAndForgetGivesThemBack()
    {
        const int count = 3000;
        CreateFiles(count);
        // RLIMIT_NOFILE 2048: the guest's budget is 2048 - 640 = 1408 fds.
        using var daemon = DaemonProcess.StartVhostfsd(_share, "--sandbox=none", "--log-level=warn", "--inode-file-handles=never", "--rlimit-nofile=2048");
        using var fs = Observe.Mount(daemon, queues: 2);
        var raw = new RawFuse(fs.Conn);
        Assert.Equal(Errno.OK, raw.Lookup(FuseConstants.RootId, "many", out var many));
        int pid = Observe.ServingPid(daemon);
        int fdsBefore = Observe.FdCount(pid);
        var (nodes, errors) = LookupAll(raw, many.NodeId, count, threads: 2);
        int held = nodes.Count(n => n != 0);
        int fdsFull = Observe.FdCount(pid);
        _output.WriteLine($"{count} lookups with O_PATH fds: {held} held, errors {string.Join(", ", errors.Select(e => $"{e.Key}={e.Value}"))}; fds {fdsBefore} -> {fdsFull}");
        Assert.Equal([Errno.ENFILE], errors.Keys.ToArray());
        Assert.InRange(held, 1300, 1408);
        Assert.True(fdsFull <= 2048, $"{fdsFull} fds open with a limit of 2048");
        // FORGET everything: the fds go back, and lookups work again.
        foreach (ulong node in nodes)
        {
            if (node != 0)
            {
                raw.Forget(node, 1);
            }
        }
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (Observe.FdCount(pid) > fdsBefore + 8 && DateTime.UtcNow < deadline)
        {
            Thread.Sleep(50);
        }
        int fdsAfter = Observe.FdCount(pid);
        _output.WriteLine($"after FORGET: {fdsAfter} fds");
        Assert.InRange(fdsAfter, 0, fdsBefore + 8);
        Assert.Equal(Errno.OK, raw.Lookup(many.NodeId, (count - 1).ToString(System.Globalization.CultureInfo.InvariantCulture), out _));
    }
}
