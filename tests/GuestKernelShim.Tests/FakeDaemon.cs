using System.Collections.Concurrent;
using System.Runtime.InteropServices;
using Vhostfsd.FuseProtocol;
using Vhostfsd.Posix;

namespace Vhostfsd.GuestKernelShim.Tests;

/// <summary>A request as the fake daemon saw it.</summary>
public sealed record SeenRequest(FuseInHeader Header, byte[] Args)
{
    public FuseOpcode Opcode => (FuseOpcode)Header.Opcode;
    public ulong Unique => Header.Unique;
    public T Arg<T>(int offset = 0) where T : unmanaged => MemoryMarshal.Read<T>(Args.AsSpan(offset));
}

/// <summary>What a handler answers: an errno, or a payload; or nothing at all (the request stays unanswered).</summary>
public readonly record struct FakeAnswer(int Error, byte[]? Payload, bool NoAnswer = false)
{
    public static FakeAnswer Ok(byte[]? payload = null) => new(0, payload ?? []);
    public static FakeAnswer Fail(Errno errno) => new(-(int)errno, null);
    public static FakeAnswer Silent => new(0, null, NoAnswer: true);
    public static FakeAnswer Of<T>(in T value) where T : unmanaged => Ok(MemoryMarshal.AsBytes(new ReadOnlySpan<T>(in value)).ToArray());
}

/// <summary>A daemon on the in-process channel for connection tests: a thread reads requests, records them,
/// answers INIT with a configurable fuse_init_out, and everything else through <see cref="Handler"/>.</summary>
public sealed class FakeDaemon : IDisposable
{
    private readonly InProcessChannelBackend _channel;
    private readonly Thread _thread;
    private readonly CancellationTokenSource _stop = new();

    public FakeDaemon(InProcessChannelBackend channel, bool start = true)
    {
        _channel = channel;
        InitOut = new FuseInitOut
        {
            Major = 7,
            Minor = 38,
            MaxReadahead = 128 * 1024,
            Flags = (uint)(FuseInitFlags)((ulong)FuseConnOptions.DefaultFlags & 0xFFFF_FFFF),
            Flags2 = (uint)((ulong)FuseConnOptions.DefaultFlags >> 32),
            MaxBackground = 64,
            CongestionThreshold = 48,
            MaxWrite = 1 << 20,
            TimeGran = 1,
            MaxPages = 256,
        };
        _thread = new Thread(Run) { IsBackground = true, Name = "fake-daemon" };
        if (start)
        {
            _thread.Start();
        }
    }

    public FuseInitOut InitOut;

    /// <summary>Answers requests other than INIT (default: ENOSYS).</summary>
    public Func<SeenRequest, FakeAnswer> Handler { get; set; } = _ => FakeAnswer.Fail(Errno.ENOSYS);

    public ConcurrentQueue<SeenRequest> Seen { get; } = new();

    /// <summary>Answers written back and their write() results.</summary>
    public ConcurrentQueue<int> WriteResults { get; } = new();

    public void Start() => _thread.Start();

    public IEnumerable<SeenRequest> SeenOf(FuseOpcode opcode) => Seen.Where(r => r.Opcode == opcode);

    private void Run()
    {
        var buffer = new byte[(1 << 20) + 4096];
        while (!_stop.IsCancellationRequested)
        {
            int n = _channel.ReadRequest(buffer, cancellation: _stop.Token);
            if (n < 0)
            {
                if (n == -(int)Errno.ENODEV || n == -(int)Errno.EINTR)
                {
                    return;
                }
                continue;
            }
            var header = MemoryMarshal.Read<FuseInHeader>(buffer);
            var seen = new SeenRequest(header, buffer.AsSpan(FuseInHeader.Size, n - FuseInHeader.Size).ToArray());
            Seen.Enqueue(seen);
            FakeAnswer answer = seen.Opcode switch
            {
                FuseOpcode.Init => FakeAnswer.Of(InitOut),
                FuseOpcode.Forget or FuseOpcode.BatchForget => FakeAnswer.Silent,
                FuseOpcode.Interrupt => Handler(seen),
                _ => Handler(seen),
            };
            if (answer.NoAnswer)
            {
                continue;
            }
            WriteResults.Enqueue(Answer(_channel, header.Unique, answer));
        }
    }

    /// <summary>Writes an answer for <paramref name="unique"/>: a fuse_out_header and the payload.</summary>
    public static int Answer(InProcessChannelBackend channel, ulong unique, FakeAnswer answer)
    {
        int payload = answer.Error == 0 ? answer.Payload?.Length ?? 0 : 0;
        var message = new byte[FuseOutHeader.Size + payload];
        var oh = new FuseOutHeader { Len = (uint)message.Length, Error = answer.Error, Unique = unique };
        MemoryMarshal.Write(message, in oh);
        if (payload > 0)
        {
            answer.Payload!.CopyTo(message, FuseOutHeader.Size);
        }
        return channel.WriteReply(message);
    }

    public void Dispose()
    {
        _stop.Cancel();
        if (_thread.IsAlive)
        {
            _thread.Join(TimeSpan.FromSeconds(5));
        }
    }
}

/// <summary>A connection on an in-process channel with a fake daemon, initialized.</summary>
public sealed class FakeConnection : IDisposable
{
    public FakeConnection(Action<FakeDaemon>? configure = null, FuseConnOptions? options = null, bool init = true)
    {
        Channel = new InProcessChannelBackend();
        Daemon = new FakeDaemon(Channel, start: false);
        configure?.Invoke(Daemon);
        Daemon.Start();
        Conn = new FuseConn(Channel, options);
        if (init)
        {
            Conn.Init();
        }
    }

    public InProcessChannelBackend Channel { get; }
    public FakeDaemon Daemon { get; }
    public FuseConn Conn { get; }

    public void Dispose()
    {
        Conn.Dispose();
        Daemon.Dispose();
    }
}
