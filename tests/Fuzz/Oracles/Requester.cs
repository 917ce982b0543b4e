using System.Buffers.Binary;

namespace Vhostfsd.Fuzz.Oracles;

/// <summary>Who a FUSE request speaks for and what it asked, as the oracles model it: the opcode, the
/// header's uid and gid, the groups of its CREATE_SUPP_GROUP extension and, for a SETATTR, which
/// attributes it set to what. Decoded here from the request's bytes, not by the daemon's parser, and
/// on the lenient side: every well-framed groups record counts, so a request the daemon refuses can
/// only make the requester look more entitled, never less.</summary>
public sealed class Requester
{
    // FUSE opcodes (Linux uapi fuse.h), written out so that the model does not lean on the daemon.
    public const uint Symlink = 6;
    public const uint Mknod = 8;
    public const uint Mkdir = 9;
    public const uint Rename = 12;
    public const uint Link = 13;
    public const uint Setattr = 4;
    public const uint Write = 16;
    public const uint Fallocate = 43;
    public const uint CopyFileRange = 47;
    public const uint Setxattr = 21;
    public const uint Create = 35;
    public const uint Rename2 = 45;
    public const uint Tmpfile = 51;

    // fuse_setattr_in.valid bits.
    public const uint AttrMode = 1;
    public const uint AttrUid = 2;
    public const uint AttrGid = 4;
    public const uint AttrSize = 8;
    public const uint AttrKillSuidgid = 1u << 11;

    /// <summary>fuse_write_in.write_flags FUSE_WRITE_KILL_SUIDGID.</summary>
    public const uint WriteKillSuidgid = 1u << 2;

    /// <summary>fuse_ext_type FUSE_EXT_GROUPS.</summary>
    private const uint ExtGroups = 32;

    private Requester(uint opcode, uint uid, uint gid, uint[] groups)
    {
        Opcode = opcode;
        Uid = uid;
        Gid = gid;
        Groups = groups;
    }

    public uint Opcode { get; }

    /// <summary>For a SETATTR: fuse_setattr_in's valid, mode, uid and gid (all 0 otherwise, or when too short).</summary>
    public uint SetValid { get; private init; }
    public uint SetMode { get; private init; }
    public uint SetUid { get; private init; }
    public uint SetGid { get; private init; }

    /// <summary>For a WRITE: fuse_write_in's write_flags (0 otherwise, or when too short).</summary>
    public uint WriteFlags { get; private init; }

    /// <summary>With HANDLE_KILLPRIV_V2, a data or size change this request makes must clear S_ISUID (and
    /// S_ISGID with S_IXGRP) when its requester is not root: a WRITE or a truncating SETATTR that carry
    /// KILL_SUIDGID (the guest kernel sets it for a caller without CAP_FSETID), and COPY_FILE_RANGE
    /// and FALLOCATE, which have no such flag (the guest kernel leaves the decision to the daemon).
    /// A SETATTR that also sets the mode is left out: the mode it asked for is the mode.</summary>
    public bool KillsSuidgidOnDataChange => !IsRoot && Opcode switch
    {
        Write => (WriteFlags & WriteKillSuidgid) != 0,
        Setattr => (SetValid & (AttrSize | AttrKillSuidgid)) == (AttrSize | AttrKillSuidgid) && (SetValid & AttrMode) == 0,
        Fallocate or CopyFileRange => true,
        _ => false,
    };

    /// <summary>True for a SETATTR that set <paramref name="bit"/> (AttrMode, AttrUid, AttrGid).</summary>
    public bool Sets(uint bit) => Opcode == Setattr && (SetValid & bit) != 0;
    public uint Uid { get; }
    public uint Gid { get; }

    /// <summary>The CREATE_SUPP_GROUP extension's groups (empty without one).</summary>
    public uint[] Groups { get; }

    /// <summary>uid 0 holds every capability on the host: it may set any mode bit, owner or attribute.</summary>
    public bool IsRoot => Uid == 0;

    /// <summary>The kernel's in_group_p for this requester: its gid or one of its extension's groups.</summary>
    public bool InGroup(uint gid) => gid == Gid || Array.IndexOf(Groups, gid) >= 0;

    /// <summary>A requester the share's own set-up acts as (root), for state the test itself makes.</summary>
    public static Requester Root { get; } = new(0, 0, 0, []);

    /// <summary>Decodes <paramref name="request"/>, whose first 40 bytes are the fuse_in_header the
    /// server acted on (a target that rewrites the header after the device copied it passes the copy).</summary>
    public static Requester From(ReadOnlySpan<byte> header, ReadOnlySpan<byte> request)
    {
        if (header.Length < 40)
        {
            return new Requester(0, uint.MaxValue, uint.MaxValue, []);
        }
        uint len = BinaryPrimitives.ReadUInt32LittleEndian(header);
        uint opcode = BinaryPrimitives.ReadUInt32LittleEndian(header[4..]);
        uint uid = BinaryPrimitives.ReadUInt32LittleEndian(header[24..]);
        uint gid = BinaryPrimitives.ReadUInt32LittleEndian(header[28..]);
        int extBytes = BinaryPrimitives.ReadUInt16LittleEndian(header[36..]) * 8;
        var groups = new List<uint>();
        // The extensions end the request: at the end of the bytes given, or of the length the header claims.
        foreach (int end in new[] { request.Length, (int)Math.Min(len, (uint)request.Length) })
        {
            if (extBytes > 0 && extBytes <= end - 40)
            {
                CollectGroups(request[(end - extBytes)..end], groups);
            }
        }
        var requester = new Requester(opcode, uid, gid, groups.Distinct().ToArray());
        // fuse_setattr_in: valid at 0, mode at 68, uid at 76, gid at 80 (88 bytes).
        if (opcode == Setattr && request.Length >= 40 + 88)
        {
            var a = request[40..];
            requester = new Requester(opcode, uid, gid, requester.Groups)
            {
                SetValid = BinaryPrimitives.ReadUInt32LittleEndian(a),
                SetMode = BinaryPrimitives.ReadUInt32LittleEndian(a[68..]),
                SetUid = BinaryPrimitives.ReadUInt32LittleEndian(a[76..]),
                SetGid = BinaryPrimitives.ReadUInt32LittleEndian(a[80..]),
            };
        }
        // fuse_write_in: write_flags at 20.
        if (opcode == Write && request.Length >= 40 + 24)
        {
            requester = new Requester(opcode, uid, gid, requester.Groups)
            {
                WriteFlags = BinaryPrimitives.ReadUInt32LittleEndian(request[(40 + 20)..]),
            };
        }
        return requester;
    }

    private static void CollectGroups(ReadOnlySpan<byte> area, List<uint> groups)
    {
        while (area.Length >= 8)
        {
            uint size = BinaryPrimitives.ReadUInt32LittleEndian(area);
            uint type = BinaryPrimitives.ReadUInt32LittleEndian(area[4..]);
            if (size < 8 || size > (uint)area.Length)
            {
                return;
            }
            var body = area[8..(int)size];
            if (type == ExtGroups && body.Length >= 4)
            {
                uint count = BinaryPrimitives.ReadUInt32LittleEndian(body);
                for (int i = 0; i < count && 4 + i * 4 + 4 <= body.Length; i++)
                {
                    groups.Add(BinaryPrimitives.ReadUInt32LittleEndian(body[(4 + i * 4)..]));
                }
            }
            area = area[(int)size..];
        }
    }

    public override string ToString() =>
        $"uid {Uid} gid {Gid}" + (Groups.Length > 0 ? $" groups [{string.Join(',', Groups)}]" : "");
}
