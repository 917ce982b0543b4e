namespace Vhostfsd.Fuzz.Engine;

/// <summary>A small deterministic generator (xoshiro256** seeded through SplitMix64): the same seed
/// gives the same cases on every machine and .NET version, which System.Random does not promise.</summary>
public sealed class FuzzRng
{
    private ulong _s0, _s1, _s2, _s3;

    public FuzzRng(ulong seed)
    {
        Seed = seed;
        ulong x = seed;
        _s0 = SplitMix(ref x);
        _s1 = SplitMix(ref x);
        _s2 = SplitMix(ref x);
        _s3 = SplitMix(ref x);
    }

    public ulong Seed { get; }

    /// <summary>The seed of case <paramref name="index"/> of a run started from <paramref name="runSeed"/>:
    /// any single case can be replayed alone.</summary>
    public static ulong CaseSeed(ulong runSeed, long index)
    {
        ulong x = runSeed ^ ((ulong)index * 0x9E3779B97F4A7C15UL);
        return SplitMix(ref x);
    }

    private static ulong SplitMix(ref ulong x)
    {
        ulong z = x += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }

    public ulong NextU64()
    {
        ulong result = ulong.RotateLeft(_s1 * 5, 7) * 9;
        ulong t = _s1 << 17;
        _s2 ^= _s0;
        _s3 ^= _s1;
        _s1 ^= _s2;
        _s0 ^= _s3;
        _s2 ^= t;
        _s3 = ulong.RotateLeft(_s3, 45);
        return result;
    }

    public uint NextU32() => (uint)(NextU64() >> 32);

    /// <summary>Uniform in [0, bound); bound must be positive.</summary>
    public int Next(int bound)
    {
        if (bound <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(bound));
        }
        return (int)((NextU64() >> 33) % (ulong)bound);
    }

    /// <summary>Uniform in [min, max).</summary>
    public int Next(int min, int max) => min + Next(max - min);

    /// <summary>True with probability 1/<paramref name="n"/>.</summary>
    public bool OneIn(int n) => Next(n) == 0;

    public bool Coin() => (NextU64() & 1) != 0;

    public T Pick<T>(IReadOnlyList<T> items) => items[Next(items.Count)];

    public T Pick<T>(ReadOnlySpan<T> items) => items[Next(items.Length)];

    public void Fill(Span<byte> bytes)
    {
        for (int i = 0; i < bytes.Length; i++)
        {
            bytes[i] = (byte)NextU64();
        }
    }
}
