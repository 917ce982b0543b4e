using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Vhostfsd.Fuzz.Engine;
using Vhostfsd.Fuzz.Oracles;
using Vhostfsd.FusePassthrough;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.Fuzz.Targets;

/// <summary>Fuzz target (c): FUSE requests against <see cref="FuseServer.HandleRequest"/> over a real
/// share on a private tmpfs. Requests are built per opcode from what the guest was told (node ids,
/// handles, names), then mutated (three in four) — truncated, oversized, random arguments, names
/// without NUL or with '/', forged ids and handles, huge sizes and offsets — and handed over split
/// in random segments, with the reply space split too and fenced by canaries.
/// Oracles per request: nothing escapes HandleRequest and no internal exception was caught
/// (Stats.Exceptions); the reply length fits the offered space; a reply, when there is one, has a
/// well-formed out header (len = returned, errno in 1..4095 or 0, the request's unique); requests
/// that take a reply get one unless the space cannot hold an out header; FORGET/BATCH_FORGET/
/// INTERRUPT get none; canaries and request bytes are intact; a SETLKW that waits ends when the
/// guest interrupts it; all of it holds when the guest rewrites the request's header in its buffer
/// after the device copied it (the server acts on the copy). After every request, the host-state
/// oracles (<see cref="HostOracles"/>): the sentinel tree next to the share is unchanged (content,
/// listing, atime/mtime/ctime) and every change in the share is one the request's uid, gid and
/// groups were entitled to under the configuration. The serving thread starts in the
/// configuration's supplementary groups. At the end, after a reset, no fd is held.</summary>
public sealed unsafe class FuseServerTarget : IDisposable
{
    private const int RefreshEvery = 4000;

    private readonly ScratchMount _mount;
    private readonly string _share;
    private readonly SentinelTree _sentinel;
    private readonly SortedDictionary<string, string> _sentinelBefore;
    private readonly FuzzConfiguration _config;
    private readonly HostOracles _host;
    private readonly FuseServer _server;
    private readonly FuseGuestState _state = new();
    private readonly ReplyBuffers _buffers = new(4 << 20);
    private readonly MutationDictionary _dictionary = new();
    private readonly HashSet<FuseOpcode> _answeredWellFormed = new();
    private long _internalErrorsLogged;

    [ThreadStatic]
    private static bool t_inServingGroups;

    public FuseServerTarget(FuzzConfiguration config)
    {
        _config = config;
        _mount = ScratchMount.Create(96);
        _share = Path.Combine(_mount.Path, "share");
        Directory.CreateDirectory(_share);
        _sentinel = SentinelTree.CreateBeside(_mount.Path);
        Populate();
        // Built on a thread in the serving groups, like every thread of a daemon started in them: a
        // server that reads "its own" groups at start-up sees them.
        _server = InServingGroups(() => new FuseServer(config.Options(_share), message =>
        {
            if (message.Contains("internal error", StringComparison.Ordinal))
            {
                Interlocked.Increment(ref _internalErrorsLogged);
            }
        }));
        _sentinelBefore = _sentinel.Snapshot();
        _host = new HostOracles(_share, _sentinel, config.Rules);
        foreach (string name in FuzzShare.Names.Concat(["outside", "..", "."]))
        {
            _dictionary.AddName(name);
        }
        Init();
    }

    public FuzzConfiguration Configuration => _config;

    public FuseServer Server => _server;

    /// <summary>Node ids of the share's own entries (looked up before the first case), by name.</summary>
    public IReadOnlyDictionary<string, ulong> Fixtures => _fixtures;

    private readonly Dictionary<string, ulong> _fixtures = new();

    /// <summary>Sends one request outside the fuzzing, on a thread in the serving groups, and runs the
    /// host-state oracles on what it did: the reply's errno (0 for success) and the oracles' verdict.</summary>
    public (int Errno, string? Violation) Send(byte[] request)
    {
        int error = InServingGroups(() =>
        {
            byte[] reply = Call(request, 1 << 16, out int n);
            return n >= FuseOutHeader.Size ? -BinaryPrimitives.ReadInt32LittleEndian(reply.AsSpan(4)) : -1;
        });
        return (error, _host.Check(Requester.From(request, request), _ => { }));
    }
    public IReadOnlySet<FuseOpcode> AnsweredWellFormed => _answeredWellFormed;

    private void Populate()
    {
        FuzzShare.Populate(_share, Path.Combine(_mount.Path, "outside"));
        _state.Names.Clear();
        _state.Names.AddRange(FuzzShare.Names);
        _state.Names.AddRange(["n1", "n2"]);
    }

    private void Init()
    {
        var request = new byte[FuseInHeader.Size + FuseInitIn.Size];
        var h = new FuseInHeader { Len = (uint)request.Length, Opcode = (uint)FuseOpcode.Init, Unique = 1 };
        MemoryMarshal.Write(request, in h);
        // Every flag, SECURITY_CTX and CREATE_SUPP_GROUP among them.
        var init = new FuseInitIn { Major = 7, Minor = FuseConstants.KernelMinorVersion, MaxReadahead = 131072, Flags = 0xFFFF_FFFF, Flags2 = 0x7 };
        MemoryMarshal.Write(request.AsSpan(FuseInHeader.Size), in init);
        var reply = Call(request, 4096, out int n);
        if (n < FuseOutHeader.Size || BinaryPrimitives.ReadInt32LittleEndian(reply.AsSpan(4)) != 0)
        {
            throw new InvalidOperationException("INIT failed");
        }
        _state.Clear();
        _state.Granted(reply.AsSpan(0, n));
        _host.ForgetNodes();
        FuzzShare.LookUpFixtures(request =>
        {
            byte[] entryReply = Call(request, 4096, out int got);
            return (entryReply, got);
        }, _state, _host, _fixtures);
    }

    /// <summary>A request outside the fuzzing (INIT, INTERRUPT), with its own buffers.</summary>
    private byte[] Call(byte[] request, int capacity, out int n)
    {
        var reply = new byte[capacity];
        fixed (byte* req = request)
        fixed (byte* rep = reply)
        {
            IoVec r = new(req, (nuint)request.Length);
            IoVec w = new(rep, (nuint)capacity);
            var readable = new ReadOnlySpan<IoVec>(&r, 1);
            var header = FuseRequestHeader.Read(readable);
            n = _server.HandleRequest(in header, readable, new ReadOnlySpan<IoVec>(&w, 1));
        }
        return reply;
    }

    public void RunCase(FuzzCase c)
    {
        var rng = c.Rng;
        if (!t_inServingGroups)
        {
            // As a daemon's thread would be when started in these groups (the daemon itself must drop them).
            EnterGroups(_config.ServingGroups);
            t_inServingGroups = true;
        }
        if (c.Index > 0 && c.Index % RefreshEvery == 0)
        {
            Refresh();
        }
        if (_server.NegotiatedMinor == 0)
        {
            Init();
        }
        var seed = FuseSeeds.Build(rng, _state, out var builtOpcode, out int replyHint);
        c.SeedName = seed.Name;
        bool mutated = !rng.OneIn(4);
        byte[] request = mutated ? Mutator.Mutate(rng, seed, null, _dictionary, c) : seed.Bytes;
        c.Input = request;
        if (mutated && request.Length >= 4 && rng.Next(10) < 7)
        {
            // Mostly keep the header length honest, so the mutation reaches the opcode's own checks.
            Mutator.PatchU32(request, 0, (uint)request.Length);
        }
        int capacity = rng.Next(10) < 7
            ? Math.Min(replyHint + rng.Next(0, 4096), FuseServer.MaxRequestSize + 4096)
            : rng.Pick<int>([0, 1, 15, 16, 17, 40, 100, 128, 143, 144, rng.Next(0, 300)]);
        _buffers.Prepare(rng, request, capacity);

        bool hasHeader = request.Length >= FuseInHeader.Size;
        uint opcode = request.Length >= 8 ? BinaryPrimitives.ReadUInt32LittleEndian(request.AsSpan(4)) : 0;
        ulong unique = request.Length >= 16 ? BinaryPrimitives.ReadUInt64LittleEndian(request.AsSpan(8)) : 0;
        bool lengthHonest = request.Length >= 4 && BinaryPrimitives.ReadUInt32LittleEndian(request) == request.Length;
        long exceptionsBefore = _server.Stats.Exceptions;

        using var interrupter = opcode == (uint)FuseOpcode.Setlkw ? ArmInterrupt(unique) : null;
        int n;
        var headerCopy = new byte[FuseInHeader.Size];
        try
        {
            // As the device: the header is copied once and routed; then the guest may rewrite it in
            // its buffer, and the request still runs (and is checked below) as it was copied.
            var copied = FuseRequestHeader.Read(_buffers.Readable);
            if (copied.IsComplete)
            {
                MemoryMarshal.Write(headerCopy, in copied.In);
            }
            FuseServer.Triage(in copied, rng.Next(0, FuseServer.MaxWrite + 2));
            if (rng.OneIn(8))
            {
                _buffers.RewriteHeader(rng);
                c.Count("header-rewritten");
            }
            n = _server.HandleRequest(in copied, _buffers.Readable, _buffers.Writable);
        }
        catch (Exception e)
        {
            c.Fail("HandleRequest threw " + e);
            return;
        }
        var requester = Requester.From(hasHeader ? headerCopy : [], request);
        if (_host.Check(requester, c.Count) is { } violation)
        {
            c.Fail(violation);
        }
        if (_server.Stats.Exceptions != exceptionsBefore)
        {
            c.Fail($"an internal exception was caught while handling opcode {opcode} (answered EIO): see the server log");
        }
        if (_buffers.CheckIntegrity() is { } damage)
        {
            c.Fail(damage);
            return;
        }
        if (n < 0 || n > capacity)
        {
            c.Fail($"HandleRequest returned {n} with {capacity} bytes of reply space");
            return;
        }
        bool noReply = opcode is (uint)FuseOpcode.Forget or (uint)FuseOpcode.BatchForget or (uint)FuseOpcode.Interrupt;
        if (hasHeader && lengthHonest && noReply)
        {
            if (n != 0)
            {
                c.Fail($"opcode {opcode} takes no reply but {n} bytes were written");
            }
            c.Count("no-reply");
            return;
        }
        if (n == 0)
        {
            if (capacity >= FuseOutHeader.Size && !(noReply && hasHeader))
            {
                c.Fail($"no reply ({request.Length}-byte request, opcode {opcode}, {capacity} bytes of reply space)");
                return;
            }
            c.Count("reply-space-too-small");
            return;
        }
        if (n < FuseOutHeader.Size)
        {
            c.Fail($"a reply of {n} bytes is shorter than fuse_out_header");
            return;
        }
        byte[] reply = _buffers.Reply(n);
        var header = MemoryMarshal.Read<FuseOutHeader>(reply);
        if (header.Len != (uint)n || header.Error > 0 || header.Error < -4095 || (header.Error != 0 && n != FuseOutHeader.Size))
        {
            c.Fail($"malformed out header: len {header.Len} (returned {n}), error {header.Error}");
            return;
        }
        if (request.Length >= 16 && header.Unique != unique)
        {
            c.Fail($"reply unique {header.Unique} for request {unique}");
            return;
        }
        c.Count(header.Error == 0 ? "ok" : "errno:" + (Errno)(-header.Error));
        if (!mutated && Enum.IsDefined(builtOpcode))
        {
            _answeredWellFormed.Add(builtOpcode);
        }
        if (header.Error == 0)
        {
            Learn((FuseOpcode)opcode, request, reply, requester, c);
        }
    }

    private T InServingGroups<T>(Func<T> make)
    {
        T? made = default;
        Exception? failure = null;
        var thread = new Thread(() =>
        {
            try
            {
                EnterGroups(_config.ServingGroups);
                made = make();
            }
            catch (Exception e)
            {
                failure = e;
            }
        });
        thread.Start();
        thread.Join();
        if (failure != null)
        {
            throw new InvalidOperationException("could not build the server in the serving groups", failure);
        }
        return made!;
    }

    /// <summary>Puts the calling thread (only) in <paramref name="groups"/>.</summary>
    private static void EnterGroups(uint[] groups)
    {
        fixed (uint* g = groups)
        {
            if (Libc.SetGroupsThread(groups.Length, g) != 0)
            {
                throw new PosixException("setgroups (this thread)", Libc.LastErrno);
            }
        }
    }

    /// <summary>What a guest remembers from a successful reply: new node ids, handles, names.</summary>
    private void Learn(FuseOpcode opcode, byte[] request, byte[] reply, Requester requester, FuzzCase c)
    {
        var payload = reply.AsSpan(FuseOutHeader.Size);
        switch (opcode)
        {
            case FuseOpcode.Lookup:
            case FuseOpcode.Mknod:
            case FuseOpcode.Mkdir:
            case FuseOpcode.Symlink:
            case FuseOpcode.Link:
            case FuseOpcode.Create:
            case FuseOpcode.Tmpfile:
                if (payload.Length >= FuseEntryOut.Size)
                {
                    var entry = MemoryMarshal.Read<FuseEntryOut>(payload);
                    if (entry.NodeId != 0)
                    {
                        _state.AddNode(entry.NodeId, entry.Attr.Mode);
                    }
                    if (entry.NodeId != 0)
                    {
                        _host.NoteNode(entry.NodeId, entry.Attr.Ino);
                    }
                    if (opcode == FuseOpcode.Tmpfile && request.Length >= 24
                        && _host.CheckUnnamed(requester, BinaryPrimitives.ReadUInt64LittleEndian(request.AsSpan(16)), entry.Attr.Ino, entry.Attr.Mode, entry.Attr.Uid, entry.Attr.Gid, c.Count) is { } violation)
                    {
                        c.Fail(violation);
                    }
                    if (opcode is FuseOpcode.Create or FuseOpcode.Tmpfile && payload.Length >= FuseEntryOut.Size + FuseOpenOut.Size)
                    {
                        var open = MemoryMarshal.Read<FuseOpenOut>(payload[FuseEntryOut.Size..]);
                        FuseGuestState.Add(_state.FileHandles, (entry.NodeId, open.Fh));
                    }
                    string? name = NameOf(request);
                    if (name != null && opcode != FuseOpcode.Lookup && !_state.Names.Contains(name))
                    {
                        FuseGuestState.Add(_state.Names, name);
                    }
                }
                break;
            case FuseOpcode.Open:
            case FuseOpcode.Opendir:
                if (payload.Length >= FuseOpenOut.Size && request.Length >= 24)
                {
                    ulong node = BinaryPrimitives.ReadUInt64LittleEndian(request.AsSpan(16));
                    var open = MemoryMarshal.Read<FuseOpenOut>(payload);
                    FuseGuestState.Add(opcode == FuseOpcode.Open ? _state.FileHandles : _state.DirHandles, (node, open.Fh));
                }
                break;
        }
    }

    private static string? NameOf(byte[] request)
    {
        // The entry-creating opcodes put the (last) name after a fixed argument; good enough: the last NUL-terminated run.
        int end = Array.LastIndexOf(request, (byte)0);
        if (end <= FuseInHeader.Size)
        {
            return null;
        }
        int start = Array.LastIndexOf(request, (byte)0, end - 1) + 1;
        start = Math.Max(start, FuseInHeader.Size);
        if (end - start is <= 0 or > 64)
        {
            return null;
        }
        string name = System.Text.Encoding.UTF8.GetString(request, start, end - start);
        return name.All(ch => char.IsAsciiLetterOrDigit(ch) || ch is '.' or '_' or '-') ? name : null;
    }

    /// <summary>A guest interrupts a lock wait after a while; the server must then answer it.</summary>
    private Timer ArmInterrupt(ulong target) => new(_ =>
    {
        var request = new byte[FuseInHeader.Size + FuseInterruptIn.Size];
        var h = new FuseInHeader { Len = (uint)request.Length, Opcode = (uint)FuseOpcode.Interrupt, Unique = target | (1UL << 63) };
        MemoryMarshal.Write(request, in h);
        MemoryMarshal.Write(request.AsSpan(FuseInHeader.Size), new FuseInterruptIn { Unique = target });
        Call(request, 64, out int _);
    }, null, 300, 300);

    public void CheckSentinel(FuzzCase? c)
    {
        var problems = SentinelTree.Compare(_sentinelBefore, _sentinel.Snapshot());
        if (problems.Count > 0)
        {
            string text = "a host path outside the share changed: " + string.Join("; ", problems);
            if (c != null)
            {
                c.Fail(text);
            }
            else
            {
                throw new InvalidOperationException(text);
            }
        }
    }

    /// <summary>Starts the share over: a DESTROY, the share wiped and filled again, a new INIT.</summary>
    private void Refresh()
    {
        _server.Reset();
        // Guest-made names need not be valid UTF-8, which .NET's own recursive delete cannot name.
        using (var find = System.Diagnostics.Process.Start("find", [_share, "-mindepth", "1", "-delete"]))
        {
            find.WaitForExit();
            if (find.ExitCode != 0)
            {
                throw new InvalidOperationException($"could not empty {_share} (find exited with {find.ExitCode})");
            }
        }
        Populate();
        Init();
        _host.Baseline();
    }

    /// <summary>After a reset the server holds nothing for the guest.</summary>
    public string? CheckReleasedAfterReset()
    {
        _server.Reset();
        var (used, _) = _server.FdUsage;
        if (used != 0 || _server.HandleCount != 0 || _server.NodeCount != 1)
        {
            return $"after a reset the server still holds {used} guest fd(s), {_server.HandleCount} handle(s), {_server.NodeCount} node(s)";
        }
        return null;
    }

    public long InternalErrorsLogged => Interlocked.Read(ref _internalErrorsLogged);

    public void Dispose()
    {
        _server.Dispose();
        _buffers.Dispose();
        _mount.Dispose();
    }
}
