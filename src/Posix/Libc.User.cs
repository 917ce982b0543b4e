using System.Runtime.InteropServices;

namespace Vhostfsd.Posix;

/// <summary>struct group (x86_64: 32 bytes).</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct GroupEntry
{
    public const int Size = 32;
    public byte* Name;
    public byte* Password;
    public uint Gid;
    private readonly uint _padding;
    public byte** Members;
}

/// <summary>What identifies a file: its type bits (S_IFMT), device (major &lt;&lt; 32 | minor) and inode.</summary>
public readonly record struct FileIdentity(uint Type, ulong Device, ulong Inode);

/// <summary>User and group database lookups and ownership of paths the daemon creates (its socket).</summary>
public static unsafe partial class Libc
{
    // struct statx offsets (include/uapi/linux/stat.h) for the few fields start-up needs.
    private const int StatxModeOffset = 0x1C;
    private const int StatxInodeOffset = 0x20;
    private const int StatxDevMajorOffset = 0x88;
    private const int StatxDevMinorOffset = 0x8C;
    private const int StatxBufferSize = 256;
    private const int StatxEmptyPathFlag = 0x1000;
    private const uint StatxTypeAndInode = 0x1 | 0x100;

    [LibraryImport(Lib, EntryPoint = "getgrnam_r")]
    public static partial int GetGrNamR(byte* name, GroupEntry* group, byte* buffer, nuint bufferLength, GroupEntry** result);

    [LibraryImport(Lib, EntryPoint = "chown", SetLastError = true)]
    public static partial int Chown(byte* path, uint owner, uint group);

    [LibraryImport(Lib, EntryPoint = "chmod", SetLastError = true)]
    public static partial int Chmod(byte* path, uint mode);

    [LibraryImport(Lib, EntryPoint = "statx", SetLastError = true)]
    private static partial int StatxIntoBuffer(int dirFd, byte* path, int flags, uint mask, byte* buffer);

    /// <summary>Type bits (S_IFMT), device and inode of <paramref name="path"/> without following
    /// a final symlink. Returns 0 or -errno (-ENOENT when it does not exist).</summary>
    public static int Identify(string path, out FileIdentity identity)
    {
        fixed (byte* p = System.Text.Encoding.UTF8.GetBytes(path + "\0"))
        {
            return IdentifyAt(AT_FDCWD, p, AT_SYMLINK_NOFOLLOW, out identity);
        }
    }

    /// <summary>Type bits, device and inode of the open <paramref name="fd"/>. Returns 0 or -errno.</summary>
    public static int Identify(int fd, out FileIdentity identity)
    {
        byte empty = 0;
        return IdentifyAt(fd, &empty, StatxEmptyPathFlag, out identity);
    }

    private static int IdentifyAt(int dirFd, byte* path, int flags, out FileIdentity identity)
    {
        byte* buffer = stackalloc byte[StatxBufferSize];
        // SAFETY: buffer is 256 bytes, the size of struct statx; every offset read lies inside it.
        if (StatxIntoBuffer(dirFd, path, flags, StatxTypeAndInode, buffer) < 0)
        {
            identity = default;
            return NegErrno;
        }
        identity = new FileIdentity(
            *(ushort*)(buffer + StatxModeOffset) & S_IFMT,
            ((ulong)*(uint*)(buffer + StatxDevMajorOffset) << 32) | *(uint*)(buffer + StatxDevMinorOffset),
            *(ulong*)(buffer + StatxInodeOffset));
        return 0;
    }

    /// <summary>Resolves a group name to its gid; null when no such group exists. Throws
    /// <see cref="PosixException"/> when the lookup itself fails.</summary>
    public static uint? LookUpGroup(string name)
    {
        byte[] nameBytes = System.Text.Encoding.UTF8.GetBytes(name + "\0");
        int size = 4096;
        while (true)
        {
            byte[] buffer = new byte[size];
            GroupEntry entry;
            GroupEntry* result = null;
            int rc;
            fixed (byte* n = nameBytes)
            fixed (byte* b = buffer)
            {
                rc = GetGrNamR(n, &entry, b, (nuint)buffer.Length, &result);
            }
            if (rc == (int)Errno.ERANGE && size < (1 << 20))
            {
                size *= 4;
                continue;
            }
            if (rc != 0)
            {
                throw new PosixException("getgrnam_r " + name, (Errno)rc);
            }
            return result == null ? null : entry.Gid;
        }
    }
}
