using System.Runtime.InteropServices;
using System.Text;
using Vhostfsd.FuseProtocol;
using Vhostfsd.GuestKernelShim;
using Vhostfsd.Posix;

namespace Vhostfsd.Hardening.Support;

/// <summary>Requests a hostile guest sends by hand, below the shim's VFS layer (which would resolve
/// ".." itself, cache names, and refuse names with '/'): the connection's Send with exact arguments.</summary>
public sealed class RawFuse
{
    public RawFuse(FuseConn conn)
    {
        Conn = conn;
    }

    public FuseConn Conn { get; }
    public FuseCaller Caller { get; set; } = FuseCaller.Root;

    public static byte[] Name(string name) => Encoding.UTF8.GetBytes(name + "\0");

    private static ReadOnlySpan<byte> Bytes<T>(in T value) where T : unmanaged => MemoryMarshal.AsBytes(new ReadOnlySpan<T>(in value));

    /// <summary>LOOKUP; on success the entry (the daemon counted one lookup).</summary>
    public Errno Lookup(ulong parent, string name, out FuseEntryOut entry)
    {
        entry = default;
        var reply = Conn.Send(FuseOpcode.Lookup, parent, Caller, new FuseArgs(Name(name)), MemoryMarshal.AsBytes(new Span<FuseEntryOut>(ref entry)), FuseReplyShape.Fixed);
        return reply.IsOk && entry.NodeId == 0 ? Errno.ENOENT : reply.Errno;
    }

    public Errno Getattr(ulong node, out FuseAttrOut attr)
    {
        attr = default;
        var args = new FuseGetattrIn();
        return Conn.Send(FuseOpcode.Getattr, node, Caller, new FuseArgs(Bytes(args)), MemoryMarshal.AsBytes(new Span<FuseAttrOut>(ref attr)), FuseReplyShape.Fixed).Errno;
    }

    public Errno Open(ulong node, int flags, out ulong fh)
    {
        FuseOpenOut open = default;
        var args = new FuseOpenIn { Flags = (uint)flags };
        var rc = Conn.Send(FuseOpcode.Open, node, Caller, new FuseArgs(Bytes(args)), MemoryMarshal.AsBytes(new Span<FuseOpenOut>(ref open)), FuseReplyShape.Fixed).Errno;
        fh = open.Fh;
        return rc;
    }

    public Errno Create(ulong parent, string name, int flags, uint mode, out FuseEntryOut entry, out ulong fh)
    {
        Span<byte> reply = stackalloc byte[FuseEntryOut.Size + FuseOpenOut.Size];
        var args = new FuseCreateIn { Flags = (uint)flags, Mode = Libc.S_IFREG | mode };
        var r = Conn.Send(FuseOpcode.Create, parent, Caller, new FuseArgs(Bytes(args), Name(name)), reply, FuseReplyShape.Fixed);
        entry = MemoryMarshal.Read<FuseEntryOut>(reply);
        fh = MemoryMarshal.Read<FuseOpenOut>(reply[FuseEntryOut.Size..]).Fh;
        return r.Errno;
    }

    public Errno Mknod(ulong parent, string name, uint mode, uint rdev, out FuseEntryOut entry)
    {
        entry = default;
        var args = new FuseMknodIn { Mode = mode, Rdev = rdev };
        return Conn.Send(FuseOpcode.Mknod, parent, Caller, new FuseArgs(Bytes(args), Name(name)), MemoryMarshal.AsBytes(new Span<FuseEntryOut>(ref entry)), FuseReplyShape.Fixed).Errno;
    }

    public Errno Read(ulong node, ulong fh, ulong offset, Span<byte> buffer, out int read)
    {
        var args = new FuseReadIn { Fh = fh, Offset = offset, Length = (uint)buffer.Length };
        var r = Conn.Send(FuseOpcode.Read, node, Caller, new FuseArgs(Bytes(args)), buffer);
        read = r.Length;
        return r.Errno;
    }

    public Errno Write(ulong node, ulong fh, ulong offset, ReadOnlySpan<byte> data, out int written, FuseWriteFlags flags = 0)
    {
        FuseWriteOut wout = default;
        var args = new FuseWriteIn { Fh = fh, Offset = offset, Length = (uint)data.Length, WriteFlags = (uint)flags };
        var r = Conn.Send(FuseOpcode.Write, node, Caller, new FuseArgs(Bytes(args), data), MemoryMarshal.AsBytes(new Span<FuseWriteOut>(ref wout)), FuseReplyShape.Fixed);
        written = (int)wout.Length;
        return r.Errno;
    }

    public Errno Release(ulong node, ulong fh, bool directory = false)
    {
        var args = new FuseReleaseIn { Fh = fh };
        return Conn.Send(directory ? FuseOpcode.Releasedir : FuseOpcode.Release, node, Caller, new FuseArgs(Bytes(args)), default).Errno;
    }

    public Errno Opendir(ulong node, out ulong fh)
    {
        FuseOpenOut open = default;
        var args = new FuseOpenIn();
        var rc = Conn.Send(FuseOpcode.Opendir, node, Caller, new FuseArgs(Bytes(args)), MemoryMarshal.AsBytes(new Span<FuseOpenOut>(ref open)), FuseReplyShape.Fixed).Errno;
        fh = open.Fh;
        return rc;
    }

    public Errno Fsync(ulong node, ulong fh)
    {
        var args = new FuseFsyncIn { Fh = fh };
        return Conn.Send(FuseOpcode.Fsync, node, Caller, new FuseArgs(Bytes(args)), default).Errno;
    }

    /// <summary>SETLK / SETLKW (POSIX record lock) on an open file.</summary>
    public Errno Lock(ulong node, ulong fh, ulong owner, short type, bool wait, CancellationToken cancellation = default)
    {
        var args = new FuseLkIn { Fh = fh, Owner = owner, Lk = new FuseFileLock { Start = 0, End = long.MaxValue, Type = (uint)type, Pid = 1 } };
        return Conn.Send(wait ? FuseOpcode.Setlkw : FuseOpcode.Setlk, node, Caller, new FuseArgs(Bytes(args)), default, FuseReplyShape.Variable, cancellation).Errno;
    }

    public void Forget(ulong node, ulong count) => Conn.QueueForget(node, count);
}
