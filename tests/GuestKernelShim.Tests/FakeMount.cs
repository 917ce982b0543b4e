using System.Runtime.InteropServices;
using System.Text;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.GuestKernelShim.Tests;

/// <summary>A FuseFs mounted over the in-process channel with a fake daemon whose answers each test scripts.</summary>
public sealed class FakeMount : IDisposable
{
    public FakeMount(Func<SeenRequest, FakeAnswer> handler, FuseInitFlags? granted = null, uint minor = 38,
        MountOptions? mountOptions = null, Action<FakeDaemon>? configure = null)
    {
        Channel = new InProcessChannelBackend();
        Daemon = new FakeDaemon(Channel, start: false) { Handler = handler };
        var (lo, hi) = FuseConstants.SplitInitFlags(granted ?? FuseConnOptions.DefaultFlags);
        Daemon.InitOut.Flags = lo;
        Daemon.InitOut.Flags2 = hi;
        Daemon.InitOut.Minor = minor;
        configure?.Invoke(Daemon);
        Daemon.Start();
        Fs = FuseFs.Mount(Channel, mountOptions);
    }

    public InProcessChannelBackend Channel { get; }
    public FakeDaemon Daemon { get; }
    public FuseFs Fs { get; }

    public SeenRequest[] Of(FuseOpcode opcode) => Daemon.SeenOf(opcode).ToArray();

    public int Count(FuseOpcode opcode) => Daemon.SeenOf(opcode).Count();

    public void Dispose()
    {
        Fs.Dispose();
        Daemon.Dispose();
    }

    // ---- canned answers ----

    public static FuseAttr Attr(ulong ino, uint mode, uint uid = 0, uint gid = 0, uint nlink = 1, ulong size = 0, uint flags = 0)
        => new() { Ino = ino, Mode = mode, Uid = uid, Gid = gid, Nlink = nlink, FileSize = size, Flags = flags, BlkSize = 4096 };

    public static FakeAnswer Entry(ulong node, in FuseAttr attr, ulong generation = 0, ulong entryValid = 0, ulong attrValid = 0)
        => FakeAnswer.Of(new FuseEntryOut { NodeId = node, Generation = generation, EntryValid = entryValid, AttrValid = attrValid, Attr = attr });

    public static FakeAnswer AttrOut(in FuseAttr attr, ulong attrValid = 0)
        => FakeAnswer.Of(new FuseAttrOut { AttrValid = attrValid, Attr = attr });

    public static FakeAnswer Open(ulong fh, FuseOpenOutFlags flags = FuseOpenOutFlags.None)
        => FakeAnswer.Of(new FuseOpenOut { Fh = fh, OpenFlags = (uint)flags });

    public static string Name(SeenRequest r, int offset = 0)
    {
        var span = r.Args.AsSpan(offset);
        int nul = span.IndexOf((byte)0);
        return Encoding.UTF8.GetString(nul < 0 ? span : span[..nul]);
    }

    /// <summary>A READDIR(PLUS) reply body from (name, node, mode, offset) entries.</summary>
    public static byte[] Dirents(bool plus, params (string Name, ulong Node, uint Mode, ulong Off)[] entries)
    {
        var buffer = new List<byte>();
        foreach (var (name, node, mode, off) in entries)
        {
            var nameBytes = Encoding.UTF8.GetBytes(name);
            var dirent = new FuseDirent { Ino = node + 1000, Off = off, NameLen = (uint)nameBytes.Length, Type = (mode & 0xF000) >> 12 };
            int size = plus ? FuseConstants.DirentplusSize(nameBytes.Length) : FuseConstants.DirentSize(nameBytes.Length);
            var record = new byte[size];
            if (plus)
            {
                var p = new FuseDirentplus
                {
                    EntryOut = new FuseEntryOut { NodeId = node, EntryValid = 60, AttrValid = 60, Attr = Attr(node + 1000, mode) },
                    Dirent = dirent,
                };
                MemoryMarshal.Write(record, in p);
                nameBytes.CopyTo(record, FuseDirentplus.Size);
            }
            else
            {
                MemoryMarshal.Write(record, in dirent);
                nameBytes.CopyTo(record, FuseDirent.Size);
            }
            buffer.AddRange(record);
        }
        return buffer.ToArray();
    }

    public const uint Dir755 = 0x41ED;
    public const uint File644 = 0x81A4;
    public const uint File600 = 0x8180;
    public const uint Link777 = 0xA1FF;
}
