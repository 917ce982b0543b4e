namespace Vhostfsd.GuestKernelShim;

/// <summary>A write-back error cursor, as Linux's errseq_t (lib/errseq.c): one 32-bit value per inode holding the
/// last error, a "seen" bit and a counter, and one sampled copy per open file. Every open file whose copy is behind
/// the inode's value is told about the error once (fsync, close), however many files there are; a file opened after
/// someone saw the error is not told again; an error nobody has seen yet is reported even to a file opened after
/// it happened.</summary>
public static class ErrSeq
{
    /// <summary>Errnos live in the low bits (MAX_ERRNO).</summary>
    private const int ErrnoMask = 4095;

    /// <summary>Set once somebody sampled or reported the current error; the next error then counts as new.</summary>
    private const int SeenBit = 1 << 12;

    /// <summary>The counter starts above the seen bit.</summary>
    private const int CounterStep = 1 << 13;

    /// <summary>errseq_set: records <paramref name="errno"/> (a positive errno) in <paramref name="value"/>.
    /// The counter moves only when the previous error was seen, so an error repeated before anybody looked is
    /// reported once.</summary>
    public static void Set(ref int value, int errno)
    {
        if (errno <= 0 || errno > ErrnoMask)
        {
            return;
        }
        while (true)
        {
            int old = Volatile.Read(ref value);
            int updated = (old & ~(ErrnoMask | SeenBit)) | errno;
            if ((old & SeenBit) != 0)
            {
                updated += CounterStep;
            }
            if (updated == old || Interlocked.CompareExchange(ref value, updated, old) == old)
            {
                return;
            }
        }
    }

    /// <summary>errseq_sample: the cursor a newly opened file starts from. 0 while the current error has not been
    /// seen, so that the new file still reports it.</summary>
    public static int Sample(ref int value)
    {
        int old = Volatile.Read(ref value);
        return (old & SeenBit) != 0 ? old : 0;
    }

    /// <summary>errseq_check_and_advance: the errno (positive) recorded since <paramref name="since"/>, or 0;
    /// the file's cursor moves to the current value and the error is marked seen.</summary>
    public static int CheckAndAdvance(ref int value, ref int since)
    {
        int old = Volatile.Read(ref value);
        if (old == since)
        {
            return 0;
        }
        int seen = old | SeenBit;
        if (seen != old)
        {
            // Losing the race to another reporter is fine: it set the same bit.
            Interlocked.CompareExchange(ref value, seen, old);
        }
        since = seen;
        return seen & ErrnoMask;
    }
}
