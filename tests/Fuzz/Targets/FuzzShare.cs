using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using Vhostfsd.Fuzz.Oracles;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.Fuzz.Targets;

/// <summary>What a FUSE target's share holds before the guest starts: files, a directory tree and
/// links that lead out of the share, plus the entries where a privilege is at stake — a setgid
/// root:root 2777 directory (a file a user makes there takes group 0), a setgid directory of group
/// 4242 that only its members may write, a world-writable directory, a root-owned executable, a
/// file and directory of uid 1000, and a setuid and setgid 06775 program of 1000:4242 its group may
/// write (where --killpriv-v2 must clear the bits on a change by anyone but root).</summary>
public static unsafe class FuzzShare
{
    /// <summary>The names the guest is told of at the start (and looks up before the first case).</summary>
    public static readonly string[] Names = ["a.txt", "d", "up", "abs", "p", "sgid", "team", "pub", "bin", "mine", "home", "suid"];

    /// <summary>Directories looked up before the first case, so that every case can reach them.</summary>
    public static readonly string[] Directories = ["d", "sgid", "team", "pub", "home"];

    /// <summary>Files looked up before the first case.</summary>
    public static readonly string[] Files = ["a.txt", "bin", "mine", "suid"];

    /// <summary>Looks up every directory and file named above, so that any case can reach them, and
    /// records each entry in the guest's state and the host oracles. <paramref name="call"/> sends
    /// one request and returns the reply and its length (null when it was not answered).</summary>
    public static void LookUpFixtures(Func<byte[], (byte[]? Reply, int Used)> call, FuseGuestState state, HostOracles host,
        IDictionary<string, ulong>? nodeIds = null)
    {
        foreach (string name in Directories.Concat(Files))
        {
            byte[] nameBytes = Encoding.UTF8.GetBytes(name + "\0");
            var lookup = new byte[FuseInHeader.Size + nameBytes.Length];
            MemoryMarshal.Write(lookup, new FuseInHeader { Len = (uint)lookup.Length, Opcode = (uint)FuseOpcode.Lookup, Unique = 2, NodeId = FuseConstants.RootId });
            nameBytes.CopyTo(lookup, FuseInHeader.Size);
            var (reply, used) = call(lookup);
            if (reply is null || used < FuseOutHeader.Size + FuseEntryOut.Size || BinaryPrimitives.ReadInt32LittleEndian(reply.AsSpan(4)) != 0)
            {
                continue;
            }
            var entry = MemoryMarshal.Read<FuseEntryOut>(reply.AsSpan(FuseOutHeader.Size));
            state.AddNode(entry.NodeId, entry.Attr.Mode);
            host.NoteNode(entry.NodeId, entry.Attr.Ino);
            if (nodeIds is not null)
            {
                nodeIds[name] = entry.NodeId;
            }
            if ((entry.Attr.Mode & Libc.S_IFMT) == Libc.S_IFDIR)
            {
                state.FixtureDirectories.Add(entry.NodeId);
            }
        }
    }

    /// <remarks>Every mode is set explicitly: a thread the server ran a request on (the test's own, for
    /// INIT) has a umask of 0 of its own, and a later target built on that thread would otherwise
    /// get a share whose modes differ from a fresh process's, and cases that replay differently.</remarks>
    public static void Populate(string share, string outside)
    {
        Own(share, 0, 0, 0x1ED);                                     // 0755 root:root
        File.WriteAllText(Path.Combine(share, "a.txt"), "inside the share\n");
        Own(Path.Combine(share, "a.txt"), 0, 0, 0x1A4);
        MakeDirectory(Path.Combine(share, "d"), 0, 0, 0x1ED);
        MakeDirectory(Path.Combine(share, "d", "e"), 0, 0, 0x1ED);
        File.WriteAllBytes(Path.Combine(share, "d", "f"), new byte[20000]);
        Own(Path.Combine(share, "d", "f"), 0, 0, 0x1A4);
        File.CreateSymbolicLink(Path.Combine(share, "up"), "../outside");
        File.CreateSymbolicLink(Path.Combine(share, "abs"), Path.Combine(outside, "secret"));
        File.CreateSymbolicLink(Path.Combine(share, "d", "upup"), "../../outside/secret");
        Make(Path.Combine(share, "p"), Libc.S_IFIFO | 0x1A4);
        MakeDirectory(Path.Combine(share, "sgid"), 0, 0, 0x5FF);   // 02777 root:root
        MakeDirectory(Path.Combine(share, "team"), 0, 4242, 0x5F8); // 02770 root:4242
        MakeDirectory(Path.Combine(share, "pub"), 0, 0, 0x1FF);    // 0777 root:root
        MakeDirectory(Path.Combine(share, "home"), 1000, 1000, 0x1ED); // 0755 1000:1000
        File.WriteAllText(Path.Combine(share, "bin"), "#!/bin/sh\necho root's program\n");
        Own(Path.Combine(share, "bin"), 0, 0, 0x1ED);               // 0755 root:root
        File.WriteAllText(Path.Combine(share, "mine"), "#!/bin/sh\necho a user's program\n");
        Own(Path.Combine(share, "mine"), 1000, 1000, 0x1ED);        // 0755 1000:1000
        File.WriteAllText(Path.Combine(share, "suid"), "#!/bin/sh\necho a setuid, setgid program its group may rewrite\n");
        Own(Path.Combine(share, "suid"), 1000, 4242, 0xDFD);       // 06775 1000:4242
    }

    private static void MakeDirectory(string path, uint uid, uint gid, uint mode)
    {
        Directory.CreateDirectory(path);
        Own(path, uid, gid, mode);
    }

    private static void Make(string path, uint mode)
    {
        fixed (byte* p = Z(path))
        {
            if (Libc.MknodAt(Libc.AT_FDCWD, p, mode, 0) != 0)
            {
                throw new PosixException("mknod " + path, Libc.LastErrno);
            }
        }
    }

    private static void Own(string path, uint uid, uint gid, uint mode)
    {
        fixed (byte* p = Z(path))
        {
            // chown first: it clears the set-id bits the chmod then sets.
            if (Libc.FchownAt(Libc.AT_FDCWD, p, uid, gid, Libc.AT_SYMLINK_NOFOLLOW) != 0 || Libc.FchmodAt(Libc.AT_FDCWD, p, mode, 0) != 0)
            {
                throw new PosixException("chown/chmod " + path, Libc.LastErrno);
            }
        }
    }

    private static byte[] Z(string s) => Encoding.UTF8.GetBytes(s + "\0");
}
