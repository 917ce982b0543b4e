using System.Text;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Xunit;

namespace Vhostfsd.FusePassthrough.Tests;

/// <summary>inode_file_handles=prefer/mandatory: nodes hold file handles (no fd per inode).</summary>
[Collection("fd-counting")]
public class FileHandleTests
{
    private const ulong Root = FuseConstants.RootId;

    [Fact]
    public void NodesHeldAsFileHandlesWorkWithoutAnFdPerInode()
    {
        Assert.True(Libc.GetEuid() == 0, "open_by_handle_at needs CAP_DAC_READ_SEARCH: run the tests as root");
        using var f = new ShareFixture(makeOptions: s => new PassthroughOptions { SharedDir = s, InodeFileHandles = InodeFileHandles.Mandatory });
        Assert.True(f.Server.UsesFileHandles);
        Directory.CreateDirectory(f.HostPath("d"));
        for (int i = 0; i < 50; i++)
        {
            File.WriteAllText(f.HostPath($"d/f{i}"), "content " + i);
        }
        int before = ShareFixture.OpenFdCount();
        FuseEntryOut d = f.Client.LookupOk(Root, "d");
        var nodes = new List<ulong>();
        for (int i = 0; i < 50; i++)
        {
            nodes.Add(f.Client.LookupOk(d.NodeId, $"f{i}").NodeId);
        }
        // At most one extra fd per mount, none per inode.
        Assert.True(ShareFixture.OpenFdCount() <= before + 2, $"{ShareFixture.OpenFdCount() - before} fds for 51 nodes");
        Assert.Equal(0, f.Server.FdUsage.Used);
        ulong fh = f.Client.Open(nodes[7], Libc.O_RDONLY).Ok().Read<FuseOpenOut>().Fh;
        Assert.Equal("content 7", Encoding.ASCII.GetString(f.Client.Read(nodes[7], fh, 0, 100).Ok().Payload));
        f.Client.Getattr(nodes[3]).Ok();
        f.Client.Mkdir(d.NodeId, "sub").Ok();
        f.Client.Rename(d.NodeId, "f1", d.NodeId, "renamed").Ok();
        Assert.True(File.Exists(f.HostPath("d/renamed")));
        // The node keeps working after a rename on the host (handles name inodes, not paths).
        Directory.Move(f.HostPath("d"), f.HostPath("moved"));
        Assert.Equal("content 9".Length, (int)f.Client.Getattr(nodes[9]).Ok().Read<FuseAttrOut>().Attr.FileSize);
        Assert.Equal(0, f.Client.Lookup(d.NodeId, "f2").Error);
        f.Client.Release(nodes[7], fh).Ok();
    }

    [Fact]
    public void PreferModeKeepsFdsWhileTheBudgetIsHalfFreeThenHoldsHandlesOnly()
    {
        Assert.True(Libc.GetEuid() == 0, "open_by_handle_at needs CAP_DAC_READ_SEARCH: run the tests as root");
        const int budget = 20;
        using var f = new ShareFixture(makeOptions: s => new PassthroughOptions { SharedDir = s, InodeFileHandles = InodeFileHandles.Prefer, MaxGuestFds = budget });
        Assert.True(f.Server.UsesFileHandles);
        for (int i = 0; i < 30; i++)
        {
            File.WriteAllText(f.HostPath($"f{i}"), "content " + i);
        }
        var nodes = new List<ulong>();
        for (int i = 0; i < 30; i++)
        {
            nodes.Add(f.Client.LookupOk(Root, $"f{i}").NodeId);
        }
        // The first nodes keep their O_PATH fds (no open_by_handle_at per request); once half the budget
        // is in use the rest are held by handle alone, so the budget is never exhausted by lookups.
        Assert.InRange(f.Server.FdUsage.Used, budget / 2 - 1, budget / 2 + 1);
        for (int i = 0; i < 30; i++)
        {
            Assert.Equal(("content " + i).Length, (int)f.Client.Getattr(nodes[i]).Ok().Read<FuseAttrOut>().Attr.FileSize);
        }
        ulong early = f.Client.Open(nodes[2], Libc.O_RDONLY).Ok().Read<FuseOpenOut>().Fh;
        ulong late = f.Client.Open(nodes[25], Libc.O_RDONLY).Ok().Read<FuseOpenOut>().Fh;
        Assert.Equal("content 2", Encoding.ASCII.GetString(f.Client.Read(nodes[2], early, 0, 100).Ok().Payload));
        Assert.Equal("content 25", Encoding.ASCII.GetString(f.Client.Read(nodes[25], late, 0, 100).Ok().Payload));
        f.Client.Release(nodes[2], early).Ok();
        f.Client.Release(nodes[25], late).Ok();
        // Forgetting a node that kept its fd gives the fd back.
        int used = f.Server.FdUsage.Used;
        f.Client.Forget(nodes[0], 1);
        Assert.Equal(used - 1, f.Server.FdUsage.Used);
    }

    /// <summary>Nodes held by their handle alone hold no fd, so the fd budget does not bound them: a
    /// guest that never FORGETs meets their own bound (ENFILE), and FORGET makes room again.</summary>
    [Fact]
    public void HandleOnlyNodesAreBounded()
    {
        Assert.True(Libc.GetEuid() == 0, "open_by_handle_at needs CAP_DAC_READ_SEARCH: run the tests as root");
        using var f = new ShareFixture(makeOptions: s => new PassthroughOptions { SharedDir = s, InodeFileHandles = InodeFileHandles.Mandatory, MaxHandleOnlyNodes = 8 });
        for (int i = 0; i < 12; i++)
        {
            File.WriteAllText(f.HostPath($"f{i}"), "x");
        }
        var nodes = new List<ulong>();
        for (int i = 0; i < 8; i++)
        {
            nodes.Add(f.Client.LookupOk(Root, $"f{i}").NodeId);
        }
        Assert.Equal(Errno.ENFILE, f.Client.Lookup(Root, "f8").Errno);
        Assert.Equal(9, f.Server.NodeCount);
        // Known inodes are still found (another lookup of the same node), and still work.
        Assert.Equal(nodes[3], f.Client.LookupOk(Root, "f3").NodeId);
        f.Client.Getattr(nodes[5]).Ok();
        f.Client.Forget(nodes[0], 1);
        Assert.NotEqual(0UL, f.Client.LookupOk(Root, "f8").NodeId);
        Assert.Equal(Errno.ENFILE, f.Client.Lookup(Root, "f9").Errno);
    }

    /// <summary>A node held by its handle alone does not keep its inode alive: once the file is deleted,
    /// the file system may give its inode number to a new file. A lookup of that new file must make a
    /// new node (the old one's handle names the deleted inode), not hand the guest the old node id
    /// with the old type and a stale handle.</summary>
    [Fact]
    public void AReusedInodeNumberIsANewNode()
    {
        Assert.True(Libc.GetEuid() == 0, "open_by_handle_at needs CAP_DAC_READ_SEARCH: run the tests as root");
        using var f = new ShareFixture(makeOptions: s => new PassthroughOptions { SharedDir = s, InodeFileHandles = InodeFileHandles.Mandatory });
        File.WriteAllText(f.HostPath("old"), "old content");
        FuseEntryOut old = f.Client.LookupOk(Root, "old");
        File.Delete(f.HostPath("old"));
        // ext4 (the temporary directory's file system here) hands a freed inode number to the next
        // file created in the same group; try a few times.
        bool reused = false;
        for (int attempt = 0; attempt < 50 && !reused; attempt++)
        {
            File.WriteAllText(f.HostPath("new"), "new content");
            reused = ShareFixture.HostStat(f.HostPath("new")).Ino == old.Attr.Ino;
            if (!reused)
            {
                File.Delete(f.HostPath("new"));
            }
        }
        Assert.True(reused, $"the file system of {f.Share} did not reuse inode {old.Attr.Ino} (the test needs one that does, like ext4)");
        FuseEntryOut fresh = f.Client.LookupOk(Root, "new");
        Assert.Equal(old.Attr.Ino, fresh.Attr.Ino);
        Assert.NotEqual(old.NodeId, fresh.NodeId);
        ulong fh = f.Client.Open(fresh.NodeId, Libc.O_RDONLY).Ok().Read<FuseOpenOut>().Fh;
        Assert.Equal("new content", Encoding.ASCII.GetString(f.Client.Read(fresh.NodeId, fh, 0, 100).Ok().Payload));
        f.Client.Release(fresh.NodeId, fh).Ok();
        // The old node still names the deleted file.
        Assert.Equal(Errno.ESTALE, f.Client.Getattr(old.NodeId).Errno);
        // Both forgotten cleanly.
        f.Client.Forget(old.NodeId, 1);
        f.Client.Forget(fresh.NodeId, 1);
        Assert.Equal(1, f.Server.NodeCount);
    }
}
