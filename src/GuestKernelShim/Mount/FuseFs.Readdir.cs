using System.Buffers;
using System.Runtime.InteropServices;
using System.Text;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.GuestKernelShim;

// Reading directories: READDIR / READDIRPLUS, the readdirplus heuristics, and the entries they instantiate.
public sealed partial class FuseFs
{
    // ---------------------------------------------------------------- reading directories

    /// <summary>fuse_use_readdirplus: only when DO_READDIRPLUS was negotiated; with READDIRPLUS_AUTO only at
    /// offset 0 or after a lookup in the directory advised it.</summary>
    private bool UseReaddirplus(FuseNode dir, ulong offset)
    {
        if (!Conn.Has(FuseInitFlags.DoReaddirplus))
        {
            return false;
        }
        if (!Conn.Has(FuseInitFlags.ReaddirplusAuto))
        {
            return true;
        }
        if (dir.AdviseReaddirplus)
        {
            dir.AdviseReaddirplus = false;
            return true;
        }
        return offset == 0;
    }

    /// <summary>One READDIR / READDIRPLUS at <paramref name="offset"/> into a buffer of <paramref name="bufferSize"/>
    /// bytes (at most max_pages pages). Entries are appended to <paramref name="entries"/>; the next call passes
    /// <paramref name="nextOffset"/> (the d_off of the last entry). <paramref name="end"/> is set when the daemon
    /// returned nothing. READDIRPLUS entries (except . and ..) become nodes and cached names, each counting a
    /// lookup. <paramref name="plus"/> forces the choice; null applies Linux's rule.</summary>
    public Errno ReadDirectory(FuseFile dir, ulong offset, List<FuseDirEntry> entries, out ulong nextOffset, out bool end,
        bool? plus = null, int bufferSize = FuseConn.PageSize, FuseCaller? caller = null)
    {
        var c = Who(caller);
        nextOffset = offset;
        end = false;
        var rc = CheckLive(dir.Node);
        if (rc != Errno.OK)
        {
            return rc;
        }
        if (!dir.IsDirectory || dir.IsClosed)
        {
            return dir.IsDirectory ? Errno.EBADF : Errno.ENOTDIR;
        }
        bool usePlus = plus ?? UseReaddirplus(dir.Node, offset);
        if (usePlus && !Conn.Has(FuseInitFlags.DoReaddirplus) && plus == null)
        {
            usePlus = false;
        }
        int size = Math.Clamp(bufferSize, FuseConn.PageSize, Math.Max(FuseConn.PageSize, Conn.MaxPages * FuseConn.PageSize));
        byte[] buffer = ArrayPool<byte>.Shared.Rent(size);
        try
        {
            var arg = new FuseReadIn { Fh = dir.Fh, Offset = offset, Length = (uint)size, Flags = (uint)dir.Flags };
            var reply = Conn.Send(usePlus ? FuseOpcode.Readdirplus : FuseOpcode.Readdir, dir.Node.NodeId, c, new FuseArgs(Bytes(in arg)),
                buffer.AsSpan(0, size), FuseReplyShape.Variable);
            if (!reply.IsOk)
            {
                return reply.Errno;
            }
            if (reply.Length == 0)
            {
                end = true;
                return Errno.OK;
            }
            return usePlus
                ? ParseDirentplus(dir.Node, buffer.AsSpan(0, reply.Length), entries, ref nextOffset)
                : ParseDirents(buffer.AsSpan(0, reply.Length), entries, ref nextOffset);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(buffer);
        }
    }

    private static Errno ParseDirents(ReadOnlySpan<byte> data, List<FuseDirEntry> entries, ref ulong nextOffset)
    {
        while (data.Length >= FuseDirent.Size)
        {
            var dirent = MemoryMarshal.Read<FuseDirent>(data);
            if (dirent.NameLen == 0 || dirent.NameLen > NameMax)
            {
                return Errno.EIO;
            }
            int record = FuseConstants.DirentSize((int)dirent.NameLen);
            if (record > data.Length)
            {
                break;
            }
            var nameBytes = data.Slice(FuseDirent.Size, (int)dirent.NameLen);
            if (nameBytes.IndexOf((byte)'/') >= 0)
            {
                return Errno.EIO;
            }
            entries.Add(new FuseDirEntry(Encoding.UTF8.GetString(nameBytes), dirent.Ino, dirent.Off, dirent.Type, null));
            nextOffset = dirent.Off;
            data = data[record..];
        }
        return Errno.OK;
    }

    private Errno ParseDirentplus(FuseNode dir, ReadOnlySpan<byte> data, List<FuseDirEntry> entries, ref ulong nextOffset)
    {
        while (data.Length >= FuseDirentplus.Size)
        {
            var plus = MemoryMarshal.Read<FuseDirentplus>(data);
            var dirent = plus.Dirent;
            if (dirent.NameLen == 0 || dirent.NameLen > NameMax)
            {
                return Errno.EIO;
            }
            int record = FuseConstants.DirentplusSize((int)dirent.NameLen);
            if (record > data.Length)
            {
                break;
            }
            var nameBytes = data.Slice(FuseDirentplus.Size, (int)dirent.NameLen);
            if (nameBytes.IndexOf((byte)'/') >= 0)
            {
                return Errno.EIO;
            }
            string name = Encoding.UTF8.GetString(nameBytes);
            FuseNode? node = null;
            var entry = plus.EntryOut;
            // fuse_direntplus_link: node id 0 = no attributes for this entry; . and .. are never linked.
            if (entry.NodeId != 0 && name != "." && name != "..")
            {
                if (ValidateEntry(entry, 0) == Errno.OK)
                {
                    node = Instantiate(entry, dir);
                    SetDentry(dir, name, node, entry.EntryValid, entry.EntryValidNsec);
                }
            }
            entries.Add(new FuseDirEntry(name, dirent.Ino, dirent.Off, dirent.Type, node));
            nextOffset = dirent.Off;
            data = data[record..];
        }
        return Errno.OK;
    }

    /// <summary>Streams a directory: OPENDIR, READDIR(PLUS) chunk after chunk from each chunk's last offset,
    /// RELEASEDIR. Throws <see cref="FuseErrnoException"/> when a request fails.</summary>
    public IEnumerable<FuseDirEntry> EnumerateDirectory(FuseNode dirNode, bool? plus = null, int bufferSize = FuseConn.PageSize, FuseCaller? caller = null)
    {
        var c = Who(caller);
        var rc = OpenDir(dirNode, out var dir, c);
        if (rc != Errno.OK)
        {
            throw new FuseErrnoException("opendir", rc);
        }
        try
        {
            var chunk = new List<FuseDirEntry>();
            ulong offset = 0;
            while (true)
            {
                chunk.Clear();
                rc = ReadDirectory(dir!, offset, chunk, out ulong next, out bool end, plus, bufferSize, c);
                if (rc != Errno.OK)
                {
                    throw new FuseErrnoException("readdir", rc);
                }
                if (end || chunk.Count == 0)
                {
                    yield break;
                }
                foreach (var entry in chunk)
                {
                    yield return entry;
                }
                offset = next;
            }
        }
        finally
        {
            Release(dir!, c);
        }
    }

    /// <summary>Lists a whole directory into <paramref name="entries"/> (see <see cref="EnumerateDirectory"/>).</summary>
    public Errno ReadDirectoryAll(FuseNode dirNode, List<FuseDirEntry> entries, bool? plus = null, int bufferSize = FuseConn.PageSize, FuseCaller? caller = null)
    {
        try
        {
            foreach (var entry in EnumerateDirectory(dirNode, plus, bufferSize, caller))
            {
                entries.Add(entry);
            }
            return Errno.OK;
        }
        catch (FuseErrnoException e)
        {
            return e.Errno;
        }
    }
}

/// <summary>A failed operation of a streaming API (other FuseFs methods return the errno instead).</summary>
public sealed class FuseErrnoException : Exception
{
    public FuseErrnoException(string operation, Errno errno)
        : base($"{operation}: {errno}")
    {
        Errno = errno;
    }

    public Errno Errno { get; }
}
