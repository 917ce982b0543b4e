using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Xunit;

namespace Vhostfsd.FusePassthrough.Tests;

/// <summary>OPENDIR / READDIR / READDIRPLUS / RELEASEDIR / FSYNCDIR.</summary>
public class DirectoryTests
{
    private const ulong Root = FuseConstants.RootId;

    [Fact]
    public void ReaddirListsWhatTheHostHas()
    {
        using var f = new ShareFixture();
        Directory.CreateDirectory(f.HostPath("sub"));
        File.WriteAllText(f.HostPath("file"), "x");
        File.CreateSymbolicLink(f.HostPath("link"), "file");
        ulong fh = f.Client.Opendir(Root).Ok().Read<FuseOpenOut>().Fh;
        var entries = f.Client.ReadAll(Root, fh, plus: false);
        Assert.Equal(new[] { ".", "..", "file", "link", "sub" }, entries.Select(e => e.Name).Order().ToArray());
        Assert.Equal((uint)Libc.DT_DIR, entries.Single(e => e.Name == "sub").Type);
        Assert.Equal((uint)Libc.DT_REG, entries.Single(e => e.Name == "file").Type);
        Assert.Equal((uint)Libc.DT_LNK, entries.Single(e => e.Name == "link").Type);
        Assert.Equal(ShareFixture.HostStat(f.HostPath("file")).Ino, entries.Single(e => e.Name == "file").Ino);
        Assert.Equal(0, f.Client.Fsync(Root, fh, directory: true).Error);
        Assert.Equal(0, f.Client.Release(Root, fh, directory: true).Error);
        Assert.Equal(Errno.EBADF, f.Client.Readdir(Root, fh, 0, 4096, false).Errno);
        Assert.Equal(Errno.ENOTDIR, f.Client.Opendir(f.Client.LookupOk(Root, "file").NodeId).Errno);
    }

    [Fact]
    public void ReaddirplusLooksUpEveryEntryExceptDots()
    {
        using var f = new ShareFixture();
        for (int i = 0; i < 20; i++)
        {
            File.WriteAllText(f.HostPath("f" + i), new string('x', i));
        }
        ulong fh = f.Client.Opendir(Root).Ok().Read<FuseOpenOut>().Fh;
        var entries = f.Client.ReadAll(Root, fh, plus: true, size: 1024);
        Assert.Equal(22, entries.Count);
        foreach (var e in entries)
        {
            if (e.Name is "." or "..")
            {
                Assert.Equal(0UL, e.Entry.NodeId);
                continue;
            }
            Assert.NotEqual(0UL, e.Entry.NodeId);
            Assert.Equal((ulong)(int.Parse(e.Name[1..])), e.Entry.Attr.FileSize);
            // Each entry counted one lookup: one FORGET drops it.
            f.Client.Forget(e.Entry.NodeId, 1);
            Assert.Equal(Errno.EBADF, f.Client.Getattr(e.Entry.NodeId).Errno);
        }
        Assert.Equal(1, f.Server.NodeCount);
    }

    [Fact]
    public void SmallBuffersNeverSplitAnEntry()
    {
        using var f = new ShareFixture();
        File.WriteAllText(f.HostPath(new string('n', 200)), "x");
        ulong fh = f.Client.Opendir(Root).Ok().Read<FuseOpenOut>().Fh;
        // 100 bytes hold "." and ".." but not the long name: it comes in the next call.
        var first = FuseTestClient.ParseDirents(f.Client.Readdir(Root, fh, 0, 100, false).Ok(), false);
        Assert.DoesNotContain(first, e => e.Name.Length == 200);
        var rest = f.Client.ReadAll(Root, fh, plus: false, size: 4096);
        Assert.Equal(3, first.Count + FuseTestClient.ParseDirents(f.Client.Readdir(Root, fh, first[^1].Offset, 4096, false).Ok(), false).Count);
        Assert.Contains(rest, e => e.Name.Length == 200);
    }

    /// <summary>10,000 entries on tmpfs (offset cookies from its offset map) and 1,500 on the disk
    /// file system of /tmp (ext4 hash cookies here; file creation there is slow on a loaded machine).</summary>
    [Theory]
    [InlineData("/dev/shm", 10_000)]
    [InlineData("/tmp", 1_500)]
    public void ResumptionOverManyEntriesWhileTheDirectoryChanges(string baseDirectory, int count)
    {
        using var f = new ShareFixture(baseDirectory: baseDirectory);
        string dir = f.HostPath("big");
        Directory.CreateDirectory(dir);
        var originals = new HashSet<string>();
        for (int i = 0; i < count; i++)
        {
            string name = "orig-" + i.ToString("D5");
            File.Create(Path.Combine(dir, name)).Dispose();
            originals.Add(name);
        }
        FuseEntryOut d = f.Client.LookupOk(Root, "big");
        foreach (bool plus in new[] { false, true })
        {
            ulong fh = f.Client.Opendir(d.NodeId).Ok().Read<FuseOpenOut>().Fh;
            var seen = new List<string>();
            ulong offset = 0;
            int calls = 0;
            var rng = new Random(plus ? 2 : 1);
            while (true)
            {
                var batch = FuseTestClient.ParseDirents(f.Client.Readdir(d.NodeId, fh, offset, 4096, plus).Ok(), plus);
                if (batch.Count == 0)
                {
                    break;
                }
                seen.AddRange(batch.Select(e => e.Name));
                offset = batch[^1].Offset;
                // The directory changes between the guest's calls: new files appear.
                for (int k = 0; k < 5; k++)
                {
                    File.Create(Path.Combine(dir, $"new-{plus}-{calls}-{k}-{rng.Next()}")).Dispose();
                }
                calls++;
                if (plus)
                {
                    foreach (var e in batch.Where(e => e.Entry.NodeId != 0))
                    {
                        f.Client.Forget(e.Entry.NodeId, 1);
                    }
                }
            }
            var seenOriginals = seen.Where(n => n.StartsWith("orig-")).ToList();
            Assert.Equal(originals.Count, seenOriginals.Count);
            Assert.Equal(originals.Count, seenOriginals.Distinct().Count());
            Assert.True(originals.SetEquals(seenOriginals));
            Assert.Equal(seen.Count, seen.Distinct().Count());
            Assert.True(calls > count / 200);
            f.Client.Release(d.NodeId, fh, directory: true).Ok();
        }
        // READDIRPLUS lookups were all forgotten: only root and "big" remain.
        Assert.Equal(2, f.Server.NodeCount);
    }
}
