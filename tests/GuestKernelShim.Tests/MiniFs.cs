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

    /// <summary>File contents by node: READ, WRITE and a SETATTR of the size work on them (and a WRITE moves the
    /// size and mtime). Nodes without contents read a pattern derived from the offset.</summary>
    public ConcurrentDictionary<ulong, byte[]> Contents { get; } = new();

    /// <summary>Gives node <paramref name="node"/> stored contents.</summary>
    public void SetContents(ulong node, byte[] data)
    {
        Contents[node] = data;
        var attr = Attrs[node];
        attr.FileSize = (ulong)data.Length;
        Attrs[node] = attr;
    }

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
                        if (Contents.TryGetValue(r.Header.NodeId, out var stored))
                        {
                            Array.Resize(ref stored, (int)s.FileSize);
                            Contents[r.Header.NodeId] = stored;
                        }
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
            case FuseOpcode.Read when Contents.TryGetValue(r.Header.NodeId, out var stored):
            {
                var read = r.Arg<FuseReadIn>();
                long available = Math.Max(0, stored.Length - (long)read.Offset);
                return FakeAnswer.Ok(stored.AsSpan((int)Math.Min((long)read.Offset, stored.Length), (int)Math.Min(available, read.Length)).ToArray());
            }
            case FuseOpcode.Write when Contents.ContainsKey(r.Header.NodeId):
            {
                var write = r.Arg<FuseWriteIn>();
                var payload = r.Args.AsSpan(FuseWriteIn.Size, (int)write.Length);
                lock (Contents)
                {
                    var stored = Contents[r.Header.NodeId];
                    long end = (long)write.Offset + payload.Length;
                    if (end > stored.Length)
                    {
                        Array.Resize(ref stored, (int)end);
                    }
                    payload.CopyTo(stored.AsSpan((int)write.Offset));
                    Contents[r.Header.NodeId] = stored;
                    var written = Attrs[r.Header.NodeId];
                    written.FileSize = (ulong)stored.Length;
                    written.Mtime++;
                    Attrs[r.Header.NodeId] = written;
                }
                return FakeAnswer.Of(new FuseWriteOut { Length = write.Length });
            }
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
