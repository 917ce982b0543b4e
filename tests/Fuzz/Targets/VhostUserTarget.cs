using System.Buffers.Binary;
using Vhostfsd.Fuzz.Engine;
using Vhostfsd.Logging;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Vhostfsd.VhostUser;
using Vhostfsd.Virtqueue;

namespace Vhostfsd.Fuzz.Targets;

/// <summary>Fuzz target (a): vhost-user message sequences against <see cref="VhostUserBackend"/> over a
/// socketpair. A case starts from QEMU's handshake for a 2-queue device (features, protocol features,
/// owner, memory table or ADD_MEM_REG, per ring num/base/addr/kick/call/err/enable, config, status,
/// and extra requests: REM/ADD_MEM_REG, GET_VRING_BASE, RESET_DEVICE, SET_CONFIG, unknown ones), then
/// mutates it: message bytes (header fields, sizes, memory tables with overlapping, wrapping or
/// oversized regions, ring addresses outside memory, queue sizes not a power of two or above 32768),
/// fd counts and kinds (none, extra, an fd of the wrong kind, a memfd smaller than its region, fds
/// spread over several sendmsg calls), and the order of messages. It sends the sequence, kicks each
/// ring once, and probes with GET_FEATURES.
/// Oracles: the back-end loop never throws, ends within the deadline once the front-end closes, and
/// ends a session it closed with an error line; every reply has the reply flag and version 1; an
/// intact framing gets the probe answered or the connection closed (never silence); afterwards no
/// worker thread runs, no fd is left open and none of the guest's memory stays mapped.</summary>
public sealed class VhostUserTarget
{
    private const int QueueCount = 2;

    private enum FdKind
    {
        Region,
        SecondRegion,
        ShortMemfd,
        Kick0,
        Call0,
        Err0,
        Kick1,
        Call1,
        Err1,
        Pipe,
        Socket,
        DevNull,
    }

    private sealed record Message(Seed Seed, FdKind[] Fds);

    private readonly Dictionary<int, string> _fdBaseline;

    public VhostUserTarget()
    {
        // Snapshot, not Current: the runtime's lazily opened fds (the SIGCHLD pipe pair, at the
        // first Process.Start of any test in this process) would otherwise show up as a leak
        // of whichever case was running when they appeared.
        _fdBaseline = ProcessFds.Snapshot();
    }

    public void RunCase(FuzzCase c)
    {
        var rng = c.Rng;
        ushort queueSize = rng.Pick<ushort>([8, 64, 256]);
        var guest = new VhostUserTestGuest(QueueCount, queueSize, slotSize: 256, eventIdx: rng.Coin(), indirect: rng.Coin());
        var second = guest.AddRegion(2 << 20);
        var shortMemfd = MemFd.Create(guest.MemFdName, 4096);
        var (pipeRead, pipeWrite) = Pipe();
        var (sockA, sockB) = UnixSocket.Pair();
        var devNull = OpenDevNull();
        var err0 = EventFd.Create(nonBlocking: true);
        var err1 = EventFd.Create(nonBlocking: true);
        var device = new VhostUserTestDevice(queueCount: QueueCount, maxQueueSize: 1024);
        var harness = new VhostUserBackendHarness(device, new VhostUserBackendOptions { InFlightDrainTimeout = TimeSpan.FromSeconds(1) });
        var replies = new ReplyReader(harness.Frontend.Channel);
        try
        {
            var messages = Handshake(rng, guest, second, queueSize);
            c.SeedName = $"handshake/{messages.Count} messages/q{queueSize}";
            bool framingIntact = Mutate(c, messages);
            int Fd(FdKind kind) => kind switch
            {
                FdKind.Region => guest.MemoryRegions[0].Fd,
                FdKind.SecondRegion => second.Fd,
                FdKind.ShortMemfd => shortMemfd.Fd,
                FdKind.Kick0 => guest.Kick(0).Fd,
                FdKind.Call0 => guest.Call(0).Fd,
                FdKind.Err0 => err0.Fd,
                FdKind.Kick1 => guest.Kick(1).Fd,
                FdKind.Call1 => guest.Call(1).Fd,
                FdKind.Err1 => err1.Fd,
                FdKind.Pipe => pipeRead.Fd,
                FdKind.Socket => sockA.Fd,
                _ => devNull.Fd,
            };
            var socket = harness.Frontend.Channel.Socket;
            // GET_FEATURES requests in the sequence: each is answered (or the session closes), so the
            // probe's answer is the one after them all — the reply reader may not have read theirs yet.
            long featureRequestsSent = 0;
            foreach (var message in messages)
            {
                if (harness.HasEnded || replies.Closed)
                {
                    break;
                }
                int[] fds = Array.ConvertAll(message.Fds, Fd);
                if (!SendSplit(rng, socket, message.Seed.Bytes, fds))
                {
                    break;
                }
                if (message.Seed.Bytes.Length >= VhostUserHeader.Size && BinaryPrimitives.ReadUInt32LittleEndian(message.Seed.Bytes) == (uint)VhostUserRequest.GetFeatures)
                {
                    featureRequestsSent++;
                }
            }
            if (!harness.HasEnded && !replies.Closed)
            {
                var probe = new byte[VhostUserHeader.Size];
                new VhostUserHeader((uint)VhostUserRequest.GetFeatures, VhostUserHeaderFlags.Version1, 0).Write(probe);
                // With the framing broken, the requests the back-end saw are unknown: any GET_FEATURES reply
                // beyond those already read stands for the probe, which may then not be the last one handled.
                long probeReply = framingIntact ? featureRequestsSent + 1 : replies.Count(VhostUserRequest.GetFeatures) + 1;
                if (SendSplit(rng, socket, probe, []))
                {
                    bool answered = replies.WaitFor(VhostUserRequest.GetFeatures, probeReply, TimeSpan.FromSeconds(framingIntact ? 5 : 0.2));
                    if (answered)
                    {
                        // With the framing intact everything before the probe has been handled: the rings are in their final state.
                        c.Count("probe-answered");
                        KickRings(c, guest, harness.Backend, err0, err1, framingIntact);
                    }
                    else if (replies.Closed)
                    {
                        c.Count("closed");
                    }
                    else if (framingIntact)
                    {
                        c.Fail("the back-end neither answered GET_FEATURES within 5 s nor closed the connection");
                    }
                    else
                    {
                        c.Count("desynchronised");
                    }
                }
                else
                {
                    c.Count("closed");
                }
            }
            else
            {
                c.Count("closed");
            }
        }
        finally
        {
            // The front-end goes away; the session must end on its own.
            harness.Frontend.Channel.Socket.ShutdownBoth();
            VhostUserSessionEnd? end = null;
            try
            {
                end = harness.WaitForEnd(TimeSpan.FromSeconds(15));
            }
            catch (Exception e)
            {
                c.Fail("the back-end loop did not end cleanly: " + e);
            }
            replies.Join();
            if (replies.Problem is { } bad)
            {
                c.Fail(bad);
            }
            if (end == VhostUserSessionEnd.ProtocolError)
            {
                c.Count("session:protocol-error");
                bool logged = false;
                foreach (var e in harness.Log.Events)
                {
                    logged |= e.Level == LogEventLevel.Error && e.RenderMessage().Contains("closing the connection", StringComparison.Ordinal);
                }
                if (!logged)
                {
                    c.Fail("the back-end closed the session for a protocol error without saying so");
                }
            }
            else if (end != null)
            {
                c.Count("session:disconnected");
            }
            foreach (var ring in harness.Backend.Vrings)
            {
                if (ring.IsProcessing)
                {
                    c.Fail($"vring {ring.Index} still has a worker after the session ended");
                }
            }
            harness.Dispose();
            pipeRead.Dispose();
            pipeWrite.Dispose();
            sockA.Dispose();
            sockB.Dispose();
            devNull.Dispose();
            err0.Dispose();
            err1.Dispose();
        }
        string name = guest.MemFdName;
        guest.Dispose();
        shortMemfd.Dispose();
        CheckNothingLeft(c, name);
    }

    private void CheckNothingLeft(FuzzCase c, string memfdName)
    {
        foreach (string line in File.ReadLines("/proc/self/maps"))
        {
            if (line.Contains(memfdName, StringComparison.Ordinal))
            {
                c.Fail("guest memory is still mapped after the session: " + line);
                break;
            }
        }
        var leaked = ProcessFds.Lingering(_fdBaseline);
        if (leaked.Count > 0)
        {
            c.Fail("fds left open after the session: " + string.Join(", ", leaked.Select(kv => $"{kv.Key} -> {kv.Value}")));
            // Adopt them so that one leak is reported once.
            foreach (var (fd, target) in ProcessFds.Current())
            {
                _fdBaseline[fd] = target;
            }
        }
    }

    // ---- the handshake ----

    private static Seed Msg(string name, VhostUserRequest request, bool needReply, Action<SeedBuilder>? payload = null)
    {
        var b = new SeedBuilder();
        b.U32("request", (uint)request, FieldKind.Opcode).U32("flags", 1u | (needReply ? 8u : 0u), FieldKind.Flags).U32("size", 0, FieldKind.Length);
        payload?.Invoke(b);
        var seed = b.Build(name);
        Mutator.PatchU32(seed.Bytes, 8, (uint)(seed.Bytes.Length - VhostUserHeader.Size));
        return seed;
    }

    private static void Region(SeedBuilder b, string prefix, MemoryRegionDescription d) =>
        b.U64(prefix + ".gpa", d.GuestPhysAddr, FieldKind.Address).U64(prefix + ".size", d.MemorySize, FieldKind.Length)
         .U64(prefix + ".uaddr", d.UserAddr, FieldKind.Address).U64(prefix + ".mmap_offset", d.MmapOffset, FieldKind.Offset);

    private List<Message> Handshake(FuzzRng rng, VhostUserTestGuest guest, VhostUserMemoryRegion second, ushort queueSize)
    {
        var list = new List<Message>();
        bool ack = rng.Coin();
        var protocol = VhostUserProtocolFeatures.Mq | VhostUserProtocolFeatures.ConfigureMemSlots | VhostUserProtocolFeatures.Status
            | VhostUserProtocolFeatures.Config | VhostUserProtocolFeatures.BackendReq | VhostUserProtocolFeatures.ResetDevice
            | (ack ? VhostUserProtocolFeatures.ReplyAck : 0);
        void Add(Seed seed, params FdKind[] fds) => list.Add(new Message(seed, fds));
        Add(Msg("GET_FEATURES", VhostUserRequest.GetFeatures, false));
        Add(Msg("SET_FEATURES", VhostUserRequest.SetFeatures, false, b => b.U64("features", guest.RingFeatures | VirtioFeatures.ProtocolFeatures, FieldKind.Flags)));
        Add(Msg("GET_PROTOCOL_FEATURES", VhostUserRequest.GetProtocolFeatures, false));
        Add(Msg("SET_PROTOCOL_FEATURES", VhostUserRequest.SetProtocolFeatures, false, b => b.U64("protocol", (ulong)protocol, FieldKind.Flags)));
        Add(Msg("GET_QUEUE_NUM", VhostUserRequest.GetQueueNum, false));
        Add(Msg("SET_OWNER", VhostUserRequest.SetOwner, ack));
        Add(Msg("GET_MAX_MEM_SLOTS", VhostUserRequest.GetMaxMemSlots, false));
        var first = guest.MemoryRegions[0].Description;
        if (rng.Coin())
        {
            bool both = rng.Coin();
            Add(Msg("SET_MEM_TABLE", VhostUserRequest.SetMemTable, ack, b =>
            {
                b.U32("nregions", both ? 2u : 1u, FieldKind.Count).U32("padding", 0);
                Region(b, "r0", first);
                if (both)
                {
                    Region(b, "r1", second.Description);
                }
            }), both ? [FdKind.Region, FdKind.SecondRegion] : [FdKind.Region]);
        }
        else
        {
            Add(Msg("ADD_MEM_REG", VhostUserRequest.AddMemReg, ack, b => { b.U64("padding", 0); Region(b, "r", first); }), FdKind.Region);
        }
        for (uint q = 0; q < QueueCount; q++)
        {
            var setup = guest.Setups[q];
            uint index = q;
            Add(Msg($"SET_VRING_NUM{q}", VhostUserRequest.SetVringNum, ack, b => b.U32("index", index, FieldKind.Index).U32("num", queueSize, FieldKind.Index)));
            Add(Msg($"SET_VRING_BASE{q}", VhostUserRequest.SetVringBase, ack, b => b.U32("index", index, FieldKind.Index).U32("num", 0, FieldKind.Index)));
            Add(Msg($"SET_VRING_ADDR{q}", VhostUserRequest.SetVringAddr, ack, b => b.U32("index", index, FieldKind.Index).U32("flags", 0, FieldKind.Flags)
                .U64("desc", setup.DescUserAddr, FieldKind.Address).U64("used", setup.UsedUserAddr, FieldKind.Address)
                .U64("avail", setup.AvailUserAddr, FieldKind.Address).U64("log", 0, FieldKind.Address)));
            Add(Msg($"SET_VRING_KICK{q}", VhostUserRequest.SetVringKick, ack, b => b.U64("index|flags", index, FieldKind.Index)), q == 0 ? FdKind.Kick0 : FdKind.Kick1);
            Add(Msg($"SET_VRING_CALL{q}", VhostUserRequest.SetVringCall, ack, b => b.U64("index|flags", index, FieldKind.Index)), q == 0 ? FdKind.Call0 : FdKind.Call1);
            Add(Msg($"SET_VRING_ERR{q}", VhostUserRequest.SetVringErr, ack, b => b.U64("index|flags", index, FieldKind.Index)), q == 0 ? FdKind.Err0 : FdKind.Err1);
            Add(Msg($"SET_VRING_ENABLE{q}", VhostUserRequest.SetVringEnable, ack, b => b.U32("index", index, FieldKind.Index).U32("num", 1, FieldKind.Integer)));
        }
        Add(Msg("GET_CONFIG", VhostUserRequest.GetConfig, false, b => b.U32("offset", 0, FieldKind.Offset).U32("size", 40, FieldKind.Length).U32("flags", 0, FieldKind.Flags).Zeros(40)));
        Add(Msg("SET_STATUS", VhostUserRequest.SetStatus, ack, b => b.U64("status", 0xF, FieldKind.Flags)));
        // Extra requests a VMM sends later (hotplug, stop, reset), a few of them.
        int extras = rng.Next(0, 4);
        for (int i = 0; i < extras; i++)
        {
            switch (rng.Next(9))
            {
                case 0: Add(Msg("ADD_MEM_REG", VhostUserRequest.AddMemReg, ack, b => { b.U64("padding", 0); Region(b, "r", second.Description); }), FdKind.SecondRegion); break;
                case 1: Add(Msg("REM_MEM_REG", VhostUserRequest.RemMemReg, ack, b => { b.U64("padding", 0); Region(b, "r", rng.Coin() ? second.Description : first); })); break;
                case 2: Add(Msg("GET_VRING_BASE", VhostUserRequest.GetVringBase, false, b => b.U32("index", (uint)rng.Next(QueueCount), FieldKind.Index).U32("num", 0))); break;
                case 3: Add(Msg("RESET_DEVICE", VhostUserRequest.ResetDevice, ack)); break;
                case 4: Add(Msg("SET_CONFIG", VhostUserRequest.SetConfig, ack, b => b.U32("offset", 0, FieldKind.Offset).U32("size", 4, FieldKind.Length).U32("flags", 0, FieldKind.Flags).Zeros(4))); break;
                case 5: Add(Msg("GET_STATUS", VhostUserRequest.GetStatus, false)); break;
                case 6: Add(Msg("SET_BACKEND_REQ_FD", VhostUserRequest.SetBackendReqFd, ack), FdKind.Socket); break;
                case 7: Add(Msg("SET_LOG_BASE", VhostUserRequest.SetLogBase, ack, b => b.U64("size", 4096, FieldKind.Length).U64("offset", 0, FieldKind.Offset)), FdKind.ShortMemfd); break;
                default: Add(Msg("UNKNOWN", (VhostUserRequest)rng.Next(41, 300), ack, b => b.Zeros(rng.Next(0, 64)))); break;
            }
        }
        return list;
    }

    private static readonly MutationDictionary Dictionary = CreateDictionary();

    private static MutationDictionary CreateDictionary()
    {
        var d = new MutationDictionary();
        foreach (ulong a in new ulong[] { VhostUserTestGuest.GuestPhysBase, VhostUserTestGuest.UserBase, VhostUserTestGuest.GuestPhysBase + (2 << 20),
            VhostUserTestGuest.UserBase + (2 << 20) - 8, VhostUserTestGuest.UserBase + (4 << 20), ulong.MaxValue - (2 << 20) + 1 })
        {
            d.Add(FieldKind.Address, a);
        }
        foreach (ulong size in new ulong[] { 2 << 20, 4 << 20, 4096, 1UL << 40, ulong.MaxValue })
        {
            d.Add(FieldKind.Length, size);
        }
        foreach (ulong num in new ulong[] { 0, 3, 100, 1024, 2048, 32768, 32769, 65536 })
        {
            d.Add(FieldKind.Index, num);
        }
        foreach (ulong offset in new ulong[] { 4096, 2 << 20, (2 << 20) - 4096, 1UL << 62 })
        {
            d.Add(FieldKind.Offset, offset);
        }
        d.Add(FieldKind.Index, 0x100); // the no-fd flag
        d.Add(FieldKind.Index, 0x1FF);
        d.Add(FieldKind.Count, 8);
        d.Add(FieldKind.Count, 9);
        return d;
    }

    /// <summary>Mutates the sequence in place; returns whether every header still declares its real payload size.</summary>
    private static bool Mutate(FuzzCase c, List<Message> messages)
    {
        var rng = c.Rng;
        if (rng.OneIn(10))
        {
            return true;
        }
        int edits = rng.Next(1, 4);
        for (int e = 0; e < edits; e++)
        {
            int i = rng.Next(messages.Count);
            var m = messages[i];
            switch (rng.Next(10))
            {
                case <= 4:
                {
                    c.Mutations.Add($"[{m.Seed.Name}]");
                    byte[] bytes = Mutator.Mutate(rng, m.Seed, null, Dictionary, c);
                    if (bytes.Length >= VhostUserHeader.Size && rng.Next(10) < 8)
                    {
                        Mutator.PatchU32(bytes, 8, (uint)(bytes.Length - VhostUserHeader.Size));
                    }
                    messages[i] = m with { Seed = new Seed(m.Seed.Name, bytes, m.Seed.Fields) };
                    break;
                }
                case 5:
                {
                    var fds = new List<FdKind>(m.Fds);
                    if (fds.Count > 0 && rng.Coin())
                    {
                        fds.RemoveAt(rng.Next(fds.Count));
                    }
                    else
                    {
                        int add = rng.OneIn(4) ? rng.Next(2, 9) : 1;
                        for (int k = 0; k < add && fds.Count < 10; k++)
                        {
                            fds.Add((FdKind)rng.Next(Enum.GetValues<FdKind>().Length));
                        }
                    }
                    c.Mutations.Add($"[{m.Seed.Name}] fds {string.Join('+', fds)}");
                    messages[i] = m with { Fds = fds.ToArray() };
                    break;
                }
                case 6:
                    if (m.Fds.Length > 0)
                    {
                        var fds = (FdKind[])m.Fds.Clone();
                        fds[rng.Next(fds.Length)] = rng.Coin() ? FdKind.ShortMemfd : (FdKind)rng.Next(Enum.GetValues<FdKind>().Length);
                        c.Mutations.Add($"[{m.Seed.Name}] fds {string.Join('+', fds)}");
                        messages[i] = m with { Fds = fds };
                    }
                    break;
                case 7:
                    c.Mutations.Add($"drop [{m.Seed.Name}]");
                    messages.RemoveAt(i);
                    if (messages.Count == 0)
                    {
                        return true;
                    }
                    break;
                case 8:
                {
                    int j = rng.Next(messages.Count);
                    c.Mutations.Add($"swap [{m.Seed.Name}] [{messages[j].Seed.Name}]");
                    (messages[i], messages[j]) = (messages[j], messages[i]);
                    break;
                }
                default:
                    c.Mutations.Add($"dup [{m.Seed.Name}]");
                    messages.Insert(rng.Next(messages.Count + 1), m);
                    break;
            }
        }
        foreach (var m in messages)
        {
            byte[] b = m.Seed.Bytes;
            if (b.Length < VhostUserHeader.Size || BinaryPrimitives.ReadUInt32LittleEndian(b.AsSpan(8)) != (uint)(b.Length - VhostUserHeader.Size)
                || b.Length - VhostUserHeader.Size > VhostUserLimits.MaxPayloadSize || m.Fds.Length > VhostUserLimits.MaxFds)
            {
                return false;
            }
        }
        return true;
    }

    /// <summary>Sends one message in 1..3 sendmsg calls (fds riding on any of them); false once the peer is gone.</summary>
    private static bool SendSplit(FuzzRng rng, UnixSocket socket, byte[] bytes, int[] fds)
    {
        var cuts = new List<int> { 0 };
        if (bytes.Length > 1 && rng.OneIn(4))
        {
            int pieces = rng.Next(2, 4);
            for (int p = 1; p < pieces; p++)
            {
                cuts.Add(rng.Next(1, bytes.Length));
            }
            cuts.Sort();
        }
        cuts.Add(bytes.Length);
        // Two equal cuts would make an empty piece; one byte sent in its place would shift the stream.
        cuts = cuts.Distinct().ToList();
        // At most 8 fds per sendmsg: more ride on later pieces (or on an extra one-byte piece, below).
        int fdAt = 0;
        try
        {
            for (int p = 0; p + 1 < cuts.Count; p++)
            {
                int take = p + 2 == cuts.Count ? fds.Length - fdAt : rng.Next(0, fds.Length - fdAt + 1);
                take = Math.Min(take, UnixSocket.MaxFds);
                var piece = bytes.AsSpan(cuts[p], cuts[p + 1] - cuts[p]);
                socket.Send(piece, fds.AsSpan(fdAt, take));
                fdAt += take;
            }
            while (fdAt < fds.Length)
            {
                // The rest of the fds with a byte of the next message (desynchronising on purpose).
                int take = Math.Min(UnixSocket.MaxFds, fds.Length - fdAt);
                socket.Send(new byte[1], fds.AsSpan(fdAt, take));
                fdAt += take;
            }
            return true;
        }
        catch (PosixException e) when (e.Errno is Errno.EPIPE or Errno.ECONNRESET or Errno.ENOTCONN)
        {
            return false;
        }
    }

    /// <summary>A guest request on every ring: it comes back (echoed), or the ring says it broke, or nothing
    /// happens (a ring that is not started or enabled). After an intact sequence that left every running
    /// ring as the driver set it up, no ring may be desynchronised; other outcomes are only counted.</summary>
    private static void KickRings(FuzzCase c, VhostUserTestGuest guest, VhostUserBackend backend, EventFd err0, EventFd err1, bool framingIntact)
    {
        // A mutated (or missing) SET_VRING_NUM, SET_VRING_BASE or SET_VRING_ADDR leaves the device a ring
        // of another size (1024 when none came), a last_avail_idx the driver never had, or rings elsewhere:
        // the device then serves entries the driver did not publish, or its larger ring reaches into the
        // next ring's memory, as a real device would — so every running ring must be the driver's.
        bool handedIntact = framingIntact;
        for (int q = 0; q < QueueCount; q++)
        {
            var ring = backend.Vrings[q];
            var setup = guest.Setups[q];
            handedIntact &= !ring.IsProcessing || (ring.Size == setup.Size && ring.Base == 0 && ring.Address.DescriptorTable == setup.DescUserAddr
                && ring.Address.AvailableRing == setup.AvailUserAddr && ring.Address.UsedRing == setup.UsedUserAddr);
        }
        for (int q = 0; q < QueueCount; q++)
        {
            var queue = guest.Queue(q);
            var ring = backend.Vrings[q];
            if (!ring.IsProcessing)
            {
                c.Count(ring.IsBroken ? "ring-broken" : "ring-idle");
                continue;
            }
            if (queue.FreeDescriptors < 2)
            {
                continue;
            }
            ulong inGpa = guest.SlotGpa(q, 0, writable: false);
            ulong outGpa = guest.SlotGpa(q, 0, writable: true);
            guest.Bytes(inGpa, 64).Fill(0x42);
            int head = queue.TryAdd([(inGpa, 64u)], [(outGpa, 64u)]);
            if (head < 0)
            {
                continue;
            }
            if (queue.PublishAndCheckKick())
            {
                guest.Kick(q).Signal();
            }
            bool answered = false;
            try
            {
                for (int i = 0; i < 10 && !answered; i++)
                {
                    answered = queue.TryReapUsed(out _, out _);
                    if (!answered)
                    {
                        guest.WaitCall(q, 10);
                    }
                }
            }
            catch (InvalidDataException e)
            {
                if (!handedIntact)
                {
                    c.Count("ring-not-the-drivers");
                    continue;
                }
                c.Fail($"the device desynchronised a ring it was handed intact (size {ring.Size}, base {ring.Base}): " + e.Message);
                continue;
            }
            var err = q == 0 ? err0 : err1;
            c.Count(answered ? "ring-answered" : err.Consume() > 0 ? "ring-broken" : "ring-idle");
        }
    }

    private static unsafe (SafeFd Read, SafeFd Write) Pipe()
    {
        int* fds = stackalloc int[2];
        PosixException.Check(Libc.Pipe2(fds, Libc.O_CLOEXEC), "pipe2");
        return (new SafeFd(fds[0]), new SafeFd(fds[1]));
    }

    private static unsafe SafeFd OpenDevNull()
    {
        fixed (byte* p = "/dev/null\0"u8)
        {
            return new SafeFd(PosixException.Check(Libc.OpenAt(Libc.AT_FDCWD, p, Libc.O_RDWR | Libc.O_CLOEXEC, 0), "open /dev/null"));
        }
    }

    /// <summary>Reads everything the back-end sends on the front-end's socket, checking reply headers.</summary>
    private sealed class ReplyReader
    {
        private readonly VhostUserChannel _channel;
        private readonly Thread _thread;
        private readonly Dictionary<VhostUserRequest, long> _counts = new();
        private volatile bool _closed;

        public ReplyReader(VhostUserChannel channel)
        {
            _channel = channel;
            _thread = new Thread(Run) { IsBackground = true, Name = "fuzz-vhost-user-replies" };
            _thread.Start();
        }

        public bool Closed => _closed;
        public string? Problem { get; private set; }

        private void Run()
        {
            var message = new VhostUserMessage();
            try
            {
                while (_channel.ReceiveMessage(message))
                {
                    var h = message.Header;
                    if (!h.IsReply || h.Version != 1)
                    {
                        Problem ??= $"the back-end sent a message that is not a version-1 reply: {h}";
                    }
                    lock (_counts)
                    {
                        _counts[message.Request] = _counts.GetValueOrDefault(message.Request) + 1;
                        Monitor.PulseAll(_counts);
                    }
                    message.CloseFds();
                }
            }
            catch (VhostUserProtocolException)
            {
                // The socket was shut down under a half-read message (our own shutdown), or the back-end closed.
            }
            catch (PosixException)
            {
            }
            finally
            {
                message.CloseFds();
                _closed = true;
                lock (_counts)
                {
                    Monitor.PulseAll(_counts);
                }
            }
        }

        public long Count(VhostUserRequest request)
        {
            lock (_counts)
            {
                return _counts.GetValueOrDefault(request);
            }
        }

        public bool WaitFor(VhostUserRequest request, long count, TimeSpan timeout)
        {
            var deadline = DateTime.UtcNow + timeout;
            lock (_counts)
            {
                while (_counts.GetValueOrDefault(request) < count && !_closed)
                {
                    var left = deadline - DateTime.UtcNow;
                    if (left <= TimeSpan.Zero)
                    {
                        return false;
                    }
                    Monitor.Wait(_counts, left);
                }
                return _counts.GetValueOrDefault(request) >= count;
            }
        }

        public void Join() => _thread.Join(TimeSpan.FromSeconds(10));
    }
}
