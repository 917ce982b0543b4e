namespace Vhostfsd.Bench;

/// <summary>A log-linear latency histogram in nanoseconds: exact below 64 ns, then 32 linear
/// sub-buckets per power of two (about 3% resolution) up to ~2^40 ns. Recording is one array
/// increment, so a caller thread keeps its own and the runner merges them afterwards.</summary>
public sealed class LatencyHistogram
{
    private const int LinearLimit = 64;
    private const int SubBits = 5;
    private const int SubBuckets = 1 << SubBits;
    private const int MaxExponent = 40;
    private const int BucketCount = LinearLimit + (MaxExponent - 5) * SubBuckets;

    private readonly long[] _counts = new long[BucketCount];

    public long Count { get; private set; }

    public void Record(long nanoseconds)
    {
        _counts[IndexOf(nanoseconds)]++;
        Count++;
    }

    public void Add(LatencyHistogram other)
    {
        for (int i = 0; i < _counts.Length; i++)
        {
            _counts[i] += other._counts[i];
        }
        Count += other.Count;
    }

    public void Clear()
    {
        Array.Clear(_counts);
        Count = 0;
    }

    /// <summary>The value at quantile <paramref name="q"/> (0..1), in nanoseconds (bucket midpoint); 0 when empty.</summary>
    public double Quantile(double q)
    {
        if (Count == 0)
        {
            return 0;
        }
        long rank = Math.Max(1, (long)Math.Ceiling(q * Count));
        long seen = 0;
        for (int i = 0; i < _counts.Length; i++)
        {
            seen += _counts[i];
            if (seen >= rank)
            {
                return Midpoint(i);
            }
        }
        return Midpoint(_counts.Length - 1);
    }

    internal static int IndexOf(long value)
    {
        if (value < LinearLimit)
        {
            return value < 0 ? 0 : (int)value;
        }
        int exponent = 63 - System.Numerics.BitOperations.LeadingZeroCount((ulong)value);
        if (exponent >= MaxExponent)
        {
            return BucketCount - 1;
        }
        int sub = (int)(value >> (exponent - SubBits)) & (SubBuckets - 1);
        return LinearLimit + (exponent - 6) * SubBuckets + sub;
    }

    internal static double Midpoint(int index)
    {
        if (index < LinearLimit)
        {
            return index;
        }
        int exponent = (index - LinearLimit) / SubBuckets + 6;
        int sub = (index - LinearLimit) % SubBuckets;
        double width = Math.Pow(2, exponent - SubBits);
        return Math.Pow(2, exponent) + (sub + 0.5) * width;
    }
}
