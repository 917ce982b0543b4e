using System.Text;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Xunit;

namespace Vhostfsd.FusePassthrough.Tests;

public class XattrTests
{
    private const ulong Root = FuseConstants.RootId;

    private static unsafe string? HostGet(string path, string name)
    {
        byte[] buffer = new byte[4096];
        fixed (byte* p = Encoding.UTF8.GetBytes(path + "\0"))
        fixed (byte* n = Encoding.UTF8.GetBytes(name + "\0"))
        fixed (byte* v = buffer)
        {
            nint len = Libc.Lgetxattr(p, n, v, (nuint)buffer.Length);
            return len < 0 ? null : Encoding.UTF8.GetString(buffer, 0, (int)len);
        }
    }

    private static unsafe void HostSet(string path, string name, string value)
    {
        fixed (byte* p = Encoding.UTF8.GetBytes(path + "\0"))
        fixed (byte* n = Encoding.UTF8.GetBytes(name + "\0"))
        fixed (byte* v = Encoding.UTF8.GetBytes(value))
        {
            PosixException.Check(Libc.Lsetxattr(p, n, v, (nuint)Encoding.UTF8.GetByteCount(value), 0), "lsetxattr");
        }
    }

    private static List<string> Names(byte[] list) => Encoding.UTF8.GetString(list).Split('\0', StringSplitOptions.RemoveEmptyEntries).ToList();

    /// <summary>Both ways to reach every file type: the *xattrat calls (Linux 6.13+) and the older
    /// f*xattr on a reopened fd / path calls on /proc/self/fd/N.</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void SetGetListRemoveOnFilesAndDirectories(bool legacy)
    {
        using var f = new ShareFixture(makeOptions: s => new PassthroughOptions { SharedDir = s, Xattr = true, AvoidXattrAt = legacy });
        Assert.Equal(!legacy, f.Server.UsesXattrAt);
        File.WriteAllText(f.HostPath("f"), "x");
        Directory.CreateDirectory(f.HostPath("d"));
        foreach (string name in new[] { "f", "d" })
        {
            FuseEntryOut e = f.Client.LookupOk(Root, name);
            Assert.Equal(0, f.Client.Setxattr(e.NodeId, "user.color", "blue"u8).Error);
            Assert.Equal("blue", HostGet(f.HostPath(name), "user.color"));
            Assert.Equal(4u, f.Client.Getxattr(e.NodeId, "user.color", 0).Ok().Read<FuseGetxattrOut>().Length);
            Assert.Equal("blue", Encoding.UTF8.GetString(f.Client.Getxattr(e.NodeId, "user.color", 100).Ok().Payload));
            Assert.Equal(Errno.ERANGE, f.Client.Getxattr(e.NodeId, "user.color", 2).Errno);
            Assert.Equal(Errno.EEXIST, f.Client.Setxattr(e.NodeId, "user.color", "red"u8, Libc.XATTR_CREATE).Errno);
            Assert.Equal(Errno.ENODATA, f.Client.Setxattr(e.NodeId, "user.none", "red"u8, Libc.XATTR_REPLACE).Errno);
            HostSet(f.HostPath(name), "user.host", "h");
            uint listSize = f.Client.Listxattr(e.NodeId, 0).Ok().Read<FuseGetxattrOut>().Length;
            var names = Names(f.Client.Listxattr(e.NodeId, listSize).Ok().Payload);
            Assert.Contains("user.color", names);
            Assert.Contains("user.host", names);
            Assert.Equal(0, f.Client.Removexattr(e.NodeId, "user.color").Error);
            Assert.Null(HostGet(f.HostPath(name), "user.color"));
            Assert.Equal(Errno.ENODATA, f.Client.Getxattr(e.NodeId, "user.color", 100).Errno);
            Assert.Equal(Errno.ENODATA, f.Client.Removexattr(e.NodeId, "user.color").Errno);
        }
        // Symlinks and special files go through /proc/self/fd; user.* is refused on symlinks by the host.
        File.CreateSymbolicLink(f.HostPath("l"), "f");
        FuseEntryOut l = f.Client.LookupOk(Root, "l");
        Assert.Equal(Errno.EPERM, f.Client.Setxattr(l.NodeId, "user.x", "1"u8).Errno);
        Assert.Equal(0, f.Client.Setxattr(l.NodeId, "trusted.x", "1"u8).Error);
        Assert.Equal("1", HostGet(f.HostPath("l"), "trusted.x"));
        Assert.Null(HostGet(f.HostPath("f"), "trusted.x"));
        FuseEntryOut fifo = f.Client.Mknod(Root, "p", Libc.S_IFIFO | 0x1A4).Ok().Read<FuseEntryOut>();
        // user.* is for regular files and directories only (the host says EPERM), trusted.* works.
        Assert.Equal(Errno.EPERM, f.Client.Setxattr(fifo.NodeId, "user.y", "2"u8).Errno);
        Assert.Equal(0, f.Client.Setxattr(fifo.NodeId, "trusted.y", "2"u8).Error);
        Assert.Equal("2", Encoding.UTF8.GetString(f.Client.Getxattr(fifo.NodeId, "trusted.y", 10).Ok().Payload));
        Assert.Equal("2", HostGet(f.HostPath("p"), "trusted.y"));
        // Malformed: value size larger than what was sent, name without NUL.
        Assert.Equal(Errno.EINVAL, f.Client.Send(FuseOpcode.Setxattr, fifo.NodeId, new FuseArgs().Add(10u).Add(0u).Name("trusted.z").Bytes("ab"u8)).Errno);
        Assert.Equal(Errno.EINVAL, f.Client.Send(FuseOpcode.Getxattr, fifo.NodeId, new FuseArgs().Add(new FuseGetxattrIn { Length = 10 }).Bytes("user.z"u8)).Errno);
    }

    [Fact]
    public void AclNamesAreHiddenUnlessAclsAreNegotiated()
    {
        using var f = new ShareFixture(makeOptions: s => new PassthroughOptions { SharedDir = s, Xattr = true });
        File.WriteAllText(f.HostPath("f"), "x");
        FuseEntryOut e = f.Client.LookupOk(Root, "f");
        Assert.Equal(Errno.EOPNOTSUPP, f.Client.Getxattr(e.NodeId, "system.posix_acl_access", 100).Errno);
        Assert.Equal(Errno.EOPNOTSUPP, f.Client.Setxattr(e.NodeId, "system.posix_acl_default", "x"u8).Errno);
    }

    [Fact]
    public void XattrMapPrefixesClientNamesAndHidesOthers()
    {
        using var f = new ShareFixture(makeOptions: s => new PassthroughOptions { SharedDir = s, XattrMap = ":prefix:all:trusted.:user.virtiofs.: :bad:server::trusted.: :bad:client:user.virtiofs.:: :ok:all:::" });
        File.WriteAllText(f.HostPath("f"), "x");
        FuseEntryOut e = f.Client.LookupOk(Root, "f");
        Assert.Equal(0, f.Client.Setxattr(e.NodeId, "trusted.overlay", "o"u8).Error);
        Assert.Equal("o", HostGet(f.HostPath("f"), "user.virtiofs.trusted.overlay"));
        Assert.Null(HostGet(f.HostPath("f"), "trusted.overlay"));
        Assert.Equal("o", Encoding.UTF8.GetString(f.Client.Getxattr(e.NodeId, "trusted.overlay", 10).Ok().Payload));
        HostSet(f.HostPath("f"), "trusted.hostonly", "secret");
        HostSet(f.HostPath("f"), "user.plain", "p");
        var names = Names(f.Client.Listxattr(e.NodeId, 4096).Ok().Payload);
        Assert.Contains("trusted.overlay", names);
        Assert.Contains("user.plain", names);
        Assert.DoesNotContain("trusted.hostonly", names);
        Assert.DoesNotContain(names, n => n.StartsWith("user.virtiofs."));
        Assert.Equal(Errno.EPERM, f.Client.Setxattr(e.NodeId, "user.virtiofs.trusted.overlay", "z"u8).Errno);
        Assert.Equal(Errno.ENODATA, f.Client.Getxattr(e.NodeId, "user.virtiofs.x", 10).Errno);
    }

    [Fact]
    public void XattrMapParsing()
    {
        Assert.Equal(1, XattrMap.Parse(":ok:all:::").RuleCount);
        // map expands to prefix + bad + ok.
        Assert.Equal(3, XattrMap.Parse(":map:trusted.:user.virtiofs.:").RuleCount);
        Assert.Equal(2, XattrMap.Parse("/map//user.virtiofs./").RuleCount);
        Assert.Equal(3, XattrMap.Parse("  /prefix/all/a./b./   |ok|all|||  :bad:all:::").RuleCount);
        Assert.Throws<FormatException>(() => XattrMap.Parse(""));
        Assert.Throws<FormatException>(() => XattrMap.Parse(":ok:all::"));
        Assert.Throws<FormatException>(() => XattrMap.Parse(":nope:all:::"));
        Assert.Throws<FormatException>(() => XattrMap.Parse(":ok:everywhere:::"));
        Assert.Throws<FormatException>(() => XattrMap.Parse(":map:a:b: :ok:all:::"));
        Assert.Throws<FormatException>(() => XattrMap.Parse(":prefix:all:trusted.:user.virtiofs.:"));
        Assert.Throws<FormatException>(() => new PassthroughOptions { SharedDir = "/", XattrMap = ":bad" }.Validate());

        var map = XattrMap.Parse(":map:trusted.:user.virtiofs.:");
        Span<byte> host = stackalloc byte[300];
        Assert.Equal(XattrMapAction.Pass, map.MapClient("trusted.a"u8, host, out int n));
        Assert.Equal("user.virtiofs.trusted.a", Encoding.UTF8.GetString(host[..n]));
        Assert.Equal(XattrMapAction.Deny, map.MapClient("user.virtiofs.x"u8, host, out _));
        Assert.Equal(XattrMapAction.Pass, map.MapClient("user.other"u8, host, out n));
        Assert.Equal("user.other", Encoding.UTF8.GetString(host[..n]));
        byte[] list = Encoding.UTF8.GetBytes("user.virtiofs.trusted.a\0trusted.b\0user.c\0");
        int length = map.MapServerList(list);
        Assert.Equal(new[] { "trusted.a", "user.c" }, Names(list[..length]));
        Assert.Equal(XattrMapAction.Unsupported, XattrMap.Parse(":unsupported:all:security.:::ok:all:::").MapClient("security.x"u8, host, out _));
    }
}

public class SecurityLabelTests
{
    private const ulong Root = FuseConstants.RootId;

    /// <summary>fuse_secctx_header{size, nr=1} + fuse_secctx{label size} + name + label, padded to 8.</summary>
    private static FuseArgs SecurityContext(string name, string label, out ushort units)
    {
        byte[] n = Encoding.UTF8.GetBytes(name + "\0");
        byte[] l = Encoding.UTF8.GetBytes(label);
        int body = FuseSecctxHeader.Size + FuseSecctx.Size + n.Length + l.Length;
        int total = FuseConstants.RecordAlign(body);
        units = (ushort)(total / 8);
        return new FuseArgs().Add(new FuseSecctxHeader { Length = (uint)total, NrSecctx = 1 }).Add(new FuseSecctx { Length = (uint)l.Length })
            .Bytes(n).Bytes(l).Bytes(new byte[total - body]);
    }

    private static unsafe string? HostLabel(string path, string name)
    {
        byte[] buffer = new byte[256];
        fixed (byte* p = Encoding.UTF8.GetBytes(path + "\0"))
        fixed (byte* x = Encoding.UTF8.GetBytes(name + "\0"))
        fixed (byte* v = buffer)
        {
            nint len = Libc.Lgetxattr(p, x, v, (nuint)buffer.Length);
            return len < 0 ? null : Encoding.UTF8.GetString(buffer, 0, (int)len);
        }
    }

    /// <summary>Sends MKDIR, CREATE, MKNOD and SYMLINK named <paramref name="prefix"/>-kind, each with
    /// the security context <paramref name="ctx"/>; returns the four errnos.</summary>
    private static Errno[] CreateEveryKind(ShareFixture f, string prefix, FuseArgs ctx, ushort units)
    {
        f.Client.TotalExtLen = units;
        var results = new[]
        {
            f.Client.Send(FuseOpcode.Mkdir, Root, new FuseArgs().Add(new FuseMkdirIn { Mode = 0x1ED }).Name(prefix + "-dir").Bytes(ctx.ToArray())).Errno,
            f.Client.Create(Root, prefix + "-file", Libc.O_RDWR | Libc.O_CREAT | Libc.O_EXCL, extensions: ctx).Errno,
            f.Client.Send(FuseOpcode.Mknod, Root, new FuseArgs().Add(new FuseMknodIn { Mode = Libc.S_IFIFO | 0x1A4 }).Name(prefix + "-fifo").Bytes(ctx.ToArray())).Errno,
            f.Client.Send(FuseOpcode.Symlink, Root, new FuseArgs().Name(prefix + "-link").Name("target").Bytes(ctx.ToArray())).Errno,
        };
        f.Client.TotalExtLen = 0;
        return results;
    }

    private static readonly string[] Kinds = ["dir", "file", "fifo", "link"];

    private static bool HostEntryExists(ShareFixture f, string name) =>
        File.Exists(f.HostPath(name)) || Directory.Exists(f.HostPath(name)) || new FileInfo(f.HostPath(name)).LinkTarget is not null;

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void CreatedEntriesGetTheGuestsLabel(bool legacy)
    {
        using var f = new ShareFixture(makeOptions: s => new PassthroughOptions { SharedDir = s, SecurityLabel = true, AvoidXattrAt = legacy });
        Assert.True(FuseConstants.JoinInitFlags(f.Init.Flags, f.Init.Flags2).HasFlag(FuseInitFlags.SecurityCtx));
        FuseArgs ctx = SecurityContext("security.label", "system_u:object_r:test_t:s0", out ushort units);
        Assert.All(CreateEveryKind(f, "labelled", ctx, units), e => Assert.Equal(Errno.OK, e));
        foreach (string kind in Kinds)
        {
            Assert.Equal("system_u:object_r:test_t:s0", HostLabel(f.HostPath("labelled-" + kind), "security.label"));
        }
    }

    /// <summary>A label the host refuses (here an --xattrmap rule sends it to user.*, which symlinks
    /// cannot have) undoes the creation.</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ALabelTheHostRefusesUndoesTheCreation(bool legacy)
    {
        using var f = new ShareFixture(makeOptions: s => new PassthroughOptions
        {
            SharedDir = s, SecurityLabel = true, AvoidXattrAt = legacy, XattrMap = ":prefix:client:security.:user.virtiofs.: :ok:all:::",
        });
        FuseArgs ctx = SecurityContext("security.label", "x", out ushort units);
        f.Client.TotalExtLen = units;
        Assert.Equal(Errno.EPERM, f.Client.Send(FuseOpcode.Symlink, Root, new FuseArgs().Name("link").Name("file").Bytes(ctx.ToArray())).Errno);
        f.Client.TotalExtLen = 0;
        Assert.False(HostEntryExists(f, "link"));
    }

    /// <summary>A security context is an LSM's label: only security.* names, never security.capability
    /// (a file capability, which the daemon as root could set), and it goes through --xattrmap like
    /// SETXATTR — a deny rule refuses the request, a prefix rule renames the host attribute. Every
    /// creating opcode, both ways of setting the label.</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void SecurityContextNamesGoThroughTheXattrMap(bool legacy)
    {
        using var f = new ShareFixture(makeOptions: s => new PassthroughOptions
        {
            SharedDir = s, SecurityLabel = true, AvoidXattrAt = legacy, XattrMap = ":bad:all:security.denied:: :map::user.virtiofs.:",
        });
        // A file capability granting CAP_SYS_ADMIN (vfs_cap_data revision 2).
        string capability = Encoding.Latin1.GetString([0, 0, 0, 2, 0, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        foreach (var (name, prefix) in new[] { ("security.capability", "cap"), ("user.hostile", "user"), ("trusted.hostile", "trusted"), ("security.", "empty"), ("security.denied", "denied") })
        {
            FuseArgs ctx = SecurityContext(name, capability, out ushort units);
            Assert.All(CreateEveryKind(f, prefix, ctx, units), e => Assert.Equal(Errno.EPERM, e));
            foreach (string kind in Kinds)
            {
                Assert.False(HostEntryExists(f, prefix + "-" + kind), $"{prefix}-{kind} was created");
            }
        }
        FuseArgs label = SecurityContext("security.selinux", "system_u:object_r:test_t:s0", out ushort n);
        Assert.All(CreateEveryKind(f, "mapped", label, n)[..2], e => Assert.Equal(Errno.OK, e));
        foreach (string kind in new[] { "dir", "file" })
        {
            string path = f.HostPath("mapped-" + kind);
            Assert.Equal("system_u:object_r:test_t:s0", HostLabel(path, "user.virtiofs.security.selinux"));
            Assert.Null(HostLabel(path, "security.selinux"));
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void CreateOfAnExistingFileNeitherRelabelsNorRemovesIt(bool legacy)
    {
        // security.unset is sent to a namespace the host does not have: setting it fails.
        using var f = new ShareFixture(makeOptions: s => new PassthroughOptions
        {
            SharedDir = s, SecurityLabel = true, AvoidXattrAt = legacy, XattrMap = ":prefix:client:security.unset:nonamespace.: :ok:all:::",
        });
        File.WriteAllText(f.HostPath("existing"), "kept");
        // CREATE without O_EXCL of a name that exists opens that file: a label that cannot be set
        // must not take the file away, and a good one is not applied to it.
        FuseArgs bad = SecurityContext("security.unset", "x", out ushort units);
        f.Client.TotalExtLen = units;
        Assert.Equal(0, f.Client.Create(Root, "existing", Libc.O_RDWR | Libc.O_CREAT, extensions: bad).Error);
        Assert.Equal(Errno.EOPNOTSUPP, f.Client.Create(Root, "new", Libc.O_RDWR | Libc.O_CREAT, extensions: bad).Errno);
        Assert.False(HostEntryExists(f, "new"));
        FuseArgs good = SecurityContext("security.label", "system_u:object_r:test_t:s0", out units);
        f.Client.TotalExtLen = units;
        Assert.Equal(0, f.Client.Create(Root, "existing", Libc.O_RDONLY | Libc.O_CREAT, extensions: good).Error);
        f.Client.TotalExtLen = 0;
        Assert.Equal("kept", File.ReadAllText(f.HostPath("existing")));
        Assert.Null(HostLabel(f.HostPath("existing"), "security.label"));
    }
    /// <summary>Plays the host user who renames their own entry of the same type (owned by uid 4242)
    /// over the name a labelled request just created, before the daemon sets the label.</summary>
    private static unsafe void SwapInDecoy(ShareFixture f, string name)
    {
        string decoy = f.HostPath(".decoy-" + name);
        string path = f.HostPath(name);
        switch (name[(name.LastIndexOf('-') + 1)..])
        {
            case "dir":
                Directory.CreateDirectory(decoy);
                break;
            case "file":
                File.WriteAllText(decoy, "the host user's");
                break;
            case "fifo":
                fixed (byte* p = Encoding.UTF8.GetBytes(decoy + "\0"))
                {
                    PosixException.Check(Libc.MknodAt(Libc.AT_FDCWD, p, Libc.S_IFIFO | 0x1A4, 0), "mkfifo");
                }
                break;
            default:
                File.CreateSymbolicLink(decoy, "elsewhere");
                break;
        }
        ShareFixture.Chown(decoy, 4242, 4242);
        fixed (byte* from = Encoding.UTF8.GetBytes(decoy + "\0"))
        fixed (byte* to = Encoding.UTF8.GetBytes(path + "\0"))
        {
            PosixException.Check(Libc.RenameAt2(Libc.AT_FDCWD, from, Libc.AT_FDCWD, to, 0), "rename");
        }
    }

    /// <summary>The label is set on the inode the request created, never by name: a host user who
    /// swaps their own entry in under the new name between the creation and the labelling gets no
    /// guest-chosen label on it, and the reply never describes their entry (the request fails, or —
    /// CREATE, which labels through its open fd — succeeds for the file it created).</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ALabelNeverLandsOnAnEntrySwappedInUnderTheNewName(bool legacy)
    {
        using var f = new ShareFixture(makeOptions: s => new PassthroughOptions { SharedDir = s, SecurityLabel = true, AvoidXattrAt = legacy });
        f.Server.Passthrough.AfterCreateBeforeLabel = name => SwapInDecoy(f, name);
        FuseArgs ctx = SecurityContext("security.label", "system_u:object_r:test_t:s0", out ushort units);
        f.Client.TotalExtLen = units;
        var replies = new[]
        {
            ("dir", f.Client.Send(FuseOpcode.Mkdir, Root, new FuseArgs().Add(new FuseMkdirIn { Mode = 0x1ED }).Name("race-dir").Bytes(ctx.ToArray()))),
            ("file", f.Client.Create(Root, "race-file", Libc.O_RDWR | Libc.O_CREAT | Libc.O_EXCL, extensions: ctx)),
            ("fifo", f.Client.Send(FuseOpcode.Mknod, Root, new FuseArgs().Add(new FuseMknodIn { Mode = Libc.S_IFIFO | 0x1A4 }).Name("race-fifo").Bytes(ctx.ToArray()))),
            ("link", f.Client.Send(FuseOpcode.Symlink, Root, new FuseArgs().Name("race-link").Name("target").Bytes(ctx.ToArray()))),
        };
        f.Client.TotalExtLen = 0;
        f.Server.Passthrough.AfterCreateBeforeLabel = null;
        foreach (var (kind, reply) in replies)
        {
            string path = f.HostPath("race-" + kind);
            Statx decoy = ShareFixture.HostStat(path);
            Assert.Equal(4242u, decoy.Uid);
            Assert.True(HostLabel(path, "security.label") is null, $"the decoy under race-{kind} got the guest's label");
            if (reply.Error == 0)
            {
                FuseEntryOut entry = reply.Read<FuseEntryOut>();
                Assert.NotEqual(decoy.Ino, entry.Attr.Ino);
                Assert.NotEqual(4242u, entry.Attr.Uid);
            }
        }
        // CREATE labels through its open fd: the label is on the file it created (now unlinked by
        // the rename, still reachable through the reply's node).
        FuseReply created = replies[1].Item2;
        Assert.Equal(Errno.OK, created.Errno);
        FuseReply got = f.Client.Getxattr(created.Read<FuseEntryOut>().NodeId, "security.label", 256);
        Assert.Equal(Errno.OK, got.Errno);
        Assert.Equal("system_u:object_r:test_t:s0", Encoding.UTF8.GetString(got.Payload));
    }
}
