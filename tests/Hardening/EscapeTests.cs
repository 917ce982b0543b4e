using Vhostfsd.Fuzz.Oracles;
using Vhostfsd.FuseProtocol;
using Vhostfsd.GuestKernelShim;
using Vhostfsd.Hardening.Support;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Xunit;
using Xunit.Abstractions;

namespace Vhostfsd.Hardening;

/// <summary>The escape suite: a hostile guest, through the shim and a real daemon, tries every known way
/// out of the share. Each test states the expected answer and checks the sentinel tree beside the
/// share (content, listing, atime/mtime/ctime) is untouched.</summary>
[Trait("Category", "Hardening")]
public sealed class EscapeTests : IDisposable
{
    private readonly ITestOutputHelper _output;
    private readonly ScratchMount _mount;
    private readonly string _share;
    private readonly SentinelTree _sentinel;
    private SortedDictionary<string, string>? _before;

    public EscapeTests(ITestOutputHelper output)
    {
        _output = output;
        // Not nodev: the device-node test needs host devices to be reachable at all.
        _mount = ScratchMount.Create(64, nodev: false, prefix: "vhostfsd-escape-");
        _share = _mount.CreateDirectory("share");
        _sentinel = SentinelTree.CreateBeside(_mount.Path);
    }

    public void Dispose() => _mount.Dispose();

    private void Arm() => _before = _sentinel.Snapshot();

    private void AssertOutsideUnchanged()
    {
        var problems = SentinelTree.Compare(_before!, _sentinel.Snapshot());
        Assert.True(problems.Count == 0, "host files outside the share changed: " + string.Join("; ", problems));
    }

    private DaemonProcess Start(params string[] args)
    {
        var all = new List<string> { "--log-level=warn" };
        all.AddRange(args);
        return DaemonProcess.StartVhostfsd(_share, all.ToArray());
    }

    [Theory]
    [InlineData("none")]
    [InlineData("namespace")]
    public void DotDotAtEveryDepthStopsAtTheShareRoot(string sandbox)
    {
        string deepest = Path.Combine(_share, "l1", "l2", "l3", "l4", "l5");
        Directory.CreateDirectory(deepest);
        var inodes = new List<ulong> { HostOps.Inode(_share).Ino };
        string path = _share;
        foreach (string level in new[] { "l1", "l2", "l3", "l4", "l5" })
        {
            path = Path.Combine(path, level);
            inodes.Add(HostOps.Inode(path).Ino);
        }
        Arm();
        using var daemon = Start("--sandbox=" + sandbox);
        using var fs = Observe.Mount(daemon);
        var raw = new RawFuse(fs.Conn);
        var nodes = new List<ulong> { FuseConstants.RootId };
        foreach (string level in new[] { "l1", "l2", "l3", "l4", "l5" })
        {
            Assert.Equal(Errno.OK, raw.Lookup(nodes[^1], level, out var entry));
            nodes.Add(entry.NodeId);
        }
        for (int depth = 0; depth < nodes.Count; depth++)
        {
            ulong node = nodes[depth];
            for (int up = 1; up <= depth + 3; up++)
            {
                // Expected: the parent while there is one inside the share, then the share root itself.
                Assert.Equal(Errno.OK, raw.Lookup(node, "..", out var entry));
                int expected = Math.Max(depth - up, 0);
                Assert.True(entry.Attr.Ino == inodes[expected],
                    $"'..' #{up} from depth {depth} gave inode {entry.Attr.Ino}, expected depth {expected} (inode {inodes[expected]})");
                node = entry.NodeId;
            }
        }
        // Names that carry a path are refused outright, at any depth.
        foreach (ulong node in nodes)
        {
            foreach (string name in new[] { "../outside", "../../outside/secret", "/etc/passwd", "l1/..", "..\u0000x", "", "a/b" })
            {
                var rc = raw.Lookup(node, name, out var entry);
                Assert.True(rc != Errno.OK, $"LOOKUP \"{name}\" under node {node} succeeded (inode {entry.Attr.Ino})");
            }
        }
        AssertOutsideUnchanged();
    }

    [Fact]
    public void DirectorySwappedForASymlinkBetweenLookupAndOpenNeverReachesOutside()
    {
        // share/race is a directory with a file "passwd"; share/race-link points at outside/dir (which has a
        // "passwd" too). The host swaps the two names atomically, over and over, while the guest walks
        // race/passwd, opens it for writing (O_TRUNC) and writes. Expected: every write lands in the share's
        // file, or the guest gets ENOTDIR / ELOOP / ENOENT from a symlink it met half-way; never outside.
        string race = Path.Combine(_share, "race");
        Directory.CreateDirectory(race);
        File.WriteAllText(Path.Combine(race, "passwd"), "inside\n");
        File.CreateSymbolicLink(Path.Combine(_share, "race-link"), Path.Combine(_mount.Path, "outside", "dir"));
        // And the file itself swapped for a symlink to the outside file.
        File.CreateSymbolicLink(Path.Combine(race, "passwd-link"), Path.Combine(_mount.Path, "outside", "dir", "passwd"));
        Arm();
        using var daemon = Start("--sandbox=none", "--cache=never");
        using var fs = Observe.Mount(daemon);
        var raw = new RawFuse(fs.Conn);
        using var stop = new CancellationTokenSource();
        long swaps = 0;
        var swapper = new Thread(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                HostOps.Exchange(race, Path.Combine(_share, "race-link"));
                string current = Directory.Exists(Path.Combine(_share, "race")) && !new FileInfo(Path.Combine(_share, "race")).Attributes.HasFlag(FileAttributes.ReparsePoint)
                    ? Path.Combine(_share, "race") : Path.Combine(_share, "race-link");
                HostOps.Exchange(Path.Combine(current, "passwd"), Path.Combine(current, "passwd-link"));
                Interlocked.Increment(ref swaps);
            }
        }) { IsBackground = true };
        swapper.Start();
        var outcomes = new Dictionary<string, int>();
        void Count(string what) => outcomes[what] = outcomes.GetValueOrDefault(what) + 1;
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(8);
        int iterations = 0;
        byte[] payload = "pwned\n"u8.ToArray();
        try
        {
            while (iterations < 3000 && DateTime.UtcNow < deadline)
            {
                iterations++;
                if (raw.Lookup(FuseConstants.RootId, "race", out var dir) is var rc1 && rc1 != Errno.OK)
                {
                    Count("lookup race: " + rc1);
                    continue;
                }
                var rc2 = raw.Lookup(dir.NodeId, "passwd", out var file);
                if (rc2 == Errno.OK)
                {
                    var rc3 = raw.Open(file.NodeId, Libc.O_RDWR | Libc.O_TRUNC, out ulong fh);
                    if (rc3 == Errno.OK)
                    {
                        Assert.Equal(Errno.OK, raw.Write(file.NodeId, fh, 0, payload, out int written));
                        Assert.Equal(payload.Length, written);
                        raw.Release(file.NodeId, fh);
                        Count("wrote");
                    }
                    else
                    {
                        Count("open: " + rc3);
                    }
                    raw.Forget(file.NodeId, 1);
                }
                else
                {
                    Count("lookup passwd: " + rc2);
                }
                raw.Forget(dir.NodeId, 1);
            }
        }
        finally
        {
            stop.Cancel();
            swapper.Join();
        }
        _output.WriteLine($"{iterations} guest walks against {Interlocked.Read(ref swaps)} host swaps: " +
            string.Join(", ", outcomes.Select(kv => $"{kv.Key}={kv.Value}")));
        Assert.True(outcomes.GetValueOrDefault("wrote") > 0, "no walk reached the file: the race never ran");
        Assert.True(outcomes.Count > 1, "the guest never met a swapped name: the race never ran");
        AssertOutsideUnchanged();
        Assert.False(daemon.HasExited, daemon.Output);
    }

    [Fact]
    public void HardLinkMadeOnTheHostIsThatFileAndNothingMore()
    {
        // Expected: a hard link is the same inode, so the guest reads and writes the linked file (the host
        // administrator made it); it gains nothing else: no way up from a file, no guest link to any other
        // outside inode. The other outside files stay untouched.
        string other = Path.Combine(_mount.Path, "elsewhere");
        Directory.CreateDirectory(other);
        string linked = Path.Combine(other, "linked.txt");
        File.WriteAllText(linked, "shared by the host admin\n");
        File.CreateSymbolicLink(Path.Combine(other, "peer"), Path.Combine(_mount.Path, "outside", "secret"));
        HostOps.HardLink(linked, Path.Combine(_share, "hl"));
        Arm();
        using var daemon = Start("--sandbox=none");
        using var fs = Observe.Mount(daemon);
        var raw = new RawFuse(fs.Conn);
        Assert.Equal(Errno.OK, raw.Lookup(FuseConstants.RootId, "hl", out var entry));
        Assert.Equal(HostOps.Inode(linked).Ino, entry.Attr.Ino);
        Assert.Equal(2u, entry.Attr.Nlink);
        Assert.Equal(Errno.OK, raw.Open(entry.NodeId, Libc.O_RDWR, out ulong fh));
        var buffer = new byte[256];
        Assert.Equal(Errno.OK, raw.Read(entry.NodeId, fh, 0, buffer, out int read));
        Assert.Equal("shared by the host admin\n", System.Text.Encoding.UTF8.GetString(buffer, 0, read));
        Assert.Equal(Errno.OK, raw.Write(entry.NodeId, fh, 0, "SHARED"u8, out _));
        raw.Release(entry.NodeId, fh);
        Assert.StartsWith("SHARED", File.ReadAllText(linked));
        // A file has no "..": LOOKUP under it is ENOTDIR.
        Assert.Equal(Errno.ENOTDIR, raw.Lookup(entry.NodeId, "..", out _));
        // The guest can link the inode again, inside the share only.
        Assert.True(fs.Walk("hl", out var hlNode) == Errno.OK);
        Assert.Equal(Errno.OK, fs.Link(hlNode, fs.Root, "hl2", out _));
        Assert.Equal(3, LinkCount(linked));
        // Forged node ids name nothing.
        foreach (ulong forged in new ulong[] { 0, 2, 999_999, ulong.MaxValue })
        {
            Assert.NotEqual(Errno.OK, raw.Lookup(forged, "secret", out _));
        }
        AssertOutsideUnchanged();
        Assert.Equal(new[] { "linked.txt", "peer" }, Directory.GetFileSystemEntries(other).Select(p => Path.GetFileName(p)!).Order().ToArray());
    }

    private static unsafe int LinkCount(string path)
    {
        Statx st;
        fixed (byte* p = System.Text.Encoding.UTF8.GetBytes(path + "\0"))
        {
            PosixException.Check(Libc.StatxAt(Libc.AT_FDCWD, p, 0, Libc.STATX_BASIC_STATS, &st), "statx");
        }
        return (int)st.Nlink;
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void BindMountInsideTheShareIsASubmountWhoseParentIsTheShare(bool announce)
    {
        // Expected: the bind mount's content is visible (the host put it there); with --announce-submounts
        // its root carries FUSE_ATTR_SUBMOUNT (the guest gives it its own st_dev), without it does not; ".."
        // from its root is the share, never the directory the bind mount came from.
        string bm = Path.Combine(_share, "bm");
        Directory.CreateDirectory(bm);
        HostOps.BindMount(Path.Combine(_mount.Path, "outside", "dir"), bm);
        try
        {
            Arm();
            using var daemon = Start("--sandbox=none", announce ? "--announce-submounts" : "--no-announce-submounts");
            using var fs = Observe.Mount(daemon);
            var raw = new RawFuse(fs.Conn);
            Assert.Equal(Errno.OK, raw.Lookup(FuseConstants.RootId, "bm", out var root));
            Assert.Equal(HostOps.Inode(bm).Ino, root.Attr.Ino);
            bool submount = (root.Attr.Flags & (uint)FuseAttrFlags.Submount) != 0;
            Assert.Equal(announce, submount);
            Assert.Equal(Errno.OK, raw.Lookup(root.NodeId, "passwd", out var inner));
            Assert.Equal(HostOps.Inode(Path.Combine(bm, "passwd")).Ino, inner.Attr.Ino);
            ulong shareIno = HostOps.Inode(_share).Ino;
            Assert.Equal(Errno.OK, raw.Lookup(root.NodeId, "..", out var up));
            Assert.Equal(shareIno, up.Attr.Ino);
            Assert.Equal(Errno.OK, raw.Lookup(up.NodeId, "..", out var upper));
            Assert.Equal(shareIno, upper.Attr.Ino);
            Assert.True(fs.Walk("bm", out var node) == Errno.OK);
            Assert.Equal(announce, node.IsSubmountPoint);
            AssertOutsideUnchanged();
        }
        finally
        {
            HostOps.Unmount(bm);
        }
    }

    [Fact]
    public void DeviceNodesMadeByTheGuestAreNeverOpenedOnTheHost()
    {
        // MKNOD as root creates the node (both daemons do: the guest's root may make device nodes).
        // Expected: OPEN of a device node or FIFO is refused — the guest kernel drives its own devices, and
        // opening the host's would hand it the host device (here c 1:5, the host's /dev/zero). vhostfsd answers
        // EACCES; the C virtiofsd (7.2) refuses too, with EBADF (lo_inode_open opens only regular files and
        // directories). Both daemons are run on the same share to show it.
        Arm();
        string vhostfsdResult;
        using (var daemon = Start("--sandbox=none"))
        using (var fs = Observe.Mount(daemon))
        {
            var raw = new RawFuse(fs.Conn);
            Assert.Equal(Errno.OK, raw.Mknod(FuseConstants.RootId, "zero", Libc.S_IFCHR | 0x1B6, FuseConstants.EncodeDev(1, 5), out var zero));
            Assert.Equal(Libc.S_IFCHR, zero.Attr.Mode & Libc.S_IFMT);
            Assert.Equal(Errno.OK, raw.Mknod(FuseConstants.RootId, "loop", Libc.S_IFBLK | 0x180, FuseConstants.EncodeDev(7, 0), out var loop));
            Assert.Equal(Errno.OK, raw.Mknod(FuseConstants.RootId, "fifo", Libc.S_IFIFO | 0x1A4, 0, out var fifo));
            Assert.Equal(Errno.EACCES, raw.Open(zero.NodeId, Libc.O_RDONLY, out _));
            Assert.Equal(Errno.EACCES, raw.Open(loop.NodeId, Libc.O_RDWR, out _));
            Assert.Equal(Errno.EACCES, raw.Open(fifo.NodeId, Libc.O_RDONLY | Libc.O_NONBLOCK, out _));
            vhostfsdResult = "vhostfsd: MKNOD ok, OPEN EACCES";
        }
        string referenceResult;
        using (var reference = DaemonProcess.StartReference(_share))
        using (var fs = Observe.Mount(reference))
        {
            var raw = new RawFuse(fs.Conn);
            Assert.Equal(Errno.OK, raw.Mknod(FuseConstants.RootId, "zero-ref", Libc.S_IFCHR | 0x1B6, FuseConstants.EncodeDev(1, 5), out var zero));
            var rc = raw.Open(zero.NodeId, Libc.O_RDONLY, out ulong fh);
            if (rc == Errno.OK)
            {
                var buffer = new byte[16];
                Array.Fill(buffer, (byte)0xEE);
                var readRc = raw.Read(zero.NodeId, fh, 0, buffer, out int read);
                referenceResult = $"virtiofsd (C): MKNOD ok, OPEN ok, READ {readRc} {read} bytes{(read > 0 && buffer.Take(read).All(b => b == 0) ? " of zeros: the host's /dev/zero" : "")}";
                raw.Release(zero.NodeId, fh);
            }
            else
            {
                referenceResult = "virtiofsd (C): MKNOD ok, OPEN " + rc;
            }
            Assert.True(rc != Errno.OK, "the reference daemon opened a guest-made device node: " + referenceResult);
        }
        _output.WriteLine(vhostfsdResult);
        _output.WriteLine(referenceResult);
        AssertOutsideUnchanged();
    }
}
