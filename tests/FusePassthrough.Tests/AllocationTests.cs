using System.Runtime.InteropServices;
using System.Text;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Xunit;

namespace Vhostfsd.FusePassthrough.Tests;

/// <summary>The hot paths (LOOKUP, GETATTR, OPEN, RELEASE, READ, WRITE, CREATE, READDIRPLUS) allocate
/// nothing in the steady state: requests are pre-built in pinned memory and handed to
/// HandleRequest directly, and the thread's allocation counter must not move.</summary>
public unsafe class AllocationTests
{
    private sealed class Raw
    {
        private readonly FuseServer _server;
        private readonly byte[] _request = GC.AllocateArray<byte>(8192, pinned: true);
        private readonly byte[] _reply = GC.AllocateArray<byte>(1 << 16, pinned: true);
        private readonly IoVec[] _readable = new IoVec[1];
        private readonly IoVec[] _writable = new IoVec[1];
        private ulong _unique;

        public Raw(FuseServer server)
        {
            _server = server;
        }

        public Span<byte> Reply => _reply;

        /// <summary>Builds header + fixed args + optional name + payload into the pinned request buffer.</summary>
        public int Build<T>(FuseOpcode opcode, ulong node, in T args, ReadOnlySpan<byte> tail = default) where T : unmanaged
        {
            int length = FuseInHeader.Size + sizeof(T) + tail.Length;
            var h = new FuseInHeader { Len = (uint)length, Opcode = (uint)opcode, Unique = ++_unique, NodeId = node };
            MemoryMarshal.Write(_request, in h);
            MemoryMarshal.Write(_request.AsSpan(FuseInHeader.Size), in args);
            tail.CopyTo(_request.AsSpan(FuseInHeader.Size + sizeof(T)));
            return length;
        }

        public int BuildNameOnly(FuseOpcode opcode, ulong node, ReadOnlySpan<byte> name)
        {
            int length = FuseInHeader.Size + name.Length;
            var h = new FuseInHeader { Len = (uint)length, Opcode = (uint)opcode, Unique = ++_unique, NodeId = node };
            MemoryMarshal.Write(_request, in h);
            name.CopyTo(_request.AsSpan(FuseInHeader.Size));
            return length;
        }

        /// <summary>Sends the built request; returns the reply's error.</summary>
        public int Send(int length)
        {
            fixed (byte* req = _request)
            fixed (byte* rep = _reply)
            {
                _readable[0] = new IoVec(req, (nuint)length);
                _writable[0] = new IoVec(rep, (nuint)_reply.Length);
                var header = FuseRequestHeader.Read(_readable);
                int n = _server.HandleRequest(in header, _readable, _writable);
                return n >= FuseOutHeader.Size ? MemoryMarshal.Read<FuseOutHeader>(_reply).Error : 0;
            }
        }

        public T Payload<T>(int offset = 0) where T : unmanaged => MemoryMarshal.Read<T>(_reply.AsSpan(FuseOutHeader.Size + offset));
    }

    [Fact]
    public void HotPathsAllocateNothing()
    {
        using var f = new ShareFixture();
        File.WriteAllBytes(f.HostPath("file"), new byte[65536]);
        for (int i = 0; i < 30; i++)
        {
            File.WriteAllText(f.HostPath($"entry{i}"), "x");
        }
        var raw = new Raw(f.Server);
        byte[] fileName = "file\0"u8.ToArray();
        byte[] newName = "newfile\0"u8.ToArray();
        byte[] payload = new byte[4096];
        ulong root = FuseConstants.RootId;

        Assert.Equal(0, raw.Send(raw.BuildNameOnly(FuseOpcode.Lookup, root, fileName)));
        ulong node = raw.Payload<FuseEntryOut>().NodeId;
        Assert.Equal(0, raw.Send(raw.Build(FuseOpcode.Open, node, new FuseOpenIn { Flags = (uint)Libc.O_RDWR })));
        ulong fh = raw.Payload<FuseOpenOut>().Fh;
        Assert.Equal(0, raw.Send(raw.Build(FuseOpcode.Opendir, root, new FuseOpenIn())));
        ulong dirFh = raw.Payload<FuseOpenOut>().Fh;

        void Round()
        {
            Check(raw.Send(raw.BuildNameOnly(FuseOpcode.Lookup, root, fileName)));
            Check(raw.Send(raw.Build(FuseOpcode.Getattr, node, new FuseGetattrIn())));
            Check(raw.Send(raw.Build(FuseOpcode.Open, node, new FuseOpenIn { Flags = (uint)Libc.O_RDONLY })));
            ulong tmp = raw.Payload<FuseOpenOut>().Fh;
            Check(raw.Send(raw.Build(FuseOpcode.Release, node, new FuseReleaseIn { Fh = tmp })));
            Check(raw.Send(raw.Build(FuseOpcode.Read, node, new FuseReadIn { Fh = fh, Offset = 4096, Length = 4096 })));
            Check(raw.Send(raw.Build(FuseOpcode.Write, node, new FuseWriteIn { Fh = fh, Offset = 8192, Length = (uint)payload.Length }, payload)));
            Check(raw.Send(raw.Build(FuseOpcode.Create, root, new FuseCreateIn { Flags = (uint)(Libc.O_RDWR | Libc.O_CREAT | Libc.O_EXCL), Mode = Libc.S_IFREG | 0x1A4 }, newName)));
            ulong created = raw.Payload<FuseEntryOut>().NodeId;
            ulong createdFh = raw.Payload<FuseOpenOut>(FuseEntryOut.Size).Fh;
            Check(raw.Send(raw.Build(FuseOpcode.Release, created, new FuseReleaseIn { Fh = createdFh })));
            Check(raw.Send(raw.BuildNameOnly(FuseOpcode.Unlink, root, newName)));
            raw.Send(raw.Build(FuseOpcode.Forget, created, new FuseForgetIn { Nlookup = 1 }));
            Check(raw.Send(raw.Build(FuseOpcode.Readdirplus, root, new FuseReadIn { Fh = dirFh, Offset = 0, Length = 4096 })));
        }

        for (int i = 0; i < 100; i++)
        {
            Round();
        }
        long before = GC.GetAllocatedBytesForCurrentThread();
        for (int i = 0; i < 300; i++)
        {
            Round();
        }
        long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        Assert.Equal(0, allocated);
        Assert.Equal(0, f.Server.Stats.Exceptions);
    }

    private static void Check(int error)
    {
        if (error != 0)
        {
            throw new InvalidOperationException("request failed: errno " + (-error));
        }
    }
}
