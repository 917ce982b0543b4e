using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Vhostfsd.Fuzz.Engine;
using Vhostfsd.Fuzz.Oracles;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Vhostfsd.VhostUser;
using Vhostfsd.Virtqueue;

namespace Vhostfsd.Fuzz.Targets;

/// <summary>Fuzz target (d): the same FUSE requests as target (c), end to end — written into guest
/// memory by a vhost-user front-end, split over several descriptors with canaries between them,
/// and served by a real vhostfsd process (no sandbox, so that only the file system's own fences
/// stand between the guest and the sentinel tree). One chain in a hundred is made malformed on
/// purpose. Oracles: the daemon stays alive; every chain comes back in the used ring with a
/// length equal to its out header's (errno in range, the request's unique; 0 for FORGET, BATCH_FORGET
/// and INTERRUPT), within 10 s (a request still open after 300 ms is interrupted, as a guest would);
/// bytes between and around the writable buffers and the request itself are untouched; a malformed
/// chain breaks its queue (the err eventfd fires, the used ring stays where it was); after every
/// request the host-state oracles hold (<see cref="HostOracles"/>: the sentinel tree unchanged, every
/// change in the share one the requester was entitled to under the daemon's configuration); the
/// daemon logs no internal error; on disconnect it exits with 0. The daemon runs under a
/// <see cref="FuzzConfiguration"/>, started through setpriv in its supplementary groups.</summary>
public sealed unsafe class EndToEndTarget : IDisposable
{
    private const ushort QueueSize = 16;
    private const int SlotSize = 2 << 20;
    private const int Gap = 64;
    private const byte Canary = 0xC3;

    private readonly ScratchMount _mount;
    private readonly string _share;
    private readonly SentinelTree _sentinel;
    private readonly SortedDictionary<string, string> _sentinelBefore;
    private readonly FuseGuestState _state = new();
    private readonly MutationDictionary _dictionary = new();
    private readonly FuzzConfiguration _config;
    private readonly HostOracles _host;
    private Session? _session;

    public EndToEndTarget(FuzzConfiguration config)
    {
        _config = config;
        _mount = ScratchMount.Create(96);
        _share = Path.Combine(_mount.Path, "share");
        Directory.CreateDirectory(_share);
        _sentinel = SentinelTree.CreateBeside(_mount.Path);
        FuzzShare.Populate(_share, Path.Combine(_mount.Path, "outside"));
        _sentinelBefore = _sentinel.Snapshot();
        _host = new HostOracles(_share, _sentinel, config.Rules);
        _state.Names.AddRange(FuzzShare.Names);
        _state.Names.AddRange(["n1", "n2"]);
        foreach (string name in FuzzShare.Names.Concat(["outside", "..", "."]))
        {
            _dictionary.AddName(name);
        }
    }

    /// <summary>Daemons started (one more after each deliberately broken queue).</summary>
    public int Sessions { get; private set; }

    /// <summary>Exit codes of the daemons that ended.</summary>
    public List<int> ExitCodes { get; } = new();

    private sealed class Session : IDisposable
    {
        public required DaemonProcess Daemon;
        public required VhostUserFrontend Frontend;
        public required VhostUserTestGuest Guest;
        public required EventFd[] Errs;

        public void Dispose()
        {
            Frontend.Dispose();
            Guest.Dispose();
            foreach (var e in Errs)
            {
                e.Dispose();
            }
            Daemon.Dispose();
        }
    }

    private Session Start()
    {
        var args = new List<string> { "--sandbox=none", "--log-level=warn" };
        args.AddRange(_config.DaemonArgs());
        var daemon = DaemonProcess.StartVhostfsdUnder(_config.DaemonWrapper(), _share, args.ToArray());
        var guest = new VhostUserTestGuest(queueCount: 2, QueueSize, SlotSize, eventIdx: true, indirect: true);
        var errs = new[] { EventFd.Create(nonBlocking: true), EventFd.Create(nonBlocking: true) };
        VhostUserFrontend frontend;
        try
        {
            frontend = VhostUserFrontend.Connect(daemon.SocketPath, TimeSpan.FromSeconds(20));
            frontend.ReplyTimeout = TimeSpan.FromSeconds(20);
            frontend.Initialize(queueCount: 2);
            frontend.Start(guest.RingFeatures, guest.MemoryRegions, guest.Setups);
            frontend.SetVringErr(0, errs[0].Fd);
            frontend.SetVringErr(1, errs[1].Fd);
        }
        catch
        {
            guest.Dispose();
            errs[0].Dispose();
            errs[1].Dispose();
            string output = daemon.Output;
            daemon.Dispose();
            throw new InvalidOperationException("could not start a session with vhostfsd:\n" + output);
        }
        Sessions++;
        var session = new Session { Daemon = daemon, Frontend = frontend, Guest = guest, Errs = errs };
        _session = session;
        _state.Clear();
        var init = new byte[FuseInHeader.Size + FuseInitIn.Size];
        MemoryMarshal.Write(init, new FuseInHeader { Len = (uint)init.Length, Opcode = (uint)FuseOpcode.Init, Unique = 1 });
        // Every flag, SECURITY_CTX and CREATE_SUPP_GROUP among them.
        MemoryMarshal.Write(init.AsSpan(FuseInHeader.Size), new FuseInitIn { Major = 7, Minor = FuseConstants.KernelMinorVersion, MaxReadahead = 131072, Flags = 0xFFFF_FFFF, Flags2 = 0x7 });
        if (Roundtrip(session, 1, init, [init.Length], [4096], out _, out byte[] reply) != RoundtripResult.Answered || BinaryPrimitives.ReadInt32LittleEndian(reply.AsSpan(4)) != 0)
        {
            throw new InvalidOperationException("INIT failed:\n" + daemon.Output);
        }
        _state.Granted(reply);
        _host.ForgetNodes();
        FuzzShare.LookUpFixtures(request =>
            Roundtrip(session, 1, request, [request.Length], [4096], out uint used, out byte[] entryReply) == RoundtripResult.Answered
                ? (entryReply, (int)used)
                : (null, 0), _state, _host);
        return session;
    }

    /// <summary>Ends the current session the way a VMM does (closing the socket) and records the exit code.</summary>
    public string? EndSession()
    {
        var session = _session;
        if (session == null)
        {
            return null;
        }
        _session = null;
        session.Frontend.Dispose();
        string? problem = null;
        if (!session.Daemon.WaitForExit(TimeSpan.FromSeconds(20)))
        {
            problem = "the daemon did not exit within 20 s of the disconnect:\n" + session.Daemon.Output;
        }
        else
        {
            ExitCodes.Add(session.Daemon.ExitCode);
            if (session.Daemon.ExitCode != 0)
            {
                problem = $"the daemon exited with {session.Daemon.ExitCode} after the disconnect:\n{session.Daemon.Output}";
            }
        }
        if (session.Daemon.Output.Contains("internal error", StringComparison.Ordinal))
        {
            problem ??= "the daemon logged an internal error:\n" + session.Daemon.Output;
        }
        session.Dispose();
        return problem;
    }

    private enum RoundtripResult
    {
        Answered,
        Broken,
        Lost,
    }

    private ulong _interruptUnique = 1UL << 62;

    /// <summary>Places the request (split into <paramref name="readable"/> pieces) and reply space (in
    /// <paramref name="writable"/> pieces) in queue <paramref name="q"/>'s slot 0, canaries in between, and
    /// waits for the used element. <paramref name="corrupt"/> makes the chain malformed before publishing.</summary>
    private RoundtripResult Roundtrip(Session s, int q, byte[] request, int[] readable, int[] writable, out uint usedLength, out byte[] reply,
        bool corrupt = false, ulong unique = 0)
    {
        var guest = s.Guest;
        var queue = guest.Queue(q);
        ulong inBase = guest.SlotGpa(q, 0, writable: false);
        ulong outBase = guest.SlotGpa(q, 0, writable: true);
        int inTotal = Sum(readable) + Gap * (readable.Length + 1);
        int outTotal = Sum(writable) + Gap * (writable.Length + 1);
        var inArea = guest.Bytes(inBase, inTotal);
        var outArea = guest.Bytes(outBase, outTotal);
        inArea.Fill(Canary);
        outArea.Fill(Canary);
        var rd = new (ulong, uint)[readable.Length];
        var wr = new (ulong, uint)[writable.Length];
        int at = Gap, copied = 0;
        byte[] bytes = request;
        for (int i = 0; i < readable.Length; i++)
        {
            bytes.AsSpan(copied, readable[i]).CopyTo(inArea[at..]);
            rd[i] = (inBase + (ulong)at, (uint)readable[i]);
            copied += readable[i];
            at += readable[i] + Gap;
        }
        at = Gap;
        for (int i = 0; i < writable.Length; i++)
        {
            outArea.Slice(at, writable[i]).Fill(0x5A);
            wr[i] = (outBase + (ulong)at, (uint)writable[i]);
            at += writable[i] + Gap;
        }
        int head = queue.TryAdd(rd, wr);
        if (head < 0)
        {
            throw new InvalidOperationException("no free descriptors (a previous chain was never returned)");
        }
        if (corrupt)
        {
            Corrupt(guest, queue, (ushort)head);
        }
        ushort usedBefore = BinaryPrimitives.ReadUInt16LittleEndian(guest.Bytes(queue.UsedGpa + 2, 2));
        if (queue.PublishAndCheckKick())
        {
            guest.Kick(q).Signal();
        }
        long start = Environment.TickCount64;
        bool interrupted = false;
        usedLength = 0;
        reply = [];
        while (true)
        {
            if (queue.TryReapUsed(out ushort usedHead, out usedLength))
            {
                if (usedHead != head)
                {
                    throw new InvalidOperationException($"used head {usedHead}, expected {head}");
                }
                break;
            }
            if (s.Errs[q].Consume() > 0)
            {
                ushort usedNow = BinaryPrimitives.ReadUInt16LittleEndian(guest.Bytes(queue.UsedGpa + 2, 2));
                return usedNow == usedBefore ? RoundtripResult.Broken : RoundtripResult.Lost;
            }
            long waited = Environment.TickCount64 - start;
            if (waited > 10_000 || s.Daemon.HasExited)
            {
                return RoundtripResult.Lost;
            }
            if (waited > 300 && !interrupted && q != 0 && unique != 0)
            {
                interrupted = true;
                Interrupt(s, unique);
            }
            guest.WaitCall(q, 20);
        }
        reply = new byte[Math.Min(usedLength, (uint)Sum(writable))];
        int got = 0;
        at = Gap;
        for (int i = 0; i < writable.Length && got < reply.Length; i++)
        {
            int n = Math.Min(writable[i], reply.Length - got);
            outArea.Slice(at, n).CopyTo(reply.AsSpan(got));
            got += n;
            at += writable[i] + Gap;
        }
        // Canaries: between and around every buffer; the request bytes as they were.
        at = 0;
        foreach (int length in writable)
        {
            if (outArea.Slice(at, Gap).ContainsAnyExcept(Canary))
            {
                _damage = $"a canary before writable buffer at offset {at + Gap} was overwritten";
            }
            at += Gap + length;
        }
        if (outArea.Slice(at, Gap).ContainsAnyExcept(Canary))
        {
            _damage = "the canary after the last writable buffer was overwritten";
        }
        copied = 0;
        at = 0;
        foreach (int length in readable)
        {
            if (inArea.Slice(at, Gap).ContainsAnyExcept(Canary) || !inArea.Slice(at + Gap, length).SequenceEqual(bytes.AsSpan(copied, length)))
            {
                _damage = "a request buffer or the canary before it was written to";
            }
            copied += length;
            at += Gap + length;
        }
        return RoundtripResult.Answered;
    }

    private string? _damage;

    private static int Sum(int[] values)
    {
        int total = 0;
        foreach (int v in values)
        {
            total += v;
        }
        return total;
    }

    /// <summary>Makes the chain at <paramref name="head"/> malformed: a readable buffer after a writable
    /// one, or a buffer outside guest memory. Needs the chain to be direct (no indirect table).</summary>
    private static void Corrupt(VhostUserTestGuest guest, DriverQueue queue, ushort head)
    {
        var desc = MemoryMarshal.Read<VirtqDesc>(guest.Bytes(queue.DescGpa + (ulong)head * 16, 16));
        if ((desc.Flags & VirtqDesc.FlagIndirect) != 0)
        {
            ulong table = desc.Addr;
            var first = MemoryMarshal.Read<VirtqDesc>(guest.Bytes(table, 16));
            first.Addr = 0x10;  // below guest memory (it starts at GuestPhysBase)
            MemoryMarshal.Write(guest.Bytes(table, 16), in first);
            return;
        }
        desc.Addr = 0x10;
        MemoryMarshal.Write(guest.Bytes(queue.DescGpa + (ulong)head * 16, 16), in desc);
    }

    private void Interrupt(Session s, ulong target)
    {
        // INTERRUPT goes on hiprio; it has no reply, the chain comes back with 0 bytes.
        var guest = s.Guest;
        var queue = guest.Queue(0);
        if (queue.FreeDescriptors < 2)
        {
            return;
        }
        var request = new byte[FuseInHeader.Size + FuseInterruptIn.Size];
        MemoryMarshal.Write(request, new FuseInHeader { Len = (uint)request.Length, Opcode = (uint)FuseOpcode.Interrupt, Unique = _interruptUnique++ });
        MemoryMarshal.Write(request.AsSpan(FuseInHeader.Size), new FuseInterruptIn { Unique = target });
        ulong gpa = guest.SlotGpa(0, 1, writable: false);
        request.CopyTo(guest.Bytes(gpa, request.Length));
        if (queue.TryAdd([(gpa, (uint)request.Length)], []) >= 0 && queue.PublishAndCheckKick())
        {
            guest.Kick(0).Signal();
        }
        // Reaped by the next hiprio use or ignored: hiprio chains come back with 0 bytes.
    }

    public void RunCase(FuzzCase c)
    {
        var rng = c.Rng;
        var s = _session ?? Start();
        // Reap stray hiprio completions (interrupts).
        while (s.Guest.Queue(0).TryReapUsed(out _, out _))
        {
        }
        if (s.Daemon.HasExited)
        {
            c.Fail($"the daemon died (exit {s.Daemon.ExitCode}):\n{s.Daemon.Output}");
            _session = null;
            s.Dispose();
            return;
        }
        var seed = FuseSeeds.Build(rng, _state, out _, out int replyHint);
        c.SeedName = seed.Name;
        bool mutated = !rng.OneIn(4);
        byte[] request = mutated ? Mutator.Mutate(rng, seed, null, _dictionary, c) : seed.Bytes;
        c.Input = request;
        if (mutated && request.Length >= 4 && rng.Next(10) < 7)
        {
            Mutator.PatchU32(request, 0, (uint)request.Length);
        }
        if (request.Length > SlotSize - 8 * Gap)
        {
            request = request.AsSpan(0, SlotSize - 8 * Gap).ToArray();
        }
        uint opcode = request.Length >= 8 ? BinaryPrimitives.ReadUInt32LittleEndian(request.AsSpan(4)) : 0;
        ulong unique = request.Length >= 16 ? BinaryPrimitives.ReadUInt64LittleEndian(request.AsSpan(8)) : 0;
        bool noReply = opcode is (uint)FuseOpcode.Forget or (uint)FuseOpcode.BatchForget or (uint)FuseOpcode.Interrupt;
        int q = noReply ? (rng.OneIn(5) ? 1 : 0) : (rng.OneIn(20) ? 0 : 1);
        int capacity = rng.Next(10) < 7 ? Math.Min(replyHint + rng.Next(0, 4096), SlotSize - 8 * Gap)
            : rng.Pick<int>([0, 8, 16, 17, 100, 144, rng.Next(0, 300)]);
        int[] readable = Pieces(rng, request.Length, allowEmpty: request.Length == 0);
        int[] writable = capacity == 0 ? [] : Pieces(rng, capacity, allowEmpty: false);
        if (readable.Length + writable.Length > VhostUserTestGuest.IndirectEntries)
        {
            writable = [capacity];
        }
        bool corrupt = rng.OneIn(100);
        _damage = null;
        var result = Roundtrip(s, q, request, readable, writable, out uint used, out byte[] reply, corrupt, unique);
        // The daemon has finished the request (or broken its queue): judge what it did to the host.
        var requester = Requester.From(request, request);
        if (_host.Check(requester, c.Count) is { } violation)
        {
            c.Fail(violation);
        }
        if (corrupt)
        {
            if (result == RoundtripResult.Broken)
            {
                c.Count("malformed-chain:queue-broken");
                if (EndSession() is { } problem)
                {
                    c.Fail(problem);
                }
            }
            else
            {
                c.Fail($"a malformed chain got {result} instead of breaking its queue");
                EndSession();
            }
            return;
        }
        if (result != RoundtripResult.Answered)
        {
            c.Fail($"opcode {opcode} on queue {q} was not answered ({result}); daemon alive: {!s.Daemon.HasExited}\n{s.Daemon.Output}");
            EndSession();
            return;
        }
        if (_damage != null)
        {
            c.Fail(_damage);
        }
        if (used > (uint)capacity)
        {
            c.Fail($"used length {used} exceeds the {capacity} writable bytes");
            return;
        }
        if (used == 0)
        {
            c.Count(noReply || capacity < FuseOutHeader.Size || q == 0 ? "no-reply" : "unanswered-with-room");
            if (!noReply && capacity >= FuseOutHeader.Size && q == 1 && request.Length >= FuseInHeader.Size)
            {
                c.Fail($"a {request.Length}-byte request (opcode {opcode}) came back with no reply although {capacity} bytes were offered");
            }
            return;
        }
        var header = MemoryMarshal.Read<FuseOutHeader>(reply);
        if (header.Len != used || header.Error > 0 || header.Error < -4095 || (header.Error != 0 && used != FuseOutHeader.Size)
            || (request.Length >= 16 && header.Unique != unique))
        {
            c.Fail($"malformed reply: used {used}, out header len {header.Len} error {header.Error} unique {header.Unique} (request unique {unique})");
            return;
        }
        c.Count(header.Error == 0 ? "ok" : "errno:" + (Errno)(-header.Error));
        if (header.Error == 0)
        {
            Learn((FuseOpcode)opcode, request, reply, requester, c);
        }
    }

    private static int[] Pieces(FuzzRng rng, int total, bool allowEmpty)
    {
        int parts = rng.OneIn(2) ? 1 : rng.Next(2, 4);
        if (total < parts)
        {
            return allowEmpty ? [total] : [Math.Max(total, 1)];
        }
        var cuts = new List<int> { 0, total };
        while (cuts.Count < parts + 1)
        {
            int cut = rng.Next(1, total);
            if (!cuts.Contains(cut))
            {
                cuts.Add(cut);
            }
        }
        cuts.Sort();
        var pieces = new int[parts];
        for (int i = 0; i < parts; i++)
        {
            pieces[i] = cuts[i + 1] - cuts[i];
        }
        return pieces;
    }

    private void Learn(FuseOpcode opcode, byte[] request, byte[] reply, Requester requester, FuzzCase c)
    {
        var payload = reply.AsSpan(FuseOutHeader.Size);
        if (opcode is FuseOpcode.Lookup or FuseOpcode.Mkdir or FuseOpcode.Mknod or FuseOpcode.Symlink or FuseOpcode.Link or FuseOpcode.Create
            or FuseOpcode.Tmpfile && payload.Length >= FuseEntryOut.Size)
        {
            var entry = MemoryMarshal.Read<FuseEntryOut>(payload);
            _state.AddNode(entry.NodeId, entry.Attr.Mode);
            if (entry.NodeId != 0)
            {
                _host.NoteNode(entry.NodeId, entry.Attr.Ino);
            }
            if (opcode == FuseOpcode.Tmpfile && request.Length >= 24
                && _host.CheckUnnamed(requester, BinaryPrimitives.ReadUInt64LittleEndian(request.AsSpan(16)), entry.Attr.Ino, entry.Attr.Mode, entry.Attr.Uid, entry.Attr.Gid, c.Count) is { } violation)
            {
                c.Fail(violation);
            }
            if (opcode == FuseOpcode.Create && payload.Length >= FuseEntryOut.Size + FuseOpenOut.Size)
            {
                FuseGuestState.Add(_state.FileHandles, (entry.NodeId, MemoryMarshal.Read<FuseOpenOut>(payload[FuseEntryOut.Size..]).Fh));
            }
        }
        else if (opcode is FuseOpcode.Open or FuseOpcode.Opendir && payload.Length >= FuseOpenOut.Size && request.Length >= 24)
        {
            ulong node = BinaryPrimitives.ReadUInt64LittleEndian(request.AsSpan(16));
            FuseGuestState.Add(opcode == FuseOpcode.Open ? _state.FileHandles : _state.DirHandles, (node, MemoryMarshal.Read<FuseOpenOut>(payload).Fh));
        }
    }

    public string? CheckSentinel()
    {
        var problems = SentinelTree.Compare(_sentinelBefore, _sentinel.Snapshot());
        return problems.Count == 0 ? null : "a host path outside the share changed: " + string.Join("; ", problems);
    }

    public void Dispose()
    {
        _session?.Dispose();
        _mount.Dispose();
    }
}
