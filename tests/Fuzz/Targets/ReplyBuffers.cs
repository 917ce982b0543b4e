using System.Runtime.InteropServices;
using Vhostfsd.Fuzz.Engine;
using Vhostfsd.Posix;

namespace Vhostfsd.Fuzz.Targets;

/// <summary>Request and reply buffers as a guest lays them out: the request split into readable
/// segments, the reply space into writable segments, each segment surrounded by canary bytes in
/// one pinned arena. After the call: were the canaries and the request bytes left alone, and what
/// did the reply say.</summary>
public sealed unsafe class ReplyBuffers : IDisposable
{
    public const byte Canary = 0xA5;
    private const int Guard = 32;

    private readonly byte* _arena;
    private readonly int _size;
    private readonly List<(int Offset, int Length)> _readable = new();
    private readonly List<(int Offset, int Length)> _writable = new();
    private readonly IoVec[] _readVecs = new IoVec[16];
    private readonly IoVec[] _writeVecs = new IoVec[16];
    private byte[] _request = [];

    public ReplyBuffers(int size)
    {
        _size = size;
        _arena = (byte*)NativeMemory.AlignedAlloc((nuint)size, 4096);
    }

    public void Dispose() => NativeMemory.AlignedFree(_arena);

    public ReadOnlySpan<IoVec> Readable => _readVecs.AsSpan(0, _readable.Count);
    public ReadOnlySpan<IoVec> Writable => _writeVecs.AsSpan(0, _writable.Count);
    public int Capacity { get; private set; }

    /// <summary>Lays out <paramref name="request"/> in 1..4 readable segments (sometimes with empty ones)
    /// and <paramref name="capacity"/> writable bytes in 1..4 segments, canaries around each.</summary>
    public void Prepare(FuzzRng rng, byte[] request, int capacity)
    {
        _request = request;
        Capacity = capacity;
        _readable.Clear();
        _writable.Clear();
        int at = 0;
        new Span<byte>(_arena, _size).Fill(Canary);
        foreach (int piece in Split(rng, request.Length))
        {
            at += Guard;
            _readable.Add((at, piece));
            at += piece;
        }
        foreach (int piece in Split(rng, capacity))
        {
            at += Guard;
            _writable.Add((at, piece));
            at += piece;
        }
        if (at + Guard > _size)
        {
            throw new InvalidOperationException("arena too small");
        }
        int copied = 0;
        for (int i = 0; i < _readable.Count; i++)
        {
            var (offset, length) = _readable[i];
            request.AsSpan(copied, length).CopyTo(new Span<byte>(_arena + offset, length));
            copied += length;
            _readVecs[i] = new IoVec(_arena + offset, (nuint)length);
        }
        for (int i = 0; i < _writable.Count; i++)
        {
            var (offset, length) = _writable[i];
            // Stale bytes in the reply space, as a reused guest page would have.
            new Span<byte>(_arena + offset, length).Fill(0x5A);
            _writeVecs[i] = new IoVec(_arena + offset, (nuint)length);
        }
    }

    private static List<int> Split(FuzzRng rng, int total)
    {
        var pieces = new List<int>();
        int parts = rng.OneIn(2) ? 1 : rng.Next(2, 5);
        int left = total;
        for (int i = 0; i < parts - 1; i++)
        {
            int piece = left == 0 ? 0 : rng.OneIn(5) ? 0 : rng.Next(0, Math.Min(left, 64) + 1);
            if (rng.OneIn(3) && left > 0)
            {
                piece = rng.Next(0, left + 1);
            }
            pieces.Add(piece);
            left -= piece;
        }
        pieces.Add(left);
        return pieces;
    }

    /// <summary>Overwrites the request's fuse_in_header bytes in the readable segments with random
    /// ones, as a guest may after the device copied the header; <see cref="CheckIntegrity"/> then
    /// expects the new bytes.</summary>
    public void RewriteHeader(FuzzRng rng)
    {
        byte[] rewritten = (byte[])_request.Clone();
        int copied = 0;
        foreach (var (offset, length) in _readable)
        {
            for (int i = 0; i < length && copied + i < 40; i++)
            {
                byte value = (byte)rng.Next(0, 256);
                _arena[offset + i] = value;
                rewritten[copied + i] = value;
            }
            copied += length;
        }
        _request = rewritten;
    }

    /// <summary>Null when every canary and every request byte is intact; otherwise what changed.</summary>
    public string? CheckIntegrity()
    {
        int at = 0;
        var all = new List<(int Offset, int Length, bool Readable)>();
        foreach (var (o, l) in _readable) all.Add((o, l, true));
        foreach (var (o, l) in _writable) all.Add((o, l, false));
        int copied = 0;
        foreach (var (offset, length, readable) in all)
        {
            for (int i = at; i < offset; i++)
            {
                if (_arena[i] != Canary)
                {
                    return $"canary byte at arena offset {i} (before a segment at {offset}) was overwritten";
                }
            }
            if (readable)
            {
                if (!new ReadOnlySpan<byte>(_arena + offset, length).SequenceEqual(_request.AsSpan(copied, length)))
                {
                    return $"the request segment at {offset} (+{length}) was written to";
                }
                copied += length;
            }
            at = offset + length;
        }
        for (int i = at; i < at + Guard; i++)
        {
            if (_arena[i] != Canary)
            {
                return $"canary byte at arena offset {i} (after the last segment) was overwritten";
            }
        }
        return null;
    }

    /// <summary>The first <paramref name="length"/> reply bytes, gathered from the writable segments.</summary>
    public byte[] Reply(int length)
    {
        var reply = new byte[length];
        int copied = 0;
        foreach (var (offset, segment) in _writable)
        {
            if (copied == length)
            {
                break;
            }
            int n = Math.Min(segment, length - copied);
            new ReadOnlySpan<byte>(_arena + offset, n).CopyTo(reply.AsSpan(copied));
            copied += n;
        }
        return reply;
    }
}
