using System.Buffers.Binary;
using Vhostfsd.Fuzz.Engine;
using Vhostfsd.FuseProtocol;

namespace Vhostfsd.Fuzz.Targets;

/// <summary>What a fuzzing guest knows: node ids it was given (by type), open file and directory
/// handles, and names present in the share. Kept small; old entries fall off.</summary>
public sealed class FuseGuestState
{
    private const int Keep = 64;

    public List<ulong> Directories { get; } = [FuseConstants.RootId];

    /// <summary>The share's own directories, looked up before the first case (where privileges are at stake).</summary>
    public List<ulong> FixtureDirectories { get; } = new();
    public List<ulong> Files { get; } = new();
    public List<ulong> Others { get; } = new();
    public List<(ulong Node, ulong Fh)> FileHandles { get; } = new();
    public List<(ulong Node, ulong Fh)> DirHandles { get; } = new();
    public List<string> Names { get; } = new();
    public ulong NextUnique { get; set; } = 1000;

    /// <summary>The server granted SETXATTR_EXT (it does with --posix-acl): a SETXATTR then carries the
    /// 16-byte fuse_setxattr_in, with setxattr_flags, not the 8-byte form of older guests.</summary>
    public bool SetxattrExt { get; private set; }

    /// <summary>Takes what INIT granted from its reply (out header, then fuse_init_out).</summary>
    public void Granted(ReadOnlySpan<byte> initReply)
    {
        const uint setxattrExt = 1u << 29; // FUSE_SETXATTR_EXT, in the low word of the flags
        uint flags = initReply.Length >= FuseOutHeader.Size + 16 ? BinaryPrimitives.ReadUInt32LittleEndian(initReply[(FuseOutHeader.Size + 12)..]) : 0;
        SetxattrExt = (flags & setxattrExt) != 0;
    }

    public void Clear()
    {
        Directories.Clear();
        Directories.Add(FuseConstants.RootId);
        FixtureDirectories.Clear();
        Files.Clear();
        Others.Clear();
        FileHandles.Clear();
        DirHandles.Clear();
    }

    public void AddNode(ulong node, uint mode)
    {
        var list = (mode & 0xF000) switch { 0x4000 => Directories, 0x8000 => Files, _ => Others };
        if (!list.Contains(node))
        {
            Add(list, node);
        }
    }

    public static void Add<T>(List<T> list, T item)
    {
        list.Add(item);
        if (list.Count > Keep)
        {
            list.RemoveAt(list.Count > 1 && list[0] is ulong id && id == FuseConstants.RootId ? 1 : 0);
        }
    }

    public ulong AnyNode(FuzzRng rng)
    {
        int n = rng.Next(10);
        if (n < 4 || (Files.Count == 0 && Others.Count == 0)) return rng.Pick(Directories);
        if (n < 8 && Files.Count > 0) return rng.Pick(Files);
        return Others.Count > 0 ? rng.Pick(Others) : rng.Pick(Directories);
    }
}

/// <summary>Builds one well-formed request per FUSE opcode from the guest's state, with a field map
/// (the header's len, opcode, unique and node id; every argument word; every name) for the mutator.</summary>
public static class FuseSeeds
{
    public const int InitOpcode = (int)FuseOpcode.Init;

    /// <summary>Opcodes the generator picks among, weighted towards the ones with the most parsing.</summary>
    private static readonly FuseOpcode[] Opcodes =
    [
        FuseOpcode.Lookup, FuseOpcode.Lookup, FuseOpcode.Lookup, FuseOpcode.Forget, FuseOpcode.Getattr, FuseOpcode.Setattr,
        FuseOpcode.Readlink, FuseOpcode.Symlink, FuseOpcode.Mknod, FuseOpcode.Mkdir, FuseOpcode.Unlink, FuseOpcode.Rmdir,
        FuseOpcode.Rename, FuseOpcode.Rename2, FuseOpcode.Link, FuseOpcode.Open, FuseOpcode.Open, FuseOpcode.Read, FuseOpcode.Read,
        FuseOpcode.Write, FuseOpcode.Write, FuseOpcode.Statfs, FuseOpcode.Release, FuseOpcode.Fsync, FuseOpcode.Setxattr,
        FuseOpcode.Getxattr, FuseOpcode.Listxattr, FuseOpcode.Removexattr, FuseOpcode.Flush, FuseOpcode.Init, FuseOpcode.Opendir,
        FuseOpcode.Opendir, FuseOpcode.Readdir, FuseOpcode.Readdirplus, FuseOpcode.Releasedir, FuseOpcode.Fsyncdir, FuseOpcode.Getlk,
        FuseOpcode.Setlk, FuseOpcode.Setlkw, FuseOpcode.Access, FuseOpcode.Create, FuseOpcode.Create, FuseOpcode.Interrupt,
        FuseOpcode.Bmap, FuseOpcode.Ioctl, FuseOpcode.Poll, FuseOpcode.BatchForget, FuseOpcode.Fallocate, FuseOpcode.Lseek,
        FuseOpcode.CopyFileRange, FuseOpcode.Setupmapping, FuseOpcode.Removemapping, FuseOpcode.Syncfs, FuseOpcode.Tmpfile,
        FuseOpcode.Statx, FuseOpcode.NotifyReply, FuseOpcode.Destroy, (FuseOpcode)0, (FuseOpcode)53, (FuseOpcode)4096,
        // Once more each, the opcodes where the host decides an owner, a group or a set-id bit.
        FuseOpcode.Create, FuseOpcode.Create, FuseOpcode.Mknod, FuseOpcode.Mkdir, FuseOpcode.Setattr,
    ];

    /// <summary>A request seed; <paramref name="replyHint"/> is the reply size the request asks for.</summary>
    public static Seed Build(FuzzRng rng, FuseGuestState s, out FuseOpcode opcode, out int replyHint)
    {
        opcode = rng.Pick<FuseOpcode>(Opcodes);
        if (opcode == FuseOpcode.Destroy && !rng.OneIn(20))
        {
            opcode = FuseOpcode.Getattr;
        }
        replyHint = 4096;
        var b = new SeedBuilder();
        ulong node = s.AnyNode(rng);
        (ulong Node, ulong Fh) handle = s.FileHandles.Count > 0 ? rng.Pick(s.FileHandles) : (node, (ulong)rng.Next(1, 64));
        (ulong Node, ulong Fh) dirHandle = s.DirHandles.Count > 0 ? rng.Pick(s.DirHandles) : (FuseConstants.RootId, (ulong)rng.Next(1, 64));
        ulong dir = s.FixtureDirectories.Count > 0 && rng.Coin() ? rng.Pick(s.FixtureDirectories) : rng.Pick(s.Directories);
        string name = NewOrOldName(rng, s);
        ulong unique = s.NextUnique++;
        var (uid, gid) = Persona(rng);

        ulong headerNode = opcode switch
        {
            FuseOpcode.Lookup or FuseOpcode.Symlink or FuseOpcode.Mknod or FuseOpcode.Mkdir or FuseOpcode.Unlink or FuseOpcode.Rmdir
                or FuseOpcode.Rename or FuseOpcode.Rename2 or FuseOpcode.Link or FuseOpcode.Create or FuseOpcode.Tmpfile => dir,
            FuseOpcode.Read or FuseOpcode.Write or FuseOpcode.Release or FuseOpcode.Fsync or FuseOpcode.Flush or FuseOpcode.Getlk
                or FuseOpcode.Setlk or FuseOpcode.Setlkw or FuseOpcode.Fallocate or FuseOpcode.Lseek or FuseOpcode.CopyFileRange => handle.Node,
            FuseOpcode.Readdir or FuseOpcode.Readdirplus or FuseOpcode.Releasedir or FuseOpcode.Fsyncdir => dirHandle.Node,
            FuseOpcode.Opendir => dir,
            FuseOpcode.Init or FuseOpcode.BatchForget or FuseOpcode.Interrupt => 0,
            _ => node,
        };
        b.U32("len", 0, FieldKind.Length).U32("opcode", (uint)opcode, FieldKind.Opcode).U64("unique", unique, FieldKind.Integer)
            .U64("nodeid", headerNode, FieldKind.NodeId).U32("uid", uid).U32("gid", gid).U32("pid", (uint)rng.Next(1, 5000))
            .U16("total_extlen", 0, FieldKind.Length).U16("padding", 0);

        switch (opcode)
        {
            case FuseOpcode.Lookup:
            case FuseOpcode.Unlink:
            case FuseOpcode.Rmdir:
                b.Name("name", rng.OneIn(3) ? OldName(rng, s) : name);
                break;
            case FuseOpcode.Forget:
                b.U64("nlookup", (ulong)rng.Next(0, 3), FieldKind.Count);
                break;
            case FuseOpcode.Getattr:
                b.U32("getattr_flags", rng.OneIn(3) ? 1u : 0u, FieldKind.Flags).U32("dummy", 0).U64("fh", handle.Fh, FieldKind.Handle);
                break;
            case FuseOpcode.Setattr:
            {
                // A truncation by a user other than root carries FATTR_KILL_SUIDGID, as the guest kernel's would with HANDLE_KILLPRIV_V2.
                uint valid = rng.Coin() ? rng.Pick<uint>([1, 2, 4, 6, 7, 1 | 8]) : (uint)rng.Next(0, 0x1000);
                valid |= uid != 0 && (valid & 8) != 0 ? 1u << 11 : 0;
                b.U32("valid", valid, FieldKind.Flags).U32("padding", 0).U64("fh", handle.Fh, FieldKind.Handle)
                    .U64("size", (ulong)rng.Next(0, 100_000), FieldKind.Offset).U64("lock_owner", 0, FieldKind.Handle)
                    .U64("atime", 1_700_000_000, FieldKind.Offset).U64("mtime", 1_700_000_000, FieldKind.Offset).U64("ctime", 0, FieldKind.Offset)
                    .U32("atimensec", 0).U32("mtimensec", 0).U32("ctimensec", 0).U32("mode", rng.Coin() ? rng.Pick(SetidModes) : (uint)rng.Next(0, 0x1000), FieldKind.Flags)
                    .U32("unused4", 0).U32("uid", rng.Coin() ? rng.Pick(Ids) : (uint)rng.Next(0, 2000)).U32("gid", rng.Coin() ? rng.Pick(Ids) : (uint)rng.Next(0, 2000)).U32("unused5", 0);
                break;
            }
            case FuseOpcode.Symlink:
                b.Name("name", name).Name("target", rng.Pick<string>(["a.txt", "../outside/secret", "/etc/passwd", "d/f", "..", new string('t', 4000)]));
                AddExtensions(rng, b);
                break;
            case FuseOpcode.Mknod:
                b.U32("mode", rng.Pick<uint>([0x8000 | 0x1A4, 0x1000 | 0x1A4, 0xC000 | 0x1A4, 0x2000 | 0x1A4, 0x6000 | 0x1A4, 0x1A4, 0xA000 | 0x1FF,
                        0x8000 | 0x5ED, 0x8000 | 0x9ED, 0x8000 | 0xDED]), FieldKind.Flags)
                    .U32("rdev", rng.Pick<uint>([0, 0x103, 0x105, 0xFD00]), FieldKind.Integer).U32("umask", 0x12, FieldKind.Flags).U32("padding", 0);
                b.Name("name", name);
                AddExtensions(rng, b);
                break;
            case FuseOpcode.Mkdir:
                b.U32("mode", rng.Pick<uint>([0x1ED, 0x5ED, 0x9ED, 0x3FF]), FieldKind.Flags).U32("umask", 0x12, FieldKind.Flags).Name("name", name);
                AddExtensions(rng, b);
                break;
            case FuseOpcode.Rename:
                b.U64("newdir", rng.Pick(s.Directories), FieldKind.NodeId).Name("old", OldName(rng, s)).Name("new", name);
                break;
            case FuseOpcode.Rename2:
                b.U64("newdir", rng.Pick(s.Directories), FieldKind.NodeId).U32("flags", rng.Pick<uint>([0, 1, 2, 4, 7]), FieldKind.Flags).U32("padding", 0)
                    .Name("old", OldName(rng, s)).Name("new", rng.OneIn(3) ? OldName(rng, s) : name);
                break;
            case FuseOpcode.Link:
                b.U64("oldnodeid", s.AnyNode(rng), FieldKind.NodeId).Name("name", name);
                break;
            case FuseOpcode.Open:
            case FuseOpcode.Opendir:
                b.U32("flags", rng.Pick<uint>([0, 1, 2, 0x200 | 2, 0x400 | 1, 0x4000, 0x20000, 0x40000, 0x101000]), FieldKind.Flags)
                    .U32("open_flags", (uint)rng.Next(0, 4), FieldKind.Flags);
                break;
            case FuseOpcode.Read:
            case FuseOpcode.Readdir:
            case FuseOpcode.Readdirplus:
            {
                var h = opcode == FuseOpcode.Read ? handle : dirHandle;
                uint size = rng.Pick<uint>([0, 1, 100, 4096, 65536, 1 << 20, (1 << 20) + 1]);
                replyHint = (int)Math.Min(size + 16u, (1u << 20) + 4096);
                b.U64("fh", h.Fh, FieldKind.Handle).U64("offset", opcode == FuseOpcode.Read ? (ulong)rng.Next(0, 10_000) : (ulong)rng.Next(0, 20), FieldKind.Offset)
                    .U32("size", size, FieldKind.Length).U32("read_flags", 0, FieldKind.Flags).U64("lock_owner", 0, FieldKind.Handle)
                    .U32("flags", 2, FieldKind.Flags).U32("padding", 0);
                break;
            }
            case FuseOpcode.Write:
            {
                // A user other than root writes with FUSE_WRITE_KILL_SUIDGID, as under HANDLE_KILLPRIV_V2.
                int size = rng.Next(10) switch { 0 => 0, 1 => 65536, 2 => rng.OneIn(4) ? 1 << 20 : 8192, _ => rng.Next(1, 600) };
                var data = new byte[size];
                rng.Fill(data);
                b.U64("fh", handle.Fh, FieldKind.Handle).U64("offset", rng.OneIn(8) ? (ulong)long.MaxValue - 10 : (ulong)rng.Next(0, 100_000), FieldKind.Offset)
                    .U32("size", (uint)size, FieldKind.Length).U32("write_flags", uid != 0 ? 4u : 0u, FieldKind.Flags).U64("lock_owner", 0, FieldKind.Handle)
                    .U32("flags", 2, FieldKind.Flags).U32("padding", 0).Bytes(data);
                break;
            }
            case FuseOpcode.Release:
            case FuseOpcode.Releasedir:
            {
                var h = opcode == FuseOpcode.Release ? handle : dirHandle;
                b.U64("fh", h.Fh, FieldKind.Handle).U32("flags", 2, FieldKind.Flags).U32("release_flags", rng.Pick<uint>([0, 1, 2]), FieldKind.Flags)
                    .U64("lock_owner", (ulong)rng.Next(0, 4), FieldKind.Handle);
                break;
            }
            case FuseOpcode.Fsync:
            case FuseOpcode.Fsyncdir:
            {
                var h = opcode == FuseOpcode.Fsync ? handle : dirHandle;
                b.U64("fh", h.Fh, FieldKind.Handle).U32("fsync_flags", (uint)rng.Next(0, 2), FieldKind.Flags).U32("padding", 0);
                break;
            }
            case FuseOpcode.Setxattr:
            {
                var value = new byte[rng.Pick<int>([0, 1, 16, 255, 4096])];
                rng.Fill(value);
                string xattrName = XattrName(rng);
                if (!rng.OneIn(4) && WellFormedValue(rng, xattrName) is { } wellFormed)
                {
                    value = wellFormed;
                }
                b.U32("size", (uint)value.Length, FieldKind.Length).U32("flags", (uint)rng.Next(0, 4), FieldKind.Flags);
                if (s.SetxattrExt)
                {
                    // FUSE_SETXATTR_ACL_KILL_SGID now and then: an ACL set by a non-member drops S_ISGID.
                    b.U32("setxattr_flags", rng.OneIn(4) ? 1u : 0u, FieldKind.Flags).U32("padding", 0);
                }
                b.Name("name", xattrName).Bytes(value);
                break;
            }
            case FuseOpcode.Getxattr:
                b.U32("size", rng.Pick<uint>([0, 1, 4096, 65536, 65537]), FieldKind.Length).U32("padding", 0).Name("name", XattrName(rng));
                break;
            case FuseOpcode.Listxattr:
                b.U32("size", rng.Pick<uint>([0, 1, 4096, 65536, 65537]), FieldKind.Length).U32("padding", 0);
                break;
            case FuseOpcode.Removexattr:
                b.Name("name", XattrName(rng));
                break;
            case FuseOpcode.Flush:
                b.U64("fh", handle.Fh, FieldKind.Handle).U32("unused", 0).U32("padding", 0).U64("lock_owner", (ulong)rng.Next(0, 4), FieldKind.Handle);
                break;
            case FuseOpcode.Init:
                b.U32("major", 7).U32("minor", rng.Pick<uint>([31, 36, 38, 40, 41, 99]), FieldKind.Integer).U32("max_readahead", 131072)
                    .U32("flags", 0xFFFF_FFFF & ~0u, FieldKind.Flags).U32("flags2", (uint)rng.NextU32(), FieldKind.Flags).Zeros(44);
                break;
            case FuseOpcode.Getlk:
            case FuseOpcode.Setlk:
            case FuseOpcode.Setlkw:
                b.U64("fh", handle.Fh, FieldKind.Handle).U64("owner", (ulong)rng.Next(1, 4), FieldKind.Handle)
                    .U64("lk.start", (ulong)rng.Next(0, 100), FieldKind.Offset).U64("lk.end", rng.Coin() ? long.MaxValue : (ulong)rng.Next(100, 200), FieldKind.Offset)
                    .U32("lk.type", (uint)rng.Next(0, 3), FieldKind.Integer).U32("lk.pid", 1).U32("lk_flags", rng.OneIn(3) ? 1u : 0u, FieldKind.Flags).U32("padding", 0);
                break;
            case FuseOpcode.Access:
                b.U32("mask", (uint)rng.Next(0, 8), FieldKind.Flags).U32("padding", 0);
                break;
            case FuseOpcode.Create:
            case FuseOpcode.Tmpfile:
                b.U32("flags", rng.Pick<uint>([0x42, 0xC2, 0x241, 0x80042, 0x4042]), FieldKind.Flags)
                    .U32("mode", rng.Pick<uint>([0x8000 | 0x1A4, 0x8000 | 0x1A4, 0x8000 | 0x5ED, 0x8000 | 0x9ED, 0x8000 | 0xDED, 0x8000 | 0x7FF]), FieldKind.Flags)
                    .U32("umask", 0x12, FieldKind.Flags).U32("open_flags", 0, FieldKind.Flags).Name("name", name);
                AddExtensions(rng, b);
                break;
            case FuseOpcode.Interrupt:
                b.U64("unique", s.NextUnique - (ulong)rng.Next(1, 5), FieldKind.Integer);
                break;
            case FuseOpcode.Bmap:
                b.U64("block", 0, FieldKind.Offset).U32("blocksize", 4096).U32("padding", 0);
                break;
            case FuseOpcode.Ioctl:
                b.U64("fh", handle.Fh, FieldKind.Handle).U32("flags", 0, FieldKind.Flags).U32("cmd", 0x5401).U64("arg", 0, FieldKind.Address)
                    .U32("in_size", 0, FieldKind.Length).U32("out_size", 64, FieldKind.Length);
                break;
            case FuseOpcode.Poll:
                b.U64("fh", handle.Fh, FieldKind.Handle).U64("kh", 0).U32("flags", 0, FieldKind.Flags).U32("events", 1, FieldKind.Flags);
                break;
            case FuseOpcode.BatchForget:
            {
                int n = rng.Next(0, 5);
                b.U32("count", (uint)n, FieldKind.Count).U32("dummy", 0);
                for (int i = 0; i < n; i++)
                {
                    b.U64($"forget{i}.nodeid", s.AnyNode(rng), FieldKind.NodeId).U64($"forget{i}.nlookup", (ulong)rng.Next(0, 3), FieldKind.Count);
                }
                break;
            }
            case FuseOpcode.Fallocate:
                b.U64("fh", handle.Fh, FieldKind.Handle).U64("offset", (ulong)rng.Next(0, 100_000), FieldKind.Offset)
                    .U64("length", (ulong)rng.Next(1, 100_000), FieldKind.Offset).U32("mode", rng.Pick<uint>([0, 1, 2, 3, 0x10, 0x20]), FieldKind.Flags).U32("padding", 0);
                break;
            case FuseOpcode.Lseek:
                b.U64("fh", handle.Fh, FieldKind.Handle).U64("offset", (ulong)rng.Next(0, 100_000), FieldKind.Offset).U32("whence", (uint)rng.Next(0, 5)).U32("padding", 0);
                break;
            case FuseOpcode.CopyFileRange:
            {
                var other = s.FileHandles.Count > 0 ? rng.Pick(s.FileHandles) : handle;
                b.U64("fh_in", handle.Fh, FieldKind.Handle).U64("off_in", (ulong)rng.Next(0, 10_000), FieldKind.Offset)
                    .U64("nodeid_out", other.Node, FieldKind.NodeId).U64("fh_out", other.Fh, FieldKind.Handle)
                    .U64("off_out", (ulong)rng.Next(0, 10_000), FieldKind.Offset).U64("len", (ulong)rng.Next(0, 200_000), FieldKind.Offset).U64("flags", 0, FieldKind.Flags);
                break;
            }
            case FuseOpcode.Setupmapping:
                b.U64("fh", handle.Fh, FieldKind.Handle).U64("foffset", 0, FieldKind.Offset).U64("len", 4096, FieldKind.Length)
                    .U64("flags", 1, FieldKind.Flags).U64("moffset", 0, FieldKind.Offset);
                break;
            case FuseOpcode.Removemapping:
                b.U32("count", 1, FieldKind.Count).U64("moffset", 0, FieldKind.Offset).U64("len", 4096, FieldKind.Length);
                break;
            case FuseOpcode.Syncfs:
                b.U64("padding", 0);
                break;
            case FuseOpcode.Statx:
                b.U32("getattr_flags", rng.OneIn(3) ? 1u : 0u, FieldKind.Flags).U32("reserved", 0).U64("fh", handle.Fh, FieldKind.Handle)
                    .U32("sx_flags", 0, FieldKind.Flags).U32("sx_mask", 0xFFF, FieldKind.Flags);
                replyHint = 4096;
                break;
            case FuseOpcode.Statfs:
            case FuseOpcode.Readlink:
            case FuseOpcode.Destroy:
                break;
            default:
            {
                var junk = new byte[rng.Next(0, 64)];
                rng.Fill(junk);
                b.Bytes(junk);
                break;
            }
        }
        var seed = b.Build(opcode.ToString());
        Mutator.PatchU32(seed.Bytes, 0, (uint)seed.Bytes.Length);
        return seed;
    }

    /// <summary>Who a request speaks for: root most often, then a user with a group of its own, one whose
    /// gid is 0, nobody, and now and then an id the daemon must refuse.</summary>
    private static (uint Uid, uint Gid) Persona(FuzzRng rng) => rng.Next(20) switch
    {
        < 9 => (0, 0),
        < 15 => (1000, 1000),
        15 => (1000, 0),
        16 => (0, 1000),
        17 => (65534, 65534),
        18 => (4242, 4242),
        _ => (rng.Pick<uint>([1000, 0xFFFF_FFFF]), 0xFFFF_FFFF),
    };

    private static readonly uint[] Ids = [0, 1000, 4242, 65534];

    /// <summary>Modes with the set-id bits (04755, 02755, 06755, 02644) and plain ones.</summary>
    private static readonly uint[] SetidModes = [0x9ED, 0x5ED, 0xDED, 0x5A4, 0x1ED, 0x1A4];

    /// <summary>Groups a CREATE_SUPP_GROUP extension may carry: root's, the user's own, the team's, another.</summary>
    private static readonly uint[] ExtensionGroups = [0, 1000, 4242, 100];

    /// <summary>Names a security context may carry: labels, and the names a hostile guest would try.</summary>
    private static readonly string[] ContextNames =
    [
        "security.selinux", "security.x", "security.capability", "user.hostile", "trusted.overlay.opaque",
        "system.posix_acl_access", "user.virtiofs.x", "security.",
    ];

    /// <summary>struct vfs_cap_data, revision 2, effective: CAP_SYS_ADMIN permitted.</summary>
    public static readonly byte[] FileCapability =
    [
        0x01, 0x00, 0x00, 0x02, // magic_etc = VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE
        0x00, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, // data[0]: permitted bit 21, inheritable 0
        0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, // data[1]
    ];

    /// <summary>A POSIX ACL xattr value (version 2): user::rwx, user 1000 rwx, group::r-x, mask::rwx, other::r-x.</summary>
    public static readonly byte[] PosixAcl =
    [
        0x02, 0x00, 0x00, 0x00,
        0x01, 0x00, 0x07, 0x00, 0xFF, 0xFF, 0xFF, 0xFF,
        0x02, 0x00, 0x07, 0x00, 0xE8, 0x03, 0x00, 0x00,
        0x04, 0x00, 0x05, 0x00, 0xFF, 0xFF, 0xFF, 0xFF,
        0x10, 0x00, 0x07, 0x00, 0xFF, 0xFF, 0xFF, 0xFF,
        0x20, 0x00, 0x05, 0x00, 0xFF, 0xFF, 0xFF, 0xFF,
    ];

    /// <summary>A value the kernel accepts for <paramref name="name"/> where it checks the format.</summary>
    private static byte[]? WellFormedValue(FuzzRng rng, string name) => name switch
    {
        "security.capability" => FileCapability,
        "system.posix_acl_access" or "system.posix_acl_default" => PosixAcl,
        _ => rng.Coin() ? "system_u:object_r:fuzz_t:s0\0"u8.ToArray() : null,
    };

    /// <summary>Often, the extensions a creating request carries (fuse_ext_header records after the names,
    /// counted by total_extlen): supplementary groups, a security context, or both, in the order the
    /// kernel writes them; sometimes the 7.36 form, a security context after the names with no
    /// total_extlen.</summary>
    private static void AddExtensions(FuzzRng rng, SeedBuilder b)
    {
        if (rng.OneIn(3))
        {
            return;
        }
        int which = rng.Next(3); // 0 groups, 1 context, 2 both
        int start = b.Length;
        if (which >= 1)
        {
            // fuse_secctx_header { size, nr } + fuse_secctx { size, padding } + name + NUL + value, padded to 8.
            string contextName = rng.Pick(ContextNames);
            byte[] value = WellFormedValue(rng, contextName) ?? "system_u:object_r:fuzz_t:s0\0"u8.ToArray();
            int nameBytes = System.Text.Encoding.UTF8.GetByteCount(contextName) + 1;
            int size = 16 + nameBytes + value.Length;
            int padded = (size + 7) & ~7;
            b.U32("secctx.size", (uint)padded, FieldKind.Length).U32("secctx.nr", 1, FieldKind.Count)
                .U32("ctx.size", (uint)value.Length, FieldKind.Length).U32("ctx.padding", 0)
                .Name("ctx.name", contextName).Bytes(value).Zeros(padded - size);
        }
        if (which != 1)
        {
            // fuse_ext_header { size, type = FUSE_EXT_GROUPS } + fuse_supp_groups { nr_groups } + groups, padded to 8.
            int count = rng.OneIn(4) ? 2 : 1;
            int size = 12 + 4 * count;
            int padded = (size + 7) & ~7;
            b.U32("ext.size", (uint)padded, FieldKind.Length).U32("ext.type", 32, FieldKind.Integer).U32("groups.nr", (uint)count, FieldKind.Count);
            for (int i = 0; i < count; i++)
            {
                b.U32($"groups[{i}]", rng.Pick(ExtensionGroups));
            }
            b.Zeros(padded - size);
        }
        int extBytes = b.Length - start;
        // total_extlen counts 8-byte units (the header field at offset 36); a lone context is sometimes
        // sent the 7.36 way, with none.
        if (which == 1 && rng.OneIn(4))
        {
            return;
        }
        b.PatchU32(36, (uint)(extBytes / 8) & 0xFFFF);
    }

    private static string XattrName(FuzzRng rng) => rng.Pick<string>(
        ["user.fuzz", "user.a", "trusted.x", "security.capability", "system.posix_acl_access", "system.posix_acl_default", "user." + new string('n', 250),
            "nope", "user.", "security.selinux", "user.virtiofs.x", "trusted.overlay.opaque"]);

    private static string OldName(FuzzRng rng, FuseGuestState s) => s.Names.Count > 0 ? rng.Pick(s.Names) : "a.txt";

    private static string NewOrOldName(FuzzRng rng, FuseGuestState s) => rng.OneIn(3) ? OldName(rng, s) : "n" + rng.Next(0, 200);
}
