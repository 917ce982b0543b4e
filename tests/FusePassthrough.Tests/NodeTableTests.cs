using Vhostfsd.FuseProtocol;
using Vhostfsd.FusePassthrough.Passthrough;
using Vhostfsd.Posix;
using Xunit;

namespace Vhostfsd.FusePassthrough.Tests;

/// <summary>The striped node and handle tables under threads that race lookups, requests,
/// handles and forgets on shared and private inodes, as the workers of several request queues do.
/// Every node and handle holds a real fd, so a node closed twice, closed while in use, or never
/// closed shows up in the process's fd table and the budget.</summary>
[Collection("fd-counting")]
public class NodeTableTests
{
    private const int SharedKeys = 24;
    private const int Threads = 4;
    private const int Steps = 20_000;

    /// <summary>The name of every fd this test creates: other test classes run in parallel and open
    /// and close fds of their own, so only these are counted.</summary>
    private const string FdName = "vhostfsd-node-table-test";

    private static int NewFd(FdBudget budget)
    {
        Assert.True(budget.TryTake());
        return NewUncountedFd();
    }

    private static int NewUncountedFd()
    {
        int fd = Libc.MemfdCreate(FdName, Libc.MFD_CLOEXEC);
        Assert.True(fd >= 0);
        return fd;
    }

    /// <summary>Open fds made by <see cref="NewFd"/> (their /proc/self/fd link names the memfd).</summary>
    private static int OwnFdCount()
    {
        int count = 0;
        foreach (string entry in Directory.GetFiles("/proc/self/fd"))
        {
            try
            {
                if (new FileInfo(entry).LinkTarget?.Contains(FdName, StringComparison.Ordinal) == true)
                {
                    count++;
                }
            }
            catch (IOException)
            {
                // Closed by another test between the listing and the readlink.
            }
        }
        return count;
    }

    private static InodeKey Key(int i) => new(Dev: 42, Ino: (ulong)i, MntId: 7);

    private static Node LookUp(NodeTable nodes, FdBudget budget, InodeKey key)
    {
        if (nodes.TryLookupExisting(key, out Node node))
        {
            return node;
        }
        return nodes.Insert(key, Libc.S_IFREG, NewFd(budget), null, -1)!;
    }

    [Fact]
    public void RacingLookupsRequestsHandlesAndForgetsLeaveOnlyTheRootAndNoFd()
    {
        int fdsBefore = OwnFdCount();
        var budget = new FdBudget(1_000_000);
        var nodes = new NodeTable(budget);
        var handles = new HandleTable(budget, nodes);
        int rootFd = NewUncountedFd();
        nodes.SetRoot(rootFd, Key(-1));
        var failures = new List<string>();
        var workers = new Thread[Threads];
        for (int t = 0; t < Threads; t++)
        {
            int seed = t;
            workers[t] = new Thread(() =>
            {
                var rng = new Random(seed);
                // The lookups this "guest" holds: id → (key, count).
                var held = new Dictionary<ulong, (InodeKey Key, ulong Count)>();
                ulong lastPrivateId = 0;
                try
                {
                    for (int step = 0; step < Steps; step++)
                    {
                        switch (rng.Next(5))
                        {
                            case 0:
                            case 1:
                            {
                                InodeKey key = Key(rng.Next(SharedKeys));
                                Node node = LookUp(nodes, budget, key);
                                Assert.Equal(key, node.Key);
                                held[node.Id] = held.TryGetValue(node.Id, out var h) ? (key, h.Count + 1) : (key, 1);
                                nodes.Release(node);
                                break;
                            }
                            case 2:
                                if (held.Count > 0)
                                {
                                    // A request on a node this guest holds: always found, always itself.
                                    var (id, entry) = held.ElementAt(rng.Next(held.Count));
                                    Node? node = nodes.Acquire(id);
                                    Assert.NotNull(node);
                                    Assert.Equal(id, node.Id);
                                    Assert.Equal(entry.Key, node.Key);
                                    if (rng.Next(2) == 0)
                                    {
                                        Handle handle = handles.Add(node, NewFd(budget), 0, 0, isDirectory: false);
                                        Handle? again = handles.Acquire(handle.Id, id);
                                        Assert.Same(handle, again);
                                        Assert.Null(handles.Acquire(handle.Id, id + 1));
                                        Assert.True(handles.Remove(handle.Id, id, directory: false));
                                        Assert.False(handles.Remove(handle.Id, id, directory: false));
                                        handles.Release(again!);
                                    }
                                    nodes.Release(node);
                                }
                                break;
                            case 3:
                                if (held.Count > 0)
                                {
                                    var (id, entry) = held.ElementAt(rng.Next(held.Count));
                                    ulong count = (ulong)rng.Next(1, (int)entry.Count + 1);
                                    nodes.Forget(id, count);
                                    if (count == entry.Count)
                                    {
                                        held.Remove(id);
                                    }
                                    else
                                    {
                                        held[id] = (entry.Key, entry.Count - count);
                                    }
                                }
                                break;
                            default:
                            {
                                // An inode only this thread looks up: once every lookup is forgotten
                                // its id is gone, and the next lookup gets a new, larger id.
                                InodeKey mine = Key(1000 + seed * Steps + step);
                                Node first = LookUp(nodes, budget, mine);
                                Node second = LookUp(nodes, budget, mine);
                                Assert.Same(first, second);
                                ulong id = first.Id;
                                Assert.True(id > lastPrivateId, $"id {id} after {lastPrivateId}");
                                lastPrivateId = id;
                                nodes.Release(first);
                                nodes.Release(second);
                                nodes.Forget(id, 1);
                                Node? still = nodes.Acquire(id);
                                Assert.NotNull(still);
                                nodes.Release(still);
                                nodes.Forget(id, 1);
                                Assert.Null(nodes.Acquire(id));
                                break;
                            }
                        }
                    }
                    foreach (var (id, entry) in held)
                    {
                        nodes.Forget(id, entry.Count);
                    }
                }
                catch (Exception e)
                {
                    lock (failures)
                    {
                        failures.Add($"thread {seed}: {e}");
                    }
                }
            });
            workers[t].Start();
        }
        foreach (Thread worker in workers)
        {
            worker.Join();
        }
        Assert.Empty(failures);
        Assert.Equal(1, nodes.Count);
        Assert.Equal(0, handles.Count);
        Assert.Equal(0, budget.Used);
        Assert.Equal(fdsBefore + 1, OwnFdCount());
        // The root is still served, and Clear keeps it.
        Node? root = nodes.Acquire(FuseConstants.RootId);
        Assert.NotNull(root);
        nodes.Release(root);
        Node leftover = LookUp(nodes, budget, Key(5));
        nodes.Release(leftover);
        handles.Clear();
        nodes.Clear();
        Assert.Equal(1, nodes.Count);
        Assert.Null(nodes.Acquire(leftover.Id));
        Assert.Equal(0, budget.Used);
        nodes.CloseRoot();
        Assert.Equal(fdsBefore, OwnFdCount());
    }

    [Fact]
    public void AForgetOfMoreThanTheLookupsOrOfAnUnknownIdOrOfTheRootChangesNothingElse()
    {
        var budget = new FdBudget(1000);
        var nodes = new NodeTable(budget);
        int rootFd = NewUncountedFd();
        nodes.SetRoot(rootFd, Key(-1));
        Node a = LookUp(nodes, budget, Key(1));
        nodes.Release(a);
        Node b = LookUp(nodes, budget, Key(2));
        nodes.Release(b);
        nodes.Forget(999_999, 1);
        nodes.Forget(FuseConstants.RootId, 1_000);
        Assert.Equal(3, nodes.Count);
        nodes.Forget(a.Id, 1_000);
        Assert.Null(nodes.Acquire(a.Id));
        nodes.Forget(a.Id, 1);
        Assert.Equal(2, nodes.Count);
        Assert.Equal(1, budget.Used);
        Node? root = nodes.Acquire(FuseConstants.RootId);
        Assert.NotNull(root);
        nodes.Release(root);
        nodes.Clear();
        nodes.CloseRoot();
        Assert.Equal(0, budget.Used);
    }
}
