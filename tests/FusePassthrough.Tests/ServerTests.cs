using System.Runtime.InteropServices;
using System.Text;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Xunit;

namespace Vhostfsd.FusePassthrough.Tests;

/// <summary>The FUSE server on its own, over the in-memory file system of tests/Testing: decoding,
/// the checks it makes before a file system ever runs, INIT, and the encoding of replies. No host
/// directory is involved.</summary>
public class ServerTests
{
    private const ulong Root = FuseConstants.RootId;

    private static (FuseServer<MemoryFs> Server, MemoryTree Tree, FuseTestClient Client) Start(bool init = true, Action<MemoryTree>? configure = null)
    {
        var tree = new MemoryTree();
        configure?.Invoke(tree);
        var server = new FuseServer<MemoryFs>(new MemoryFs(tree));
        var client = new FuseTestClient((readable, writable) =>
        {
            var header = FuseRequestHeader.Read(readable);
            return server.HandleRequest(in header, readable, writable);
        });
        if (init)
        {
            client.Init();
        }
        return (server, tree, client);
    }

    [Fact]
    public void InitGrantsWhatTheGuestOffersOfTheServersAndTheFileSystemsFlags()
    {
        var (server, tree, client) = Start(init: false, configure: t => t.Wanted = FuseInitFlags.DoReaddirplus | FuseInitFlags.PosixLocks);
        FuseInitOut reply = client.Init(FuseInitFlags.AsyncRead | FuseInitFlags.PosixLocks | FuseInitFlags.WritebackCache | FuseInitFlags.InitExt);
        FuseInitFlags granted = FuseConstants.JoinInitFlags(reply.Flags, reply.Flags2);
        // Offered and wanted by the server (ASYNC_READ, INIT_EXT) or the file system (POSIX_LOCKS);
        // WRITEBACK_CACHE was offered but nobody asked; DO_READDIRPLUS was asked but not offered.
        Assert.Equal(FuseInitFlags.AsyncRead | FuseInitFlags.PosixLocks | FuseInitFlags.InitExt, granted);
        Assert.Equal(granted, tree.Granted);
        Assert.Equal(granted, server.NegotiatedFlags);
        Assert.Equal((uint)FuseServer<MemoryFs>.MaxWrite, reply.MaxWrite);
    }

    [Fact]
    public void AFileSystemThatCannotServeTheGuestRefusesInit()
    {
        var (_, tree, client) = Start(init: false, configure: t => t.InitError = -(int)Errno.EPROTO);
        var args = new FuseArgs().Add(FuseConstants.KernelVersion).Add(FuseConstants.KernelMinorVersion).Add(0u).Add(0u);
        Assert.Equal(Errno.EPROTO, client.Send(FuseOpcode.Init, 0, args).Errno);
        // Still not initialised: everything else is EIO, and the file system never saw it.
        Assert.Equal(Errno.EIO, client.Getattr(Root).Errno);
        Assert.False(tree.Calls.ContainsKey("Getattr"));
    }

    [Fact]
    public void GuestsTooOldAreRefusedAndTooNewAreToldToRetry()
    {
        var (_, _, client) = Start(init: false);
        var old = new FuseArgs().Add(7u).Add(FuseConstants.MinSupportedMinor - 1).Add(0u).Add(0u);
        Assert.Equal(Errno.EPROTO, client.Send(FuseOpcode.Init, 0, old).Errno);
        var newer = new FuseArgs().Add(8u).Add(0u).Add(0u).Add(0u);
        FuseInitOut retry = client.Send(FuseOpcode.Init, 0, newer).Ok().Read<FuseInitOut>();
        Assert.Equal((FuseConstants.KernelVersion, FuseConstants.KernelMinorVersion), (retry.Major, retry.Minor));
    }

    [Fact]
    public void DestroyDropsTheSessionUntilTheNextInit()
    {
        var (_, tree, client) = Start();
        client.Send(FuseOpcode.Destroy, 0).Ok();
        Assert.Equal(1, tree.DestroyCount);
        Assert.Equal(Errno.EIO, client.Getattr(Root).Errno);
        client.Init();
        client.Getattr(Root).Ok();
    }

    /// <summary>What the server refuses by itself: a header whose len is not the request's, arguments
    /// cut short, names without NUL, with '/', "." or ".." for a new entry, longer than NAME_MAX, a WRITE
    /// whose size is not what follows. None of them reaches the file system.</summary>
    [Fact]
    public void MalformedRequestsNeverReachTheFileSystem()
    {
        var (server, tree, client) = Start();
        long malformed = server.Stats.Malformed;
        byte[] request = new byte[FuseInHeader.Size + 4];
        var header = new FuseInHeader { Len = (uint)request.Length + 1, Opcode = (uint)FuseOpcode.Getattr, Unique = 77, NodeId = Root };
        MemoryMarshal.Write(request, in header);
        FuseReply reply = client.SendRaw(request);
        Assert.Equal(Errno.EINVAL, reply.Errno);
        Assert.Equal(77UL, reply.Header.Unique);

        Assert.Equal(Errno.EINVAL, client.Send(FuseOpcode.Getattr, Root, new FuseArgs().Add(1u)).Errno);
        Assert.Equal(Errno.EINVAL, client.Send(FuseOpcode.Mkdir, Root, new FuseArgs().Add(new FuseMkdirIn { Mode = 0x1ED }).Bytes("nonul"u8.ToArray())).Errno);
        Assert.Equal(Errno.EINVAL, client.Mkdir(Root, "a/b").Errno);
        Assert.Equal(Errno.EINVAL, client.Mkdir(Root, "..").Errno);
        Assert.Equal(Errno.EINVAL, client.Mkdir(Root, ".").Errno);
        Assert.Equal(Errno.ENOENT, client.Mkdir(Root, "").Errno);
        Assert.Equal(Errno.ENAMETOOLONG, client.Mkdir(Root, new string('n', 256)).Errno);
        var write = new FuseArgs().Add(new FuseWriteIn { Fh = 1, Length = 10 }).Bytes(new byte[4]);
        Assert.Equal(Errno.EINVAL, client.Send(FuseOpcode.Write, Root, write).Errno);
        Assert.Equal(malformed + 4, server.Stats.Malformed); // the framing faults; a bad name is an ordinary refusal
        Assert.False(tree.Calls.ContainsKey("Mkdir"));
        Assert.False(tree.Calls.ContainsKey("Write"));
        Assert.False(tree.Calls.ContainsKey("Getattr"));
    }

    [Fact]
    public void AReplyThatCannotFitIsRefusedBeforeTheFileSystemRuns()
    {
        var (server, tree, client) = Start();
        // Not even room for fuse_out_header: no reply at all.
        long tooSmall = server.Stats.ReplyTooSmall;
        Assert.Equal(0, client.Send(FuseOpcode.Getattr, Root, new FuseArgs().Add(new FuseGetattrIn()), replyCapacity: FuseOutHeader.Size - 1).Returned);
        Assert.Equal(tooSmall + 1, server.Stats.ReplyTooSmall);
        // Room for the header but not for fuse_attr_out: EIO, the file system not asked.
        Assert.Equal(Errno.EIO, client.Send(FuseOpcode.Getattr, Root, new FuseArgs().Add(new FuseGetattrIn()), replyCapacity: FuseOutHeader.Size + 8).Errno);
        Assert.False(tree.Calls.ContainsKey("Getattr"));
    }

    [Fact]
    public void AReadOnlyFileSystemGetsNoModifyingRequest()
    {
        var (_, tree, client) = Start(configure: t => t.ReadOnly = true);
        Assert.Equal(Errno.EROFS, client.Mkdir(Root, "d").Errno);
        Assert.Equal(Errno.EROFS, client.Create(Root, "f", Libc.O_RDWR | Libc.O_CREAT).Errno);
        Assert.Equal(Errno.EROFS, client.Setxattr(Root, "user.a", "1"u8).Errno);
        Assert.DoesNotContain(tree.Calls.Keys, k => k is "Mkdir" or "Create" or "Setxattr");
        client.Getattr(Root).Ok();
    }

    [Fact]
    public void UnknownOpcodesAreEnosysAndLocksWithoutNegotiationToo()
    {
        var (server, _, client) = Start();
        Assert.Equal(Errno.ENOSYS, client.Send((FuseOpcode)9999, Root).Errno);
        Assert.Equal(1, server.Stats.UnknownOpcodes);
        Assert.Equal(Errno.ENOSYS, client.Lock(FuseOpcode.Setlk, Root, 1, owner: 1, Libc.F_WRLCK).Errno);
    }

    [Fact]
    public void AFileSystemThatThrowsGetsEioAndTheServerCarriesOn()
    {
        var (server, tree, client) = Start();
        tree.ThrowNext = new InvalidOperationException("bug in the file system");
        Assert.Equal(Errno.EIO, client.Getattr(Root).Errno);
        Assert.Equal(1, server.Stats.Exceptions);
        client.Getattr(Root).Ok();
    }

    [Fact]
    public void ForgetAndInterruptReachTheFileSystemWithoutAReply()
    {
        var (_, tree, client) = Start();
        FuseEntryOut dir = client.Mkdir(Root, "d").Ok().Read<FuseEntryOut>();
        int before = tree.NodeCount;
        client.Rmdir(Root, "d").Ok();
        Assert.Equal(0, client.Send(FuseOpcode.Forget, dir.NodeId, new FuseArgs().Add(new FuseForgetIn { Nlookup = 1 })).Returned);
        Assert.Equal(before - 1, tree.NodeCount);
        Assert.Equal(0, client.Send(FuseOpcode.Interrupt, 0, new FuseArgs().Add(new FuseInterruptIn { Unique = 42 })).Returned);
        Assert.Equal([42UL], tree.Interrupted);
    }

    /// <summary>A whole session through the server: create, write, read, list (both ways), rename,
    /// xattrs with the size query and ERANGE, unlink.</summary>
    [Fact]
    public void ASessionOfEveryKindOfReplyEncodesCorrectly()
    {
        var (_, _, client) = Start();
        FuseEntryOut dir = client.Mkdir(Root, "dir").Ok().Read<FuseEntryOut>();
        FuseReply created = client.Create(dir.NodeId, "file", Libc.O_RDWR | Libc.O_CREAT);
        FuseEntryOut file = created.Ok().Read<FuseEntryOut>();
        ulong fh = MemoryMarshal.Read<FuseOpenOut>(created.Payload.AsSpan(FuseEntryOut.Size)).Fh;
        Assert.Equal(5u, client.Write(file.NodeId, fh, 0, "hello"u8).Ok().Read<FuseWriteOut>().Length);
        Assert.Equal("ell", Encoding.ASCII.GetString(client.Read(file.NodeId, fh, 1, 3).Ok().Payload));
        client.Release(file.NodeId, fh).Ok();

        client.Symlink(dir.NodeId, "link", "file").Ok();
        Assert.Equal("file", Encoding.ASCII.GetString(client.Readlink(client.LookupOk(dir.NodeId, "link").NodeId).Ok().Payload));

        ulong dh = client.Opendir(dir.NodeId).Ok().Read<FuseOpenOut>().Fh;
        var names = FuseTestClient.ParseDirents(client.Readdir(dir.NodeId, dh, 0, 4096, plus: false).Ok(), plus: false).Select(e => e.Name).ToList();
        Assert.Equal(["file", "link"], names);
        var plus = FuseTestClient.ParseDirents(client.Readdir(dir.NodeId, dh, 0, 4096, plus: true).Ok(), plus: true);
        Assert.Equal(file.NodeId, plus.Single(e => e.Name == "file").Entry.NodeId);
        // A budget for one entry only: the second is left for the next call, which resumes after it.
        var first = FuseTestClient.ParseDirents(client.Readdir(dir.NodeId, dh, 0, (uint)FuseConstants.DirentSize(4), plus: false).Ok(), plus: false);
        Assert.Equal(["file"], first.Select(e => e.Name));
        var rest = FuseTestClient.ParseDirents(client.Readdir(dir.NodeId, dh, first[0].Offset, 4096, plus: false).Ok(), plus: false);
        Assert.Equal(["link"], rest.Select(e => e.Name));
        client.Release(dir.NodeId, dh, directory: true).Ok();

        client.Setxattr(file.NodeId, "user.colour", "blue"u8).Ok();
        Assert.Equal(4u, client.Getxattr(file.NodeId, "user.colour", 0).Ok().Read<FuseGetxattrOut>().Length);
        Assert.Equal(Errno.ERANGE, client.Getxattr(file.NodeId, "user.colour", 2).Errno);
        Assert.Equal("blue", Encoding.ASCII.GetString(client.Getxattr(file.NodeId, "user.colour", 100).Ok().Payload));
        Assert.Equal("user.colour\0", Encoding.ASCII.GetString(client.Listxattr(file.NodeId, 100).Ok().Payload));

        client.Rename(dir.NodeId, "file", Root, "moved").Ok();
        Assert.Equal(file.NodeId, client.LookupOk(Root, "moved").NodeId);
        client.Unlink(Root, "moved").Ok();
        Assert.Equal(Errno.ENOENT, client.Lookup(Root, "moved").Errno);
    }
}
