using SharpFuzz;

namespace Vhostfsd.AflTargets;

/// <summary>Entry point of the coverage-guided targets.
/// <list type="bullet">
/// <item><c>Vhostfsd.AflTargets TARGET</c>: under afl-fuzz, the SharpFuzz fork server runs the target on
/// each input afl-fuzz writes (in this process, again and again); outside afl-fuzz, once on stdin.</item>
/// <item><c>Vhostfsd.AflTargets TARGET FILE...</c>: runs the target on each file (a replay of a crash,
/// or of a corpus); a broken rule throws and the process fails. AFL_REPLAY_VERBOSE=1 prints every
/// exception where it is thrown, the ones the server catches included.</item>
/// <item><c>Vhostfsd.AflTargets --seed-corpus DIR</c>: writes the seed corpus of every target under DIR.</item>
/// <item><c>Vhostfsd.AflTargets --assemblies TARGET</c>: the assemblies (and type prefixes) to instrument.</item>
/// <item><c>Vhostfsd.AflTargets --list</c>: the targets' names.</item>
/// <item><c>Vhostfsd.AflTargets --trace-points ASSEMBLY...</c>: the basic blocks SharpFuzz instrumented in them.</item>
/// </list></summary>
public static class Program
{
    public static int Main(string[] args)
    {
        if (args.Length == 2 && args[0] == "--seed-corpus")
        {
            foreach (var target in AflTarget.All)
            {
                string dir = Path.Combine(args[1], target.Name);
                Directory.CreateDirectory(dir);
                foreach (var (name, bytes) in target.SeedCorpus())
                {
                    File.WriteAllBytes(Path.Combine(dir, name), bytes);
                }
            }
            return 0;
        }
        if (args.Length == 1 && args[0] == "--list")
        {
            foreach (var target in AflTarget.All)
            {
                Console.WriteLine(target.Name);
            }
            return 0;
        }
        if (args.Length == 2 && args[0] == "--assemblies")
        {
            foreach (string line in AflTarget.Named(args[1]).Instrument)
            {
                Console.WriteLine(line);
            }
            return 0;
        }
        if (args.Length >= 2 && args[0] == "--trace-points")
        {
            Console.WriteLine(args.Skip(1).Sum(TracePoints.Count));
            return 0;
        }
        if (args.Length < 1)
        {
            Console.Error.WriteLine("usage: Vhostfsd.AflTargets TARGET [FILE...] | --seed-corpus DIR | --assemblies TARGET | --trace-points ASSEMBLY...; targets: "
                + string.Join(", ", AflTarget.All.Select(t => t.Name)));
            return 2;
        }
        var chosen = AflTarget.Named(args[0]);
        if (args.Length > 1)
        {
            GiveTraceMemory();
            if (Environment.GetEnvironmentVariable("AFL_REPLAY_VERBOSE") == "1")
            {
                // The server turns an internal exception into EIO: show where it was thrown.
                AppDomain.CurrentDomain.FirstChanceException += (_, e) => Console.Error.WriteLine("first-chance " + e.Exception.GetType().Name + ": " + e.Exception.Message + Environment.NewLine + Environment.StackTrace);
            }
            foreach (string file in args.Skip(1))
            {
                chosen.Run(File.ReadAllBytes(file));
            }
            return 0;
        }
        Fuzzer.Run(stream =>
        {
            using var buffer = new MemoryStream();
            stream.CopyTo(buffer);
            chosen.Run(buffer.GetBuffer().AsSpan(0, (int)buffer.Length));
        });
        return 0;
    }

    /// <summary>Outside the fork server, instrumented assemblies (an out/afl copy) still record their
    /// edges: give them somewhere to record to, as afl-fuzz's shared memory would be.</summary>
    private static unsafe void GiveTraceMemory()
    {
        if (SharpFuzz.Common.Trace.SharedMem == null)
        {
            SharpFuzz.Common.Trace.SharedMem = (byte*)System.Runtime.InteropServices.NativeMemory.AllocZeroed(1 << 16);
        }
    }
}

/// <summary>One coverage-guided target: what it runs on an input (throwing when a rule breaks), the
/// assemblies afl-fuzz sees the coverage of, and the inputs it starts from.</summary>
public abstract class AflTarget
{
    public static readonly AflTarget[] All = [new FuseRequestTarget(), new DescriptorChainTarget(), new VhostUserMessageTarget(), new XattrMapTarget()];

    public static AflTarget Named(string name) =>
        Array.Find(All, t => t.Name == name) ?? throw new ArgumentException($"no AFL target '{name}' (targets: {string.Join(", ", All.Select(t => t.Name))})");

    public abstract string Name { get; }

    /// <summary>Lines "ASSEMBLY.dll [TYPE-PREFIX...]" for sharpfuzz: only this code is instrumented.</summary>
    public abstract string[] Instrument { get; }

    /// <summary>Runs one input. Throws <see cref="BrokenRuleException"/> (a crash for afl-fuzz) when the
    /// code under test breaks one of the target's rules, or lets an unexpected exception escape.</summary>
    public abstract void Run(ReadOnlySpan<byte> input);

    /// <summary>The checked-in starting inputs (file name, bytes).</summary>
    public abstract IEnumerable<(string Name, byte[] Bytes)> SeedCorpus();
}

/// <summary>A rule of a target was broken: afl-fuzz counts the input as a crash.</summary>
public sealed class BrokenRuleException(string message) : Exception(message);
