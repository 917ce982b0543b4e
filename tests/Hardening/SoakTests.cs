using System.Diagnostics;
using System.Globalization;
using Vhostfsd.Fuzz.Oracles;
using Vhostfsd.GuestKernelShim;
using Vhostfsd.Hardening.Support;
using Vhostfsd.Posix;
using Vhostfsd.Testing;
using Xunit;
using Xunit.Abstractions;

namespace Vhostfsd.Hardening;

/// <summary>The soak: 16 guest callers on 4 request queues run a mixed workload (create, write, fsync,
/// read, rename, unlink, readdir) for a bounded number of operations, each in its own directory with
/// its own record of what it committed. At the end the host directory must hold exactly that —
/// nothing lost, nothing extra, every byte — and once the guest drops its caches the daemon's fd
/// count is back to where it started, with its RSS sampled throughout. CI runs a short version;
/// SOAK_OPS (total operations) runs a long one (make soak); figures go to SOAK_REPORT if set.</summary>
[Trait("Category", "Soak")]
public sealed class SoakTests : IDisposable
{
    private const int Callers = 16;
    private const int Queues = 4;
    private const int MaxLiveFilesPerCaller = 400;
    private readonly ITestOutputHelper _output;
    private readonly ScratchMount _mount;
    private readonly string _share;

    public SoakTests(ITestOutputHelper output)
    {
        _output = output;
        _mount = ScratchMount.Create(1024, prefix: "vhostfsd-soak-");
        _share = _mount.CreateDirectory("share");
    }

    public void Dispose() => _mount.Dispose();

    private sealed class Caller
    {
        public required int Id;
        public required FuseNode Dir;
        public required Random Rng;
        public readonly Dictionary<string, byte[]> Committed = new();
        public int NextName;
        public long Ops;
        public string? Failure;
        public readonly Dictionary<string, long> Counts = new();
    }

    [Fact]
    public void MixedWorkloadLosesNothingAndGivesBackEveryFd()
    {
        long totalOps = long.TryParse(Environment.GetEnvironmentVariable("SOAK_OPS"), NumberStyles.Integer, CultureInfo.InvariantCulture, out long o) && o > 0 ? o : 16_000;
        using var daemon = DaemonProcess.StartVhostfsd(_share, "--sandbox=none", "--log-level=warn", "--thread-pool-size=4");
        var fs = Observe.Mount(daemon, queues: Queues, memory: 512UL << 20);
        int pid = Observe.ServingPid(daemon);
        Assert.Equal(Errno.OK, fs.StatFs(fs.Root, out _));
        int fdsBaseline = Observe.FdCount(pid);
        long rssBaseline = Observe.RssKb(pid);
        var callers = new Caller[Callers];
        for (int i = 0; i < Callers; i++)
        {
            Assert.Equal(Errno.OK, fs.Mkdir(fs.Root, $"c{i}", 0x1ED, out var dir));
            callers[i] = new Caller { Id = i, Dir = dir!, Rng = new Random(1000 + i) };
        }
        int peakFds = fdsBaseline;
        long peakRss = rssBaseline;
        using var stopSampling = new CancellationTokenSource();
        var sampler = new Thread(() =>
        {
            while (!stopSampling.IsCancellationRequested)
            {
                peakFds = Math.Max(peakFds, Observe.FdCount(pid));
                peakRss = Math.Max(peakRss, Observe.RssKb(pid));
                Thread.Sleep(50);
            }
        }) { IsBackground = true };
        sampler.Start();

        var clock = Stopwatch.StartNew();
        long perCaller = Math.Max(1, totalOps / Callers);
        var threads = new Thread[Callers];
        for (int i = 0; i < Callers; i++)
        {
            var caller = callers[i];
            threads[i] = new Thread(() => Run(fs, caller, perCaller)) { Name = $"soak-{i}" };
            threads[i].Start();
        }
        foreach (var t in threads)
        {
            Assert.True(t.Join(TimeSpan.FromMinutes(30)), "a soak caller hung");
        }
        var elapsed = clock.Elapsed;
        foreach (var caller in callers)
        {
            Assert.True(caller.Failure == null, $"caller {caller.Id}: {caller.Failure}");
        }

        // Nothing lost, nothing extra: the host holds exactly what each caller committed.
        Assert.Equal(Enumerable.Range(0, Callers).Select(i => $"c{i}").Order(), Directory.GetFileSystemEntries(_share).Select(Path.GetFileName).Order());
        long files = 0, bytes = 0;
        foreach (var caller in callers)
        {
            string dir = Path.Combine(_share, $"c{caller.Id}");
            var onHost = Directory.GetFileSystemEntries(dir).Select(p => Path.GetFileName(p)!).Order().ToArray();
            Assert.Equal(caller.Committed.Keys.Order().ToArray(), onHost);
            foreach (var (name, content) in caller.Committed)
            {
                byte[] actual = File.ReadAllBytes(Path.Combine(dir, name));
                Assert.True(actual.AsSpan().SequenceEqual(content), $"c{caller.Id}/{name}: {actual.Length} bytes on the host, {content.Length} committed, or different bytes");
                files++;
                bytes += content.Length;
            }
        }

        // The guest lets go of everything; the daemon's fds come back to the baseline.
        fs.DropCaches();
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (Observe.FdCount(pid) > fdsBaseline && DateTime.UtcNow < deadline)
        {
            Thread.Sleep(50);
        }
        stopSampling.Cancel();
        sampler.Join();
        int fdsEnd = Observe.FdCount(pid);
        long rssEnd = Observe.RssKb(pid);
        long ops = callers.Sum(c => c.Ops);
        var counts = new Dictionary<string, long>();
        foreach (var c in callers)
        {
            foreach (var (k, v) in c.Counts)
            {
                counts[k] = counts.GetValueOrDefault(k) + v;
            }
        }
        string figures = string.Create(CultureInfo.InvariantCulture,
            $"soak: {ops} ops ({string.Join(' ', counts.OrderBy(k => k.Key).Select(kv => $"{kv.Key}={kv.Value}"))}) by {Callers} callers on {Queues} queues in {elapsed.TotalSeconds:F1} s " +
            $"({ops / Math.Max(elapsed.TotalSeconds, 0.001):F0} ops/s); {files} files / {bytes / 1024} KiB verified; " +
            $"daemon fds {fdsBaseline} baseline, {peakFds} peak, {fdsEnd} end; RSS {rssBaseline / 1024} MiB baseline, {peakRss / 1024} MiB peak, {rssEnd / 1024} MiB end");
        _output.WriteLine(figures);
        string? report = Environment.GetEnvironmentVariable("SOAK_REPORT");
        if (!string.IsNullOrEmpty(report))
        {
            File.AppendAllText(report, figures + Environment.NewLine);
        }
        Assert.True(fdsEnd <= fdsBaseline, $"the daemon holds {fdsEnd} fds after the guest dropped everything, {fdsBaseline} before the workload");
        // RSS: the managed heap does not hand every page back, but it must not keep what the workload used.
        Assert.True(rssEnd <= rssBaseline + 96 * 1024, $"RSS {rssEnd / 1024} MiB at the end, {rssBaseline / 1024} MiB before the workload");
        Assert.True(ops >= Math.Min(totalOps, Callers * perCaller) * 9 / 10, figures);
        fs.Dispose();
        Assert.True(daemon.WaitForExit(TimeSpan.FromSeconds(20)), "the daemon did not exit after the unmount");
        Assert.Equal(0, daemon.ExitCode);
    }

    private static void Run(FuseFs fs, Caller c, long ops)
    {
        var rng = c.Rng;
        var buffer = new byte[256 << 10];
        try
        {
            for (long n = 0; n < ops && c.Failure == null; n++)
            {
                int pick = rng.Next(100);
                // Creates outnumber unlinks, so a long soak would fill its tmpfs: past a few hundred
                // live files per caller a create becomes an unlink.
                if (pick < 25 && c.Committed.Count >= MaxLiveFilesPerCaller)
                {
                    pick = 70;
                }
                string? existing = c.Committed.Count > 0 ? c.Committed.Keys.ElementAt(rng.Next(c.Committed.Count)) : null;
                if (pick < 25 || existing == null)
                {
                    string name = $"f{c.NextName++}";
                    byte[] data = new byte[rng.Next(1, 64 << 10)];
                    rng.NextBytes(data);
                    Check(c, "create", fs.Create(c.Dir, name, Libc.O_RDWR | Libc.O_EXCL, 0x1A4, out _, out var file));
                    WriteAll(c, fs, file!, data, 0);
                    if (rng.Next(3) == 0)
                    {
                        Check(c, "fsync", fs.Fsync(file!));
                    }
                    Check(c, "release", fs.Release(file!));
                    c.Committed[name] = data;
                    Count(c, "create+write");
                }
                else if (pick < 40)
                {
                    byte[] old = c.Committed[existing];
                    int offset = rng.Next(0, old.Length + 1);
                    byte[] data = new byte[rng.Next(1, 16 << 10)];
                    rng.NextBytes(data);
                    Check(c, "walk", fs.Lookup(c.Dir, existing, out var node));
                    Check(c, "open", fs.Open(node!, Libc.O_RDWR, out var file));
                    WriteAll(c, fs, file!, data, offset);
                    Check(c, "release", fs.Release(file!));
                    byte[] updated = new byte[Math.Max(old.Length, offset + data.Length)];
                    old.CopyTo(updated, 0);
                    data.CopyTo(updated, offset);
                    c.Committed[existing] = updated;
                    Count(c, "write");
                }
                else if (pick < 60)
                {
                    byte[] expected = c.Committed[existing];
                    Check(c, "lookup", fs.Lookup(c.Dir, existing, out var node));
                    Check(c, "open", fs.Open(node!, Libc.O_RDONLY, out var file));
                    int total = 0;
                    while (total <= expected.Length)
                    {
                        Check(c, "read", fs.Read(file!, buffer, total, out int read));
                        if (read == 0)
                        {
                            break;
                        }
                        if (!buffer.AsSpan(0, read).SequenceEqual(expected.AsSpan(total, Math.Min(read, expected.Length - total))) || total + read > expected.Length)
                        {
                            c.Failure = $"{existing}: read at {total} returned bytes that were never written";
                            return;
                        }
                        total += read;
                    }
                    Check(c, "release", fs.Release(file!));
                    if (total != expected.Length)
                    {
                        c.Failure = $"{existing}: read {total} bytes, committed {expected.Length}";
                        return;
                    }
                    Count(c, "read");
                }
                else if (pick < 70)
                {
                    string target = rng.Next(3) == 0 && c.Committed.Count > 1 ? c.Committed.Keys.ElementAt(rng.Next(c.Committed.Count)) : $"f{c.NextName++}";
                    if (target == existing)
                    {
                        continue;
                    }
                    Check(c, "rename", fs.Rename(c.Dir, existing, c.Dir, target));
                    c.Committed[target] = c.Committed[existing];
                    c.Committed.Remove(existing);
                    Count(c, "rename");
                }
                else if (pick < 80)
                {
                    Check(c, "unlink", fs.Unlink(c.Dir, existing));
                    c.Committed.Remove(existing);
                    Count(c, "unlink");
                }
                else if (pick < 90)
                {
                    var entries = new List<Vhostfsd.GuestKernelShim.FuseDirEntry>();
                    Check(c, "readdir", fs.ReadDirectoryAll(c.Dir, entries));
                    var names = entries.Select(e => e.Name).Where(name => name is not "." and not "..").Order().ToArray();
                    if (!names.SequenceEqual(c.Committed.Keys.Order().ToArray()))
                    {
                        c.Failure = $"readdir listed [{string.Join(',', names)}], committed [{string.Join(',', c.Committed.Keys.Order())}]";
                        return;
                    }
                    Count(c, "readdir");
                }
                else
                {
                    Check(c, "lookup", fs.Lookup(c.Dir, existing, out var node));
                    Check(c, "open", fs.Open(node!, Libc.O_RDWR, out var file));
                    Check(c, "fsync", fs.Fsync(file!, dataOnly: rng.Next(2) == 0));
                    Check(c, "release", fs.Release(file!));
                    Count(c, "fsync");
                }
                c.Ops++;
            }
        }
        catch (SoakFailure)
        {
        }
    }

    private static void WriteAll(Caller c, FuseFs fs, FuseFile file, byte[] data, long offset)
    {
        int done = 0;
        while (done < data.Length)
        {
            Check(c, "write", fs.Write(file, data.AsSpan(done), offset + done, out int written));
            if (written <= 0)
            {
                c.Failure = "a write made no progress";
                throw new SoakFailure();
            }
            done += written;
        }
    }

    private static void Count(Caller c, string what) => c.Counts[what] = c.Counts.GetValueOrDefault(what) + 1;

    private static void Check(Caller c, string what, Errno rc)
    {
        if (rc != Errno.OK)
        {
            c.Failure = $"{what} failed with {rc}";
            throw new SoakFailure();
        }
    }

    private sealed class SoakFailure : Exception
    {
    }
}
