using System.Runtime.InteropServices;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Xunit;

namespace Vhostfsd.GuestKernelShim.Tests;

/// <summary>FuseFs behaviour a Linux guest has (fs/fuse/dir.c, file.c, readdir.c, inode.c), checked against a
/// scripted daemon that records every request.</summary>
public class FuseFsSemanticsTests
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);
    private const int OLargefile = 0x8000;

    private static FakeMount Mount(MiniFs fs, FuseInitFlags? granted = null, uint minor = 38, MountOptions? options = null)
        => new(fs.Handle, granted, minor, options);

    // ---------------------------------------------------------------- mount options

    [Fact]
    public void MountOptionsHaveVirtiofsDefaultsAndRefuseDax()
    {
        var defaults = MountOptions.Parse(null);
        Assert.True(defaults.DefaultPermissions);
        Assert.True(defaults.AllowOther);
        Assert.Equal(ModeBits.Directory, defaults.RootMode);
        Assert.Equal(0u, defaults.UserId);
        var parsed = MountOptions.Parse("rootmode=040755,user_id=1000,group_id=100,default_permissions,allow_other,dax=never");
        Assert.Equal(0x41EDu, parsed.RootMode);
        Assert.Equal(1000u, parsed.UserId);
        Assert.Equal(100u, parsed.GroupId);
        var always = Assert.Throws<ArgumentException>(() => MountOptions.Parse("dax=always"));
        Assert.Contains("dax=always is not supported", always.Message);
        Assert.Throws<ArgumentException>(() => MountOptions.Parse("dax"));
        Assert.Throws<ArgumentException>(() => MountOptions.Parse("dax=inode"));
        Assert.Throws<ArgumentException>(() => MountOptions.Parse("rootmode=0755"));
        Assert.Throws<ArgumentException>(() => MountOptions.Parse("bogus"));
        // Mount refuses too, before anything is sent.
        var channel = new InProcessChannelBackend();
        Assert.Throws<ArgumentException>(() => FuseFs.Mount(channel, new MountOptions { Dax = DaxMode.Always }));
    }

    [Fact]
    public void RootTakesRootmodeUntilItsFirstGetattr()
    {
        var mini = new MiniFs();
        using var m = Mount(mini, options: MountOptions.Parse("rootmode=040700,user_id=5,group_id=6"));
        Assert.Equal(0x41C0u, m.Fs.Root.Attr.Mode);
        Assert.Equal(5u, m.Fs.Root.Attr.Uid);
        Assert.Equal(FuseConstants.RootId, m.Fs.Root.NodeId);
        Assert.Equal(Errno.OK, m.Fs.GetAttr(m.Fs.Root, out var attr));
        Assert.Equal(FakeMount.Dir755, attr.Mode);
        Assert.Equal(1, m.Count(FuseOpcode.Getattr));
    }

    // ---------------------------------------------------------------- lookup, timeouts, lookup counts

    [Fact]
    public void EntryTimeoutCachesLookupsAndEachLookupIsCounted()
    {
        var mini = new MiniFs();
        mini.Add("a", 5, FakeMount.File644);
        using var m = Mount(mini);
        // entry_valid 0: every lookup goes to the daemon and counts.
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(Errno.OK, m.Fs.Lookup(m.Fs.Root, "a", out var node));
            Assert.Equal(i + 1, node!.LookupCount);
        }
        Assert.Equal(3, m.Count(FuseOpcode.Lookup));
        // entry_valid 60 s: cached.
        mini.EntryValid = 60;
        Assert.Equal(Errno.OK, m.Fs.Lookup(m.Fs.Root, "a", out var cached));
        Assert.Equal(Errno.OK, m.Fs.Lookup(m.Fs.Root, "a", out var again));
        Assert.Same(cached, again);
        Assert.Equal(4, m.Count(FuseOpcode.Lookup));
        Assert.Equal(4, again!.LookupCount);
        // Evicting the node gives all four back in one FORGET.
        m.Fs.Forget(again);
        Assert.True(m.Fs.Conn.Quiesce(Timeout));
        var forget = Assert.Single(m.Of(FuseOpcode.Forget));
        Assert.Equal(5ul, forget.Header.NodeId);
        Assert.Equal(4ul, forget.Arg<FuseForgetIn>().Nlookup);
        Assert.Equal(0, again.LookupCount);
    }

    [Fact]
    public void AttrTimeoutCachesGetattr()
    {
        var mini = new MiniFs { AttrValid = 60 };
        mini.Add("a", 5, FakeMount.File644, size: 10);
        using var m = Mount(mini);
        Assert.Equal(Errno.OK, m.Fs.Lookup(m.Fs.Root, "a", out var node));
        int NodeGetattrs() => m.Of(FuseOpcode.Getattr).Count(r => r.Header.NodeId == 5);
        Assert.Equal(Errno.OK, m.Fs.GetAttr(node!, out var attr));
        Assert.Equal(10ul, attr.FileSize);
        Assert.Equal(0, NodeGetattrs()); // the lookup's attributes are still valid
        Assert.Equal(Errno.OK, m.Fs.GetAttr(node!, out _, force: true));
        Assert.Equal(1, NodeGetattrs());
        mini.AttrValid = 0;
        Assert.Equal(Errno.OK, m.Fs.GetAttr(node!, out _, force: true));
        Assert.Equal(Errno.OK, m.Fs.GetAttr(node!, out _));
        Assert.Equal(3, NodeGetattrs());
    }

    [Fact]
    public void NegativeEntriesAreCachedForTheirTimeout()
    {
        var mini = new MiniFs
        {
            Override = r => r.Opcode == FuseOpcode.Lookup ? FakeAnswer.Of(new FuseEntryOut { NodeId = 0, EntryValid = 60 }) : null,
        };
        using var m = Mount(mini);
        Assert.Equal(Errno.ENOENT, m.Fs.Lookup(m.Fs.Root, "none", out _));
        Assert.Equal(Errno.ENOENT, m.Fs.Lookup(m.Fs.Root, "none", out _));
        Assert.Equal(1, m.Count(FuseOpcode.Lookup));
    }

    [Fact]
    public void ANodeIdReusedWithAnotherGenerationMakesTheOldNodeStale()
    {
        var mini = new MiniFs();
        mini.Add("a", 5, FakeMount.File644, generation: 1);
        using var m = Mount(mini);
        Assert.Equal(Errno.OK, m.Fs.Lookup(m.Fs.Root, "a", out var old));
        // The daemon hands node 5 out again for another file, with a new generation.
        mini.Names.TryRemove("a", out _);
        mini.Add("b", 5, FakeMount.File644, generation: 2);
        Assert.Equal(Errno.OK, m.Fs.Lookup(m.Fs.Root, "b", out var fresh));
        Assert.NotSame(old, fresh);
        Assert.True(old!.IsStale);
        Assert.False(fresh!.IsStale);
        Assert.Equal(2ul, fresh.Generation);
        Assert.Equal(Errno.ESTALE, m.Fs.GetAttr(old, out _, force: true));
        Assert.Equal(Errno.ESTALE, m.Fs.Open(old, Libc.O_RDONLY, out _));
        Assert.Equal(Errno.OK, m.Fs.GetAttr(fresh, out _, force: true));
        Assert.Same(fresh, m.Fs.FindNode(5));
        // The stale inode's lookup goes back to the daemon as it is evicted.
        Assert.True(m.Fs.Conn.Quiesce(Timeout));
        Assert.Equal(1ul, Assert.Single(m.Of(FuseOpcode.Forget)).Arg<FuseForgetIn>().Nlookup);
    }

    [Fact]
    public void AnEntryWithAnInvalidTypeIsEioAndItsLookupIsForgotten()
    {
        var mini = new MiniFs();
        mini.Add("bad", 9, 0x1A4 /* no type bits */);
        mini.Add("root", 1, FakeMount.Dir755);
        using var m = Mount(mini);
        Assert.Equal(Errno.EIO, m.Fs.Lookup(m.Fs.Root, "bad", out _));
        Assert.Equal(Errno.EIO, m.Fs.Lookup(m.Fs.Root, "root", out _));
        Assert.True(m.Fs.Conn.Quiesce(Timeout));
        var forgotten = m.Of(FuseOpcode.Forget).Select(f => f.Header.NodeId).Concat(
            m.Of(FuseOpcode.BatchForget).SelectMany(b => MemoryMarshal.Cast<byte, FuseForgetOne>(b.Args.AsSpan(8)).ToArray().Select(x => x.NodeId))).ToArray();
        Assert.Contains(9ul, forgotten);
        Assert.Null(m.Fs.FindNode(9));
    }

    [Fact]
    public void WalkFollowsIntermediateSymlinksAndResolvesDotDot()
    {
        var mini = new MiniFs();
        mini.Add("dir", 5, FakeMount.Dir755);
        mini.Add("link", 6, FakeMount.Link777);
        mini.Add("file", 7, FakeMount.File644);
        mini.Override = r => r.Opcode == FuseOpcode.Readlink ? FakeAnswer.Ok("/dir"u8.ToArray()) : null;
        using var m = Mount(mini);
        // MiniFs is flat: every name resolves in every directory, which is enough to follow the walk.
        Assert.Equal(Errno.OK, m.Fs.Walk("link/file", out var node));
        Assert.Equal(7ul, node.NodeId);
        Assert.Equal(Errno.OK, m.Fs.Walk("link", out var linkNode));
        Assert.True(linkNode.IsSymlink);
        Assert.Equal(Errno.OK, m.Fs.Walk("link", out var followed, followFinal: true));
        Assert.Equal(5ul, followed.NodeId);
        Assert.Equal(Errno.OK, m.Fs.Walk("dir/..", out var up));
        Assert.Same(m.Fs.Root, up);
        Assert.Equal(Errno.OK, m.Fs.Walk("..", out var top));
        Assert.Same(m.Fs.Root, top);
        Assert.Equal(Errno.ENAMETOOLONG, m.Fs.Lookup(m.Fs.Root, new string('n', 1025), out _));
    }

    // ---------------------------------------------------------------- open and release

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void OpenFiltersFlagsAsLinux(bool atomicOTrunc)
    {
        var mini = new MiniFs();
        mini.Add("f", 5, FakeMount.File644, size: 100);
        var granted = FuseConnOptions.DefaultFlags;
        if (!atomicOTrunc)
        {
            granted &= ~FuseInitFlags.AtomicOTrunc;
        }
        using var m = Mount(mini, granted);
        Assert.Equal(Errno.OK, m.Fs.Lookup(m.Fs.Root, "f", out var node));
        int flags = Libc.O_RDWR | Libc.O_CREAT | Libc.O_EXCL | Libc.O_NOCTTY | Libc.O_TRUNC | Libc.O_APPEND;
        Assert.Equal(Errno.OK, m.Fs.Open(node!, flags, out var file));
        var open = Assert.Single(m.Of(FuseOpcode.Open)).Arg<FuseOpenIn>();
        int expected = Libc.O_RDWR | Libc.O_APPEND | OLargefile | (atomicOTrunc ? Libc.O_TRUNC : 0);
        Assert.Equal(expected, (int)open.Flags);
        if (atomicOTrunc)
        {
            Assert.Equal(0, m.Count(FuseOpcode.Setattr));
        }
        else
        {
            // The truncate follows as a SETATTR through the new handle.
            var setattr = Assert.Single(m.Of(FuseOpcode.Setattr)).Arg<FuseSetattrIn>();
            Assert.Equal(FuseSetattrValid.Size | FuseSetattrValid.Fh | FuseSetattrValid.LockOwner, (FuseSetattrValid)setattr.Valid);
            Assert.Equal(0ul, setattr.FileSize);
            Assert.Equal(7ul, setattr.Fh);
        }
        m.Fs.Release(file!);
    }

    [Fact]
    public void HandleZeroIsAValidHandle()
    {
        var mini = new MiniFs { NextFh = 0 };
        mini.Add("f", 5, FakeMount.File644, size: 10);
        using var m = Mount(mini);
        Assert.Equal(Errno.OK, m.Fs.Walk("f", out var node));
        Assert.Equal(Errno.OK, m.Fs.Open(node, Libc.O_RDONLY, out var file));
        Assert.Equal(0ul, file!.Fh);
        Assert.False(file.NoRelease);
        Assert.Equal(Errno.OK, m.Fs.Read(file, new byte[10], 0, out int n));
        Assert.Equal(10, n);
        Assert.Equal(0ul, m.Of(FuseOpcode.Read).Single().Arg<FuseReadIn>().Fh);
        m.Fs.Release(file);
        Assert.True(m.Fs.Conn.Quiesce(Timeout));
        Assert.Equal(0ul, Assert.Single(m.Of(FuseOpcode.Release)).Arg<FuseReleaseIn>().Fh);
    }

    [Fact]
    public void OpenAnsweredWithEnosysSwitchesToNoOpenModeWhenGranted()
    {
        var mini = new MiniFs { Override = r => r.Opcode is FuseOpcode.Open or FuseOpcode.Opendir ? FakeAnswer.Fail(Errno.ENOSYS) : null };
        mini.Add("f", 5, FakeMount.File644, size: 4);
        mini.Add("d", 6, FakeMount.Dir755);
        using var m = Mount(mini);
        Assert.Equal(Errno.OK, m.Fs.Walk("f", out var node));
        Assert.Equal(Errno.OK, m.Fs.Open(node, Libc.O_RDONLY, out var first));
        Assert.True(first!.NoRelease);
        Assert.Equal(0ul, first.Fh);
        Assert.Equal(Errno.OK, m.Fs.Open(node, Libc.O_RDONLY, out var second));
        Assert.Equal(1, m.Count(FuseOpcode.Open));
        Assert.Equal(Errno.OK, m.Fs.Walk("d", out var dir));
        Assert.Equal(Errno.OK, m.Fs.OpenDir(dir, out var d1));
        Assert.Equal(Errno.OK, m.Fs.OpenDir(dir, out var d2));
        Assert.Equal(1, m.Count(FuseOpcode.Opendir));
        m.Fs.Release(first);
        m.Fs.Release(second!);
        m.Fs.Release(d1!);
        m.Fs.Release(d2!);
        Assert.True(m.Fs.Conn.Quiesce(Timeout));
        Assert.Equal(0, m.Count(FuseOpcode.Release));
        Assert.Equal(0, m.Count(FuseOpcode.Releasedir));
    }

    [Fact]
    public void OpenAnsweredWithEnosysWithoutNoOpenSupportIsAnError()
    {
        var mini = new MiniFs { Override = r => r.Opcode == FuseOpcode.Open ? FakeAnswer.Fail(Errno.ENOSYS) : null };
        mini.Add("f", 5, FakeMount.File644);
        using var m = Mount(mini, FuseConnOptions.DefaultFlags & ~FuseInitFlags.NoOpenSupport);
        Assert.Equal(Errno.OK, m.Fs.Walk("f", out var node));
        Assert.Equal(Errno.ENOSYS, m.Fs.Open(node, Libc.O_RDONLY, out _));
        Assert.Equal(Errno.ENOSYS, m.Fs.Open(node, Libc.O_RDONLY, out _));
        Assert.Equal(2, m.Count(FuseOpcode.Open));
    }

    [Fact]
    public void FlushFsyncAndFsyncdirAnsweredWithEnosysAreNotSentAgain()
    {
        var mini = new MiniFs { Override = r => r.Opcode is FuseOpcode.Flush or FuseOpcode.Fsync or FuseOpcode.Fsyncdir ? FakeAnswer.Fail(Errno.ENOSYS) : null };
        mini.Add("f", 5, FakeMount.File644);
        mini.Add("d", 6, FakeMount.Dir755);
        using var m = Mount(mini);
        Assert.Equal(Errno.OK, m.Fs.Walk("f", out var node));
        Assert.Equal(Errno.OK, m.Fs.Walk("d", out var dir));
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(Errno.OK, m.Fs.Open(node, Libc.O_RDWR, out var file));
            Assert.Equal(Errno.OK, m.Fs.Fsync(file!));
            Assert.Equal(Errno.OK, m.Fs.Fsync(file!, dataOnly: true));
            Assert.Equal(Errno.OK, m.Fs.Release(file!));
            Assert.Equal(Errno.OK, m.Fs.OpenDir(dir, out var d));
            Assert.Equal(Errno.OK, m.Fs.Fsync(d!));
            m.Fs.Release(d!);
        }
        Assert.Equal(1, m.Count(FuseOpcode.Flush));
        Assert.Equal(1, m.Count(FuseOpcode.Fsync));
        Assert.Equal(1, m.Count(FuseOpcode.Fsyncdir));
    }

    [Fact]
    public void ReleaseIsSentInTheBackgroundWithoutCredentials()
    {
        var gate = new ManualResetEventSlim();
        FakeMount? mount = null;
        var mini = new MiniFs();
        mini.Add("f", 5, FakeMount.File644);
        mini.Override = r =>
        {
            if (r.Opcode != FuseOpcode.Release)
            {
                return null;
            }
            ulong unique = r.Unique;
            ThreadPool.QueueUserWorkItem(_ =>
            {
                gate.Wait();
                FakeDaemon.Answer(mount!.Channel, unique, FakeAnswer.Ok());
            });
            return FakeAnswer.Silent;
        };
        using var m = mount = Mount(mini);
        var caller = new FuseCaller(1000, 1000, 4242);
        Assert.Equal(Errno.OK, m.Fs.Walk("f", out var node));
        Assert.Equal(Errno.OK, m.Fs.Open(node, Libc.O_RDONLY, out var file, caller));
        Assert.Equal(1, node.OpenFiles);
        // close() returns while the daemon still sits on the RELEASE.
        Assert.Equal(Errno.OK, m.Fs.Release(file!));
        Assert.Equal(0, node.OpenFiles);
        Assert.True(SpinWait.SpinUntil(() => m.Count(FuseOpcode.Release) == 1, Timeout));
        Assert.Equal(1, m.Fs.Conn.BackgroundCount);
        var release = m.Of(FuseOpcode.Release).Single();
        Assert.Equal((0u, 0u, 0u), (release.Header.Uid, release.Header.Gid, release.Header.Pid));
        var flush = m.Of(FuseOpcode.Flush).Single();
        Assert.Equal((1000u, 4242u), (flush.Header.Uid, flush.Header.Pid));
        gate.Set();
        Assert.True(m.Fs.Conn.Quiesce(Timeout));
        Assert.Equal(0, m.Fs.Conn.BackgroundCount);
        Assert.Equal(Errno.EBADF, m.Fs.Release(file!));
    }

    // ---------------------------------------------------------------- read / write

    [Fact]
    public void ReadsAndWritesAreSplitByMaxReadAndMaxWrite()
    {
        var mini = new MiniFs();
        mini.Add("f", 5, FakeMount.File644, size: 20000);
        using var m = new FakeMount(mini.Handle, configure: d => d.InitOut.MaxWrite = 8192, mountOptions: null);
        Assert.Equal(8192, m.Fs.Conn.MaxWriteSize);
        Assert.Equal(Errno.OK, m.Fs.Walk("f", out var node));
        Assert.Equal(Errno.OK, m.Fs.Open(node, Libc.O_RDWR, out var file));
        var data = new byte[20000];
        Assert.Equal(Errno.OK, m.Fs.Write(file!, data, 100, out int written));
        Assert.Equal(20000, written);
        var writes = m.Of(FuseOpcode.Write).Select(w => (w.Arg<FuseWriteIn>().Offset, w.Arg<FuseWriteIn>().Length, w.Args.Length - FuseWriteIn.Size)).ToArray();
        Assert.Equal(new[] { (100ul, 8192u, 8192), (8292ul, 8192u, 8192), (16484ul, 3616u, 3616) }, writes);

        // Reads: 1 MiB pages allowed (max_pages 256), so one READ; past EOF it stops at the short reply.
        var buffer = new byte[30000];
        Assert.Equal(Errno.OK, m.Fs.Read(file!, buffer, 0, out int read));
        Assert.Equal(20000, read);
        Assert.Equal((byte)123, buffer[123]);
        Assert.Single(m.Of(FuseOpcode.Read));
        m.Fs.Release(file!);
    }

    [Fact]
    public void ReadsAreSplitByTheMountsMaxRead()
    {
        var mini = new MiniFs();
        mini.Add("f", 5, FakeMount.File644, size: 20000);
        var channel = new InProcessChannelBackend();
        using var daemon = new FakeDaemon(channel) { Handler = mini.Handle };
        using var fs = FuseFs.Mount(channel, null, new FuseConnOptions { MaxRead = 4096 });
        Assert.Equal(Errno.OK, fs.Walk("f", out var node));
        Assert.Equal(Errno.OK, fs.Open(node, Libc.O_RDONLY, out var file));
        var buffer = new byte[20000];
        Assert.Equal(Errno.OK, fs.Read(file!, buffer, 0, out int read));
        Assert.Equal(20000, read);
        var reads = daemon.SeenOf(FuseOpcode.Read).Select(r => r.Arg<FuseReadIn>().Length).ToArray();
        Assert.Equal(new uint[] { 4096, 4096, 4096, 4096, 3616 }, reads);
        Assert.Equal(Errno.EBADF, fs.Write(file!, new byte[1], 0, out _));
        fs.Release(file!);
    }

    [Fact]
    public void AWriteReplyClaimingMoreThanSentIsEio()
    {
        var mini = new MiniFs { Override = r => r.Opcode == FuseOpcode.Write ? FakeAnswer.Of(new FuseWriteOut { Length = r.Arg<FuseWriteIn>().Length + 1 }) : null };
        mini.Add("f", 5, FakeMount.File644);
        using var m = Mount(mini);
        Assert.Equal(Errno.OK, m.Fs.Walk("f", out var node));
        Assert.Equal(Errno.OK, m.Fs.Open(node, Libc.O_WRONLY, out var file));
        Assert.Equal(Errno.EIO, m.Fs.Write(file!, new byte[10], 0, out _));
        m.Fs.Release(file!);
    }

    [Fact]
    public void WritesAskToKillSuidForUnprivilegedCallersWithKillprivV2()
    {
        var mini = new MiniFs();
        mini.Add("f", 5, FakeMount.File644 | 0x800, uid: 1000);
        using var m = Mount(mini);
        Assert.Equal(Errno.OK, m.Fs.Walk("f", out var node));
        var user = new FuseCaller(1000, 1000);
        Assert.Equal(Errno.OK, m.Fs.Open(node, Libc.O_WRONLY, out var file, user));
        Assert.Equal(Errno.OK, m.Fs.Write(file!, new byte[3], 0, out _, user));
        Assert.Equal(Errno.OK, m.Fs.Write(file!, new byte[3], 0, out _, FuseCaller.Root));
        var flags = m.Of(FuseOpcode.Write).Select(w => (FuseWriteFlags)w.Arg<FuseWriteIn>().WriteFlags).ToArray();
        // Uncached writes are direct I/O and carry the writer's lock owner as well.
        Assert.Equal(new[] { FuseWriteFlags.KillSuidgid | FuseWriteFlags.LockOwner, FuseWriteFlags.LockOwner }, flags);
        m.Fs.Release(file!);
    }

    // ---------------------------------------------------------------- ENOSYS fallbacks

    [Fact]
    public void StatxFallsBackToGetattrAfterEnosys()
    {
        var mini = new MiniFs();
        mini.Add("f", 5, FakeMount.File644, size: 77);
        using var m = Mount(mini, minor: 41);
        Assert.Equal(Errno.OK, m.Fs.Walk("f", out var node));
        Assert.Equal(Errno.OK, m.Fs.Statx(node, out var stx));
        Assert.Equal(77ul, stx.FileSize);
        Assert.Equal(Errno.OK, m.Fs.Statx(node, out stx));
        Assert.Equal(1, m.Count(FuseOpcode.Statx));
        Assert.True(m.Count(FuseOpcode.Getattr) >= 1);
    }

    [Fact]
    public void AStatxReplyWithAnotherFileTypeOrAnImpossibleSizeIsEioAndMakesTheNodeBad()
    {
        var answers = new Queue<FuseStatx>(new[]
        {
            new FuseStatx { Mask = 0x7FF, Mode = (ushort)FakeMount.Dir755 },
            new FuseStatx { Mask = 0x7FF, Mode = (ushort)FakeMount.File644, FileSize = ulong.MaxValue },
        });
        var mini = new MiniFs
        {
            Override = r => r.Opcode == FuseOpcode.Statx ? FakeAnswer.Of(new FuseStatxOut { Stat = answers.Dequeue() }) : null,
        };
        mini.Add("f", 5, FakeMount.File644);
        mini.Add("g", 6, FakeMount.File644);
        using var m = Mount(mini, minor: 41);
        Assert.Equal(Errno.OK, m.Fs.Walk("f", out var f));
        Assert.Equal(Errno.EIO, m.Fs.Statx(f, out var stx));
        Assert.Equal(0u, stx.Mask);
        Assert.True(f.IsStale);
        Assert.Equal(Errno.OK, m.Fs.Walk("g", out var g));
        Assert.Equal(Errno.EIO, m.Fs.Statx(g, out stx));
        Assert.Equal(0ul, stx.FileSize);
        Assert.True(g.IsStale);
        Assert.Equal(2, m.Count(FuseOpcode.Statx));
    }

    [Fact]
    public void Rename2AnsweredWithEnosysIsEinvalAndNotSentAgain()
    {
        var mini = new MiniFs();
        mini.Add("a", 5, FakeMount.File644);
        using var m = Mount(mini);
        Assert.Equal(Errno.EINVAL, m.Fs.Rename(m.Fs.Root, "a", m.Fs.Root, "b", FuseFs.RenameNoReplace));
        Assert.Equal(Errno.EINVAL, m.Fs.Rename(m.Fs.Root, "a", m.Fs.Root, "b", FuseFs.RenameNoReplace));
        Assert.Equal(1, m.Count(FuseOpcode.Rename2));
        Assert.Equal(Errno.OK, m.Fs.Rename(m.Fs.Root, "a", m.Fs.Root, "b"));
        Assert.Equal(1, m.Count(FuseOpcode.Rename));
    }

    [Fact]
    public void XattrLseekFallocateCopyAndSyncfsRememberEnosys()
    {
        var mini = new MiniFs();
        mini.Add("f", 5, FakeMount.File644, size: 1000);
        mini.Add("g", 6, FakeMount.File644, size: 0);
        using var m = Mount(mini);
        Assert.Equal(Errno.OK, m.Fs.Walk("f", out var f));
        Assert.Equal(Errno.OK, m.Fs.Walk("g", out var g));
        Assert.Equal(Errno.OK, m.Fs.Open(f, Libc.O_RDWR, out var ff));
        Assert.Equal(Errno.OK, m.Fs.Open(g, Libc.O_RDWR, out var gf));
        for (int i = 0; i < 2; i++)
        {
            Assert.Equal(Errno.EOPNOTSUPP, m.Fs.SetXattr(f, "user.a", "v"u8));
            Assert.Equal(Errno.EOPNOTSUPP, m.Fs.GetXattr(f, "user.a", new byte[8], out _));
            Assert.Equal(Errno.EOPNOTSUPP, m.Fs.ListXattr(f, new byte[8], out _));
            Assert.Equal(Errno.EOPNOTSUPP, m.Fs.RemoveXattr(f, "user.a"));
            Assert.Equal(Errno.EOPNOTSUPP, m.Fs.Fallocate(ff!, 0, 0, 10));
            Assert.Equal(Errno.OK, m.Fs.Lseek(ff!, 10, FuseFs.SeekData, out long data));
            Assert.Equal(10, data);
            Assert.Equal(Errno.OK, m.Fs.Lseek(ff!, 10, FuseFs.SeekHole, out long hole));
            Assert.Equal(1000, hole);
            Assert.Equal(Errno.ENXIO, m.Fs.Lseek(ff!, 1000, FuseFs.SeekData, out _));
            Assert.Equal(Errno.OK, m.Fs.CopyFileRange(ff!, 0, gf!, 0, 100, out long copied));
            Assert.Equal(100, copied);
        }
        mini.Override = r => r.Opcode == FuseOpcode.Syncfs ? FakeAnswer.Fail(Errno.ENOSYS) : null;
        Assert.Equal(Errno.OK, m.Fs.SyncFs());
        Assert.Equal(Errno.OK, m.Fs.SyncFs());
        foreach (var op in new[] { FuseOpcode.Setxattr, FuseOpcode.Getxattr, FuseOpcode.Listxattr, FuseOpcode.Removexattr,
                     FuseOpcode.Fallocate, FuseOpcode.Lseek, FuseOpcode.CopyFileRange, FuseOpcode.Syncfs })
        {
            Assert.True(m.Count(op) == 1, $"{op} sent {m.Count(op)} times");
        }
        // The copy fell back to READ + WRITE through the shim.
        Assert.True(m.Count(FuseOpcode.Write) >= 2);
        m.Fs.Release(ff!);
        m.Fs.Release(gf!);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void TheUmaskIsAppliedByTheShimUnlessDontMask(bool dontMask)
    {
        var mini = new MiniFs();
        mini.Override = r => r.Opcode == FuseOpcode.Mkdir ? FakeMount.Entry(20, FakeMount.Attr(20, FakeMount.Dir755)) : null;
        var granted = FuseConnOptions.DefaultFlags & (dontMask ? ~FuseInitFlags.None : ~FuseInitFlags.DontMask);
        using var m = Mount(mini, granted);
        Assert.Equal(Errno.OK, m.Fs.Mkdir(m.Fs.Root, "d", 0x1FF, out var node, new FuseCaller(0, 0, umask: 0x12)));
        var mkdir = Assert.Single(m.Of(FuseOpcode.Mkdir)).Arg<FuseMkdirIn>();
        Assert.Equal(dontMask ? 0x1FFu : 0x1EDu, mkdir.Mode);
        Assert.Equal(0x12u, mkdir.Umask);
        Assert.Equal(1, node!.LookupCount);
    }

    // ---------------------------------------------------------------- directories

    [Fact]
    public void ReaddirplusPopulatesNodesCountsLookupsAndSkipsDots()
    {
        var mini = new MiniFs();
        mini.Add("d", 5, FakeMount.Dir755);
        mini.Override = r => r.Opcode switch
        {
            FuseOpcode.Readdirplus when r.Arg<FuseReadIn>().Offset == 0 => FakeAnswer.Ok(FakeMount.Dirents(true,
                (".", 5, FakeMount.Dir755, 1), ("..", 1, FakeMount.Dir755, 2), ("x", 10, FakeMount.File644, 3), ("y", 11, FakeMount.Dir755, 4))),
            FuseOpcode.Readdirplus or FuseOpcode.Readdir => FakeAnswer.Ok(),
            _ => null,
        };
        using var m = Mount(mini);
        Assert.Equal(Errno.OK, m.Fs.Walk("d", out var dir));
        var entries = new List<FuseDirEntry>();
        Assert.Equal(Errno.OK, m.Fs.ReadDirectoryAll(dir, entries));
        Assert.Equal(new[] { ".", "..", "x", "y" }, entries.Select(e => e.Name));
        Assert.Null(entries[0].Node);
        Assert.Null(entries[1].Node);
        Assert.Equal(1, entries[2].Node!.LookupCount);
        Assert.Equal(1, entries[3].Node!.LookupCount);
        Assert.True(entries[3].Node!.IsDirectory);
        Assert.Equal(1, m.Count(FuseOpcode.Readdirplus));
        // The names are in the cache: no LOOKUP for them.
        Assert.Equal(Errno.OK, m.Fs.Lookup(dir, "x", out var x));
        Assert.Same(entries[2].Node, x);
        Assert.Equal(0, m.Count(FuseOpcode.Lookup) - 1); // only the walk's lookup of "d"
        // Dropping the caches returns both lookups in a batch.
        Assert.Equal(3, m.Fs.DropCaches());
        Assert.True(m.Fs.Conn.Quiesce(Timeout));
        var batch = Assert.Single(m.Of(FuseOpcode.BatchForget));
        var forgets = MemoryMarshal.Cast<byte, FuseForgetOne>(batch.Args.AsSpan(FuseBatchForgetIn.Size)).ToArray();
        Assert.Equal(new[] { (5ul, 1ul), (10ul, 1ul), (11ul, 1ul) }, forgets.Select(f => (f.NodeId, f.Nlookup)).OrderBy(f => f.NodeId));
        Assert.Equal(0, m.Fs.TotalLookups);
    }

    [Fact]
    public void ReaddirResumesFromTheLastOffsetAndUsesPlusOnlyAtTheStartWithAuto()
    {
        var mini = new MiniFs();
        mini.Add("d", 5, FakeMount.Dir755);
        mini.Override = r =>
        {
            if (r.Opcode is not (FuseOpcode.Readdir or FuseOpcode.Readdirplus))
            {
                return null;
            }
            bool plus = r.Opcode == FuseOpcode.Readdirplus;
            ulong offset = r.Arg<FuseReadIn>().Offset;
            // Two entries per call, offsets 1..6, then the end.
            if (offset >= 6)
            {
                return FakeAnswer.Ok();
            }
            return FakeAnswer.Ok(FakeMount.Dirents(plus, ($"e{offset + 1}", 100 + offset + 1, FakeMount.File644, offset + 1),
                ($"e{offset + 2}", 100 + offset + 2, FakeMount.File644, offset + 2)));
        };
        using var m = Mount(mini);
        Assert.Equal(Errno.OK, m.Fs.Walk("d", out var dir));
        var names = m.Fs.EnumerateDirectory(dir).Select(e => e.Name).ToArray();
        Assert.Equal(new[] { "e1", "e2", "e3", "e4", "e5", "e6" }, names);
        var calls = m.Daemon.Seen.Where(r => r.Opcode is FuseOpcode.Readdir or FuseOpcode.Readdirplus)
            .Select(r => (r.Opcode, r.Arg<FuseReadIn>().Offset)).ToArray();
        Assert.Equal(new[] { (FuseOpcode.Readdirplus, 0ul), (FuseOpcode.Readdir, 2ul), (FuseOpcode.Readdir, 4ul), (FuseOpcode.Readdir, 6ul) }, calls);
        Assert.All(m.Daemon.Seen.Where(r => r.Opcode is FuseOpcode.Readdir or FuseOpcode.Readdirplus),
            r => Assert.Equal((uint)FuseConn.PageSize, r.Arg<FuseReadIn>().Length));
    }

    [Fact]
    public void ADirentWithASlashInItsNameIsEio()
    {
        var mini = new MiniFs();
        mini.Add("d", 5, FakeMount.Dir755);
        mini.Override = r => r.Opcode == FuseOpcode.Readdir ? FakeAnswer.Ok(FakeMount.Dirents(false, ("a/b", 7, FakeMount.File644, 1))) : null;
        using var m = Mount(mini, FuseConnOptions.DefaultFlags & ~FuseInitFlags.DoReaddirplus);
        Assert.Equal(Errno.OK, m.Fs.Walk("d", out var dir));
        Assert.Equal(Errno.EIO, m.Fs.ReadDirectoryAll(dir, new List<FuseDirEntry>()));
    }

    [Fact]
    public void UnlinkingTheLastLinkEvictsTheNodeButNotWhileItIsOpen()
    {
        var mini = new MiniFs();
        mini.Add("one", 5, FakeMount.File644, nlink: 1);
        mini.Add("two", 6, FakeMount.File644, nlink: 2);
        mini.Add("open", 7, FakeMount.File644, nlink: 1);
        using var m = Mount(mini);
        Assert.Equal(Errno.OK, m.Fs.Walk("one", out _));
        Assert.Equal(Errno.OK, m.Fs.Walk("two", out var two));
        Assert.Equal(Errno.OK, m.Fs.Walk("open", out var open));
        Assert.Equal(Errno.OK, m.Fs.Open(open, Libc.O_RDONLY, out var file));
        Assert.Equal(Errno.OK, m.Fs.Unlink(m.Fs.Root, "one"));
        Assert.Equal(Errno.OK, m.Fs.Unlink(m.Fs.Root, "two"));
        Assert.Equal(Errno.OK, m.Fs.Unlink(m.Fs.Root, "open"));
        Assert.True(m.Fs.Conn.Quiesce(Timeout));
        Assert.Equal(new[] { 5ul }, m.Of(FuseOpcode.Forget).Select(f => f.Header.NodeId));
        // Still linked once: kept, with the walk's and the unlink's lookups.
        Assert.Equal(2, two.LookupCount);
        m.Fs.Release(file!);
        Assert.True(m.Fs.Conn.Quiesce(Timeout));
        Assert.Equal(new[] { 5ul, 7ul }, m.Of(FuseOpcode.Forget).Select(f => f.Header.NodeId));
    }

    [Fact]
    public void RenameChecksTheVfsRulesBeforeSending()
    {
        var mini = new MiniFs();
        mini.Add("file", 5, FakeMount.File644);
        mini.Add("dir", 6, FakeMount.Dir755);
        mini.Add("other", 7, FakeMount.File644);
        using var m = Mount(mini);
        Assert.Equal(Errno.EEXIST, m.Fs.Rename(m.Fs.Root, "file", m.Fs.Root, "other", FuseFs.RenameNoReplace));
        Assert.Equal(Errno.EISDIR, m.Fs.Rename(m.Fs.Root, "file", m.Fs.Root, "dir"));
        Assert.Equal(Errno.ENOTDIR, m.Fs.Rename(m.Fs.Root, "dir", m.Fs.Root, "file"));
        Assert.Equal(Errno.ENOENT, m.Fs.Rename(m.Fs.Root, "missing", m.Fs.Root, "x"));
        Assert.Equal(Errno.ENOENT, m.Fs.Rename(m.Fs.Root, "file", m.Fs.Root, "missing", FuseFs.RenameExchange));
        Assert.Equal(Errno.EINVAL, m.Fs.Rename(m.Fs.Root, "file", m.Fs.Root, "x", FuseFs.RenameNoReplace | FuseFs.RenameExchange));
        Assert.Equal(0, m.Count(FuseOpcode.Rename) + m.Count(FuseOpcode.Rename2));
        Assert.Equal(Errno.OK, m.Fs.Rename(m.Fs.Root, "file", m.Fs.Root, "other"));
        var rename = Assert.Single(m.Of(FuseOpcode.Rename));
        Assert.Equal(1ul, rename.Arg<FuseRenameIn>().NewDir);
        Assert.Equal("file", FakeMount.Name(rename, FuseRenameIn.Size));
        Assert.Equal("other", FakeMount.Name(rename, FuseRenameIn.Size + 5));
        // The replaced file lost its only link: evicted.
        Assert.True(m.Fs.Conn.Quiesce(Timeout));
        Assert.Contains(m.Of(FuseOpcode.Forget), f => f.Header.NodeId == 7);
    }

    // ---------------------------------------------------------------- submounts

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void ASubmountAnnouncedByTheDaemonBecomesAChildMount(bool negotiated)
    {
        var mini = new MiniFs();
        mini.Add("mnt", 5, FakeMount.Dir755, flags: (uint)FuseAttrFlags.Submount);
        mini.Add("inner", 6, FakeMount.File644);
        var granted = negotiated ? FuseConnOptions.DefaultFlags : FuseConnOptions.DefaultFlags & ~FuseInitFlags.Submounts;
        using var m = Mount(mini, granted);
        Assert.Equal(Errno.OK, m.Fs.Walk("mnt", out var point));
        Assert.Equal(negotiated, point.IsSubmountPoint);
        Assert.Same(m.Fs.RootMount, point.Mount);
        Assert.Equal(Errno.OK, m.Fs.Walk("mnt/inner", out var inner));
        if (!negotiated)
        {
            Assert.Same(m.Fs.RootMount, inner.Mount);
            return;
        }
        var child = inner.Mount;
        Assert.NotSame(m.Fs.RootMount, child);
        Assert.True(child.IsSubmount);
        Assert.Same(point, child.MountPoint);
        Assert.Same(m.Fs.RootMount, child.Parent);
        Assert.NotEqual(m.Fs.RootMount.DeviceId, child.DeviceId);
        Assert.Equal(Errno.OK, m.Fs.Statx(inner, out var stx));
        Assert.Equal(child.DeviceId, (stx.DevMajor << 8) | stx.DevMinor);
        // Each mount syncs its own tree: SYNCFS names the submount's root.
        Assert.Equal(Errno.OK, m.Fs.SyncFs(child));
        Assert.Equal(Errno.OK, m.Fs.SyncFs());
        Assert.Equal(new[] { 5ul, 1ul }, m.Of(FuseOpcode.Syncfs).Select(s => s.Header.NodeId));
        // A submount point is busy: it cannot be removed or forgotten by a cache drop.
        Assert.Equal(Errno.EBUSY, m.Fs.Rmdir(m.Fs.Root, "mnt"));
        m.Fs.DropCaches();
        Assert.False(point.LookupCount == 0);
    }

    // ---------------------------------------------------------------- permissions

    [Fact]
    public void DefaultPermissionsAreCheckedByTheShimBeforeAnythingIsSent()
    {
        var mini = new MiniFs();
        mini.Add("secret", 5, FakeMount.File600, uid: 0, gid: 0);
        mini.Add("group", 6, 0x81A0 /* 0640 */, uid: 0, gid: 50);
        mini.Add("private", 7, 0x41C0 /* 0700 */, uid: 0);
        mini.Add("noexec", 8, FakeMount.File644);
        using var m = Mount(mini);
        var user = new FuseCaller(1000, 1000);
        var member = new FuseCaller(1000, 1000, groups: new uint[] { 50 });
        Assert.Equal(Errno.OK, m.Fs.Walk("secret", out var secret, user));
        Assert.Equal(Errno.EACCES, m.Fs.Open(secret, Libc.O_RDONLY, out _, user));
        Assert.Equal(Errno.OK, m.Fs.Open(secret, Libc.O_RDONLY, out var rootFile, FuseCaller.Root));
        Assert.Equal(Errno.OK, m.Fs.Walk("group", out var group, user));
        Assert.Equal(Errno.EACCES, m.Fs.Open(group, Libc.O_RDONLY, out _, user));
        Assert.Equal(Errno.OK, m.Fs.Open(group, Libc.O_RDONLY, out var memberFile, member));
        Assert.Equal(Errno.EACCES, m.Fs.Open(group, Libc.O_WRONLY, out _, member));
        Assert.Equal(1 + 1, m.Count(FuseOpcode.Open));
        // A directory without search permission stops the walk below it.
        Assert.Equal(Errno.OK, m.Fs.Walk("private", out var priv, user));
        int lookups = m.Count(FuseOpcode.Lookup);
        Assert.Equal(Errno.EACCES, m.Fs.Lookup(priv, "anything", out _, user));
        Assert.Equal(lookups, m.Count(FuseOpcode.Lookup));
        // Root may not execute a file without any x bit.
        Assert.Equal(Errno.OK, m.Fs.Walk("noexec", out var noexec));
        Assert.Equal(Errno.EACCES, m.Fs.Access(noexec, ModeBits.MayExec, FuseCaller.Root));
        Assert.Equal(Errno.OK, m.Fs.Access(noexec, ModeBits.MayRead | ModeBits.MayWrite, FuseCaller.Root));
        Assert.Equal(Errno.EACCES, m.Fs.Access(noexec, ModeBits.MayWrite, user));
        Assert.Equal(0, m.Count(FuseOpcode.Access));
        // Only the owner chmods; only root chowns.
        Assert.Equal(Errno.EPERM, m.Fs.Chmod(secret, 0x1FF, user));
        Assert.Equal(Errno.EPERM, m.Fs.Chown(secret, 1000, null, user));
        Assert.Equal(Errno.EACCES, m.Fs.Truncate(secret, 0, user));
        Assert.Equal(0, m.Count(FuseOpcode.Setattr));
        Assert.Equal(Errno.OK, m.Fs.Chmod(secret, 0x1C0, FuseCaller.Root));
        Assert.Equal(1, m.Count(FuseOpcode.Setattr));
        m.Fs.Release(rootFile!);
        m.Fs.Release(memberFile!);
    }

    [Fact]
    public void StickyDirectoriesProtectOtherUsersEntries()
    {
        var mini = new MiniFs();
        mini.Attrs[1] = FakeMount.Attr(1, 0x43FF /* 1777 */);
        mini.Add("theirs", 5, FakeMount.File644, uid: 2000);
        mini.Add("mine", 6, FakeMount.File644, uid: 1000);
        using var m = Mount(mini);
        var user = new FuseCaller(1000, 1000);
        Assert.Equal(Errno.OK, m.Fs.GetAttr(m.Fs.Root, out _, force: true));
        Assert.Equal(Errno.EPERM, m.Fs.Unlink(m.Fs.Root, "theirs", user));
        Assert.Equal(Errno.OK, m.Fs.Unlink(m.Fs.Root, "mine", user));
        Assert.Equal(Errno.OK, m.Fs.Unlink(m.Fs.Root, "theirs", FuseCaller.Root));
        Assert.Equal(new[] { "mine", "theirs" }, m.Of(FuseOpcode.Unlink).Select(u => FakeMount.Name(u)));
    }

    [Fact]
    public void WithoutDefaultPermissionsTheDaemonDecides()
    {
        var mini = new MiniFs();
        mini.Add("secret", 5, FakeMount.File600, uid: 0);
        mini.Override = r => r.Opcode == FuseOpcode.Access ? FakeAnswer.Fail(Errno.EACCES) : null;
        using var m = Mount(mini, options: new MountOptions { DefaultPermissions = false });
        var user = new FuseCaller(1000, 1000);
        Assert.Equal(Errno.OK, m.Fs.Walk("secret", out var secret, user));
        Assert.Equal(Errno.OK, m.Fs.Open(secret, Libc.O_RDONLY, out var file, user));
        Assert.Equal(1000u, m.Of(FuseOpcode.Open).Single().Header.Uid);
        Assert.Equal(Errno.EACCES, m.Fs.Access(secret, ModeBits.MayRead, user));
        var access = Assert.Single(m.Of(FuseOpcode.Access));
        Assert.Equal((uint)ModeBits.MayRead, access.Arg<FuseAccessIn>().Mask);
        m.Fs.Release(file!);
    }

    [Fact]
    public void WithoutAllowOtherOnlyTheMountOwnerGetsIn()
    {
        var mini = new MiniFs();
        mini.Add("f", 5, FakeMount.File644);
        using var m = Mount(mini, options: new MountOptions { AllowOther = false, UserId = 1000, GroupId = 1000 });
        Assert.Equal(Errno.OK, m.Fs.Walk("f", out _, new FuseCaller(1000, 1000)));
        Assert.Equal(Errno.EACCES, m.Fs.Walk("f", out _, new FuseCaller(2000, 2000)));
        Assert.Equal(Errno.EACCES, m.Fs.GetAttr(m.Fs.Root, out _, new FuseCaller(2000, 2000)));
    }

    // ---------------------------------------------------------------- locks

    [Fact]
    public void WithoutPosixLocksLocksStayLocalToTheGuest()
    {
        var mini = new MiniFs();
        mini.Add("f", 5, FakeMount.File644);
        using var m = Mount(mini, FuseConnOptions.DefaultFlags & ~(FuseInitFlags.PosixLocks | FuseInitFlags.FlockLocks));
        var p1 = new FuseCaller(0, 0, 100);
        var p2 = new FuseCaller(0, 0, 200);
        Assert.Equal(Errno.OK, m.Fs.Walk("f", out var node));
        Assert.Equal(Errno.OK, m.Fs.Open(node, Libc.O_RDWR, out var f1, p1));
        Assert.Equal(Errno.OK, m.Fs.Open(node, Libc.O_RDWR, out var f2, p2));
        Assert.Equal(Errno.OK, m.Fs.SetLock(f1!, new FileLockRange(FileLockRange.WriteLock, 0, 99), wait: false, p1));
        Assert.Equal(Errno.EAGAIN, m.Fs.SetLock(f2!, new FileLockRange(FileLockRange.ReadLock, 50, 60), wait: false, p2));
        Assert.Equal(Errno.OK, m.Fs.SetLock(f2!, new FileLockRange(FileLockRange.ReadLock, 100, 200), wait: false, p2));
        var probe = new FileLockRange(FileLockRange.WriteLock, 0, FileLockRange.ToEof);
        Assert.Equal(Errno.OK, m.Fs.GetLock(f2!, ref probe, p2));
        Assert.Equal(FileLockRange.WriteLock, probe.Type);
        Assert.Equal(0ul, probe.Start);
        // A waiting lock gets it when the holder closes.
        Errno waited = Errno.EIO;
        var waiter = new Thread(() => waited = m.Fs.SetLock(f2!, new FileLockRange(FileLockRange.WriteLock, 0, 10), wait: true, p2));
        waiter.Start();
        Assert.False(waiter.Join(100));
        m.Fs.Release(f1!, p1);
        Assert.True(waiter.Join(Timeout));
        Assert.Equal(Errno.OK, waited);
        // flock is separate and per open file.
        Assert.Equal(Errno.OK, m.Fs.Open(node, Libc.O_RDONLY, out var f3, p1));
        Assert.Equal(Errno.OK, m.Fs.Flock(f2!, FuseFs.LockExclusive | FuseFs.LockNonBlocking));
        Assert.Equal(Errno.EAGAIN, m.Fs.Flock(f3!, FuseFs.LockShared | FuseFs.LockNonBlocking));
        Assert.Equal(0, m.Count(FuseOpcode.Setlk) + m.Count(FuseOpcode.Getlk) + m.Count(FuseOpcode.Setlkw));
        m.Fs.Release(f2!, p2);
        m.Fs.Release(f3!, p1);
    }

    [Fact]
    public void WithPosixLocksTheDaemonGetsTheLockRequests()
    {
        var mini = new MiniFs();
        mini.Add("f", 5, FakeMount.File644);
        mini.Override = r => r.Opcode == FuseOpcode.Getlk
            ? FakeAnswer.Of(new FuseLkOut { Lk = new FuseFileLock { Type = FileLockRange.Unlock } })
            : null;
        using var m = Mount(mini);
        var p1 = new FuseCaller(0, 0, 100);
        Assert.Equal(Errno.OK, m.Fs.Walk("f", out var node));
        Assert.Equal(Errno.OK, m.Fs.Open(node, Libc.O_RDWR, out var f1, p1));
        Assert.Equal(Errno.OK, m.Fs.SetLock(f1!, new FileLockRange(FileLockRange.WriteLock, 5, 9), wait: false, p1));
        Assert.Equal(Errno.OK, m.Fs.SetLock(f1!, new FileLockRange(FileLockRange.ReadLock, 0, 1), wait: true, p1));
        var probe = new FileLockRange(FileLockRange.WriteLock, 0, 100);
        Assert.Equal(Errno.OK, m.Fs.GetLock(f1!, ref probe, p1));
        Assert.Equal(Errno.OK, m.Fs.Flock(f1!, FuseFs.LockExclusive));
        var setlk = Assert.Single(m.Of(FuseOpcode.Setlk)).Arg<FuseLkIn>();
        Assert.Equal((5ul, 9ul, 1u, 100u), (setlk.Lk.Start, setlk.Lk.End, setlk.Lk.Type, setlk.Lk.Pid));
        Assert.Equal(7ul, setlk.Fh);
        var setlkw = m.Of(FuseOpcode.Setlkw).Select(s => s.Arg<FuseLkIn>()).ToArray();
        Assert.Equal(2, setlkw.Length);
        Assert.Equal(setlk.Owner, setlkw[0].Owner);
        Assert.Equal((uint)FuseLkFlags.Flock, setlkw[1].LkFlags);
        Assert.NotEqual(setlk.Owner, setlkw[1].Owner);
        m.Fs.Release(f1!, p1);
        Assert.True(m.Fs.Conn.Quiesce(Timeout));
        var release = Assert.Single(m.Of(FuseOpcode.Release)).Arg<FuseReleaseIn>();
        Assert.Equal((uint)FuseReleaseFlags.FlockUnlock, release.ReleaseFlags);
        Assert.Equal(setlkw[1].Owner, release.LockOwner);
    }
}
