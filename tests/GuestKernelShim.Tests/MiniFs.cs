using System.Collections.Concurrent;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.GuestKernelShim.Tests;

/// <summary>A scripted daemon's file system for FuseFs semantics tests: a flat root with named entries, every
/// other request answered plausibly, and <see cref="Override"/> to change any answer.</summary>
public sealed class MiniFs
{
    public ConcurrentDictionary<string, (ulong Node, ulong Generation)> Names { get; } = new();
    public ConcurrentDictionary<ulong, FuseAttr> Attrs { get; } = new();
    public ulong EntryValid { get; set; }
    public ulong AttrValid { get; set; }
    public ulong NextFh { get; set; } = 7;

    /// <summary>Answers first; null falls through to the default behaviour.</summary>
    public Func<SeenRequest, FakeAnswer?>? Override { get; set; }

    public MiniFs()
    {
        Attrs[1] = FakeMount.Attr(1, FakeMount.Dir755);
    }

    public void Add(string name, ulong node, uint mode, uint uid = 0, uint gid = 0, uint nlink = 1, ulong generation = 0, ulong size = 0, uint flags = 0)
    {
        Names[name] = (node, generation);
        Attrs[node] = FakeMount.Attr(node, mode, uid, gid, nlink, size, flags);
    }

    public FakeAnswer Handle(SeenRequest r)
    {
        if (Override?.Invoke(r) is FakeAnswer answer)
        {
            return answer;
        }
        switch (r.Opcode)
        {
            case FuseOpcode.Lookup:
            {
                string name = FakeMount.Name(r);
                if (!Names.TryGetValue(name, out var e))
                {
                    return FakeAnswer.Fail(Errno.ENOENT);
                }
                return FakeMount.Entry(e.Node, Attrs[e.Node], e.Generation, EntryValid, AttrValid);
            }
            case FuseOpcode.Getattr:
            case FuseOpcode.Setattr:
                if (!Attrs.TryGetValue(r.Header.NodeId, out var attr))
                {
                    return FakeAnswer.Fail(Errno.ENOENT);
                }
                if (r.Opcode == FuseOpcode.Setattr)
                {
                    var s = r.Arg<FuseSetattrIn>();
                    if ((s.Valid & (uint)FuseSetattrValid.Size) != 0)
                    {
                        attr.FileSize = s.FileSize;
                    }
                    if ((s.Valid & (uint)FuseSetattrValid.Mode) != 0)
                    {
                        attr.Mode = s.Mode;
                    }
                    Attrs[r.Header.NodeId] = attr;
                }
                return FakeMount.AttrOut(attr, AttrValid);
            case FuseOpcode.Open:
            case FuseOpcode.Opendir:
                return FakeMount.Open(NextFh);
            case FuseOpcode.Release:
            case FuseOpcode.Releasedir:
            case FuseOpcode.Flush:
            case FuseOpcode.Fsync:
            case FuseOpcode.Fsyncdir:
            case FuseOpcode.Destroy:
            case FuseOpcode.Unlink:
            case FuseOpcode.Rmdir:
            case FuseOpcode.Rename:
            case FuseOpcode.Syncfs:
            case FuseOpcode.Setlk:
            case FuseOpcode.Setlkw:
            case FuseOpcode.Access:
                return FakeAnswer.Ok();
            case FuseOpcode.Read:
            {
                var read = r.Arg<FuseReadIn>();
                ulong size = Attrs.TryGetValue(r.Header.NodeId, out var a) ? a.FileSize : 0;
                long available = (long)size - (long)read.Offset;
                int length = (int)Math.Clamp(available, 0, read.Length);
                var data = new byte[length];
                for (int i = 0; i < length; i++)
                {
                    data[i] = (byte)(read.Offset + (ulong)i);
                }
                return FakeAnswer.Ok(data);
            }
            case FuseOpcode.Write:
                return FakeAnswer.Of(new FuseWriteOut { Length = r.Arg<FuseWriteIn>().Length });
            case FuseOpcode.Statfs:
                return FakeAnswer.Of(new FuseStatfsOut { St = new FuseKStatfs { Blocks = 100, Bsize = 4096, NameLen = 255 } });
            default:
                return FakeAnswer.Fail(Errno.ENOSYS);
        }
    }
}
