using System.Buffers.Binary;
using System.Diagnostics;
using System.Text;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Vhostfsd.VhostUser;
using Xunit;

namespace Vhostfsd.VhostUser.Tests;

/// <summary>The front-end against the C reference daemon (QEMU 7.2's virtiofsd): the QEMU
/// handshake with every message acknowledged, the queues started, and a FUSE INIT answered.</summary>
[Trait("Category", "Conformance")]
public sealed class ReferenceDaemonConformanceTests
{
    private const string DaemonPath = "/usr/lib/qemu/virtiofsd";

    // FUSE wire constants, hand-encoded here on purpose (this layer does not depend on FusePassthrough).
    private const uint FuseInit = 26;
    private const int InHeaderSize = 40;
    private const int InitInSize = 16;   // major, minor, max_readahead, flags (protocol 7.31)
    private const int OutHeaderSize = 16;

    [Fact]
    public void QemuHandshakeAndFuseInitAgainstTheCReferenceDaemon()
    {
        Assert.True(File.Exists(DaemonPath),
            $"{DaemonPath} is missing: install the Debian package qemu-system-common (scripts/install-deps.sh does) to run this conformance test");
        Assert.True(IsRoot(),
            "the C virtiofsd needs root for its sandbox; run the conformance tests as root");

        string dir = Directory.CreateTempSubdirectory("vhost-user-conformance-").FullName;
        string shared = Directory.CreateDirectory(Path.Combine(dir, "shared")).FullName;
        string socketPath = Path.Combine(dir, "vfsd.sock");
        File.WriteAllText(Path.Combine(shared, "hello.txt"), "hello");
        var stderr = new StringBuilder();
        using var daemon = new Process
        {
            StartInfo = new ProcessStartInfo(DaemonPath)
            {
                ArgumentList = { "--socket-path=" + socketPath, "-o", "source=" + shared, "-o", "cache=none", "-o", "sandbox=chroot" },
                RedirectStandardError = true,
                RedirectStandardOutput = true,
                UseShellExecute = false,
            },
        };
        daemon.ErrorDataReceived += (_, e) => { lock (stderr) { stderr.AppendLine(e.Data); } };
        daemon.OutputDataReceived += (_, e) => { lock (stderr) { stderr.AppendLine(e.Data); } };
        Assert.True(daemon.Start(), "virtiofsd did not start");
        daemon.BeginErrorReadLine();
        daemon.BeginOutputReadLine();
        string DaemonOutput() { lock (stderr) { return stderr.ToString(); } }
        try
        {
            using var guest = new VhostUserTestGuest(queueCount: 2, queueSize: 128, slotSize: 4096, eventIdx: true, indirect: false);
            using (var frontend = ConnectOrFail(socketPath, daemon, DaemonOutput))
            {
                frontend.Transcript = new();
                var info = frontend.Initialize(queueCount: 2);
                Assert.True(info.QueueCount >= 2, $"virtiofsd reports {info.QueueCount} queues");
                Assert.True(frontend.Negotiated(VhostUserProtocolFeatures.ReplyAck), "virtiofsd 7.2 offers REPLY_ACK");
                Assert.True((info.Features & VirtioFeatures.Version1) != 0);
                frontend.Start(guest.RingFeatures, guest.MemoryRegions, guest.Setups);
                Assert.All(frontend.Transcript, t => Assert.True(t.Answered, $"virtiofsd did not acknowledge {t.Request}"));
                Assert.Contains(frontend.Transcript, t => t.Request == VhostUserRequest.AddMemReg);
                Assert.Contains(frontend.Transcript, t => t.Request == VhostUserRequest.SetVringEnable);

                // FUSE INIT on request queue 1.
                var queue = guest.Queue(1);
                ulong inGpa = guest.SlotGpa(1, 0, writable: false);
                ulong outGpa = guest.SlotGpa(1, 0, writable: true);
                var request = guest.Bytes(inGpa, InHeaderSize + InitInSize);
                const ulong unique = 0x1234_5678_9abc;
                BinaryPrimitives.WriteUInt32LittleEndian(request[0..], InHeaderSize + InitInSize); // len
                BinaryPrimitives.WriteUInt32LittleEndian(request[4..], FuseInit);                  // opcode
                BinaryPrimitives.WriteUInt64LittleEndian(request[8..], unique);                    // unique
                BinaryPrimitives.WriteUInt64LittleEndian(request[16..], 0);                        // nodeid
                BinaryPrimitives.WriteUInt32LittleEndian(request[24..], 0);                        // uid
                BinaryPrimitives.WriteUInt32LittleEndian(request[28..], 0);                        // gid
                BinaryPrimitives.WriteUInt32LittleEndian(request[32..], 1);                        // pid
                BinaryPrimitives.WriteUInt16LittleEndian(request[36..], 0);                        // total_extlen
                BinaryPrimitives.WriteUInt16LittleEndian(request[38..], 0);                        // padding
                BinaryPrimitives.WriteUInt32LittleEndian(request[40..], 7);                        // major
                BinaryPrimitives.WriteUInt32LittleEndian(request[44..], 31);                       // minor
                BinaryPrimitives.WriteUInt32LittleEndian(request[48..], 128 * 1024);               // max_readahead
                BinaryPrimitives.WriteUInt32LittleEndian(request[52..], 0);                        // flags
                guest.Bytes(outGpa, 4096).Clear();
                int head = queue.TryAdd([(inGpa, (uint)(InHeaderSize + InitInSize))], [(outGpa, 4096u)]);
                Assert.True(head >= 0);
                if (queue.PublishAndCheckKick())
                {
                    Assert.Equal(0, guest.Kick(1).Signal());
                }
                ushort usedHead = 0;
                uint usedLength = 0;
                var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
                while (!queue.TryReapUsed(out usedHead, out usedLength))
                {
                    Assert.True(DateTime.UtcNow < deadline, "virtiofsd did not answer FUSE_INIT within 10 s:\n" + DaemonOutput());
                    guest.WaitCall(1, 200);
                }
                Assert.Equal((ushort)head, usedHead);
                var reply = guest.Bytes(outGpa, 4096);
                uint replyLength = BinaryPrimitives.ReadUInt32LittleEndian(reply);
                int error = BinaryPrimitives.ReadInt32LittleEndian(reply[4..]);
                ulong replyUnique = BinaryPrimitives.ReadUInt64LittleEndian(reply[8..]);
                Assert.Equal(usedLength, replyLength);
                Assert.Equal(0, error);
                Assert.Equal(unique, replyUnique);
                // fuse_init_out: major, minor, max_readahead, flags, ... (at least the 24 bytes of protocol 7.5).
                Assert.True(replyLength >= OutHeaderSize + 24, $"init reply of {replyLength} bytes is too short");
                Assert.Equal(7u, BinaryPrimitives.ReadUInt32LittleEndian(reply[OutHeaderSize..]));
                uint minor = BinaryPrimitives.ReadUInt32LittleEndian(reply[(OutHeaderSize + 4)..]);
                Assert.True(minor >= 31, $"init_out minor {minor}");

                // Stop as QEMU does: the request queue consumed one chain, hiprio none.
                uint[] bases = frontend.Stop([0u, 1u]);
                Assert.Equal(new uint[] { 0, 1 }, bases);
                Assert.All(frontend.Transcript, t => Assert.True(t.Answered, $"virtiofsd did not acknowledge {t.Request}"));
            }
            // The C daemon exits when its front-end goes away.
            Assert.True(daemon.WaitForExit(10_000), "virtiofsd did not exit after the disconnect:\n" + DaemonOutput());
        }
        finally
        {
            if (!daemon.HasExited)
            {
                daemon.Kill();
                daemon.WaitForExit(5000);
            }
            Directory.Delete(dir, recursive: true);
        }
    }

    private static VhostUserFrontend ConnectOrFail(string socketPath, Process daemon, Func<string> output)
    {
        try
        {
            return VhostUserFrontend.Connect(socketPath, TimeSpan.FromSeconds(10));
        }
        catch (PosixException e)
        {
            throw new Xunit.Sdk.XunitException($"cannot connect to virtiofsd at {socketPath} ({e.Message}); exited: {daemon.HasExited}; output:\n{output()}");
        }
    }

    private static bool IsRoot()
    {
        foreach (var line in File.ReadLines("/proc/self/status"))
        {
            if (line.StartsWith("Uid:", StringComparison.Ordinal))
            {
                return line.Split('\t', StringSplitOptions.RemoveEmptyEntries)[2] == "0";
            }
        }
        return false;
    }
}
