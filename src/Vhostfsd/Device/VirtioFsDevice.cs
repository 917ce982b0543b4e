using Vhostfsd.FusePassthrough;
using Vhostfsd.VhostUser;

namespace Vhostfsd.Device;

/// <summary>The virtio-fs device (virtio 1.x "File System Device") behind the vhost-user back-end:
/// queue 0 is hiprio (FORGET, BATCH_FORGET, INTERRUPT), queues 1..N are request queues. Every queue
/// feeds the same <see cref="FuseServer"/> through one stateless handler: the server is the only
/// state on the hot path.</summary>
public sealed class VirtioFsDevice : IVhostUserDevice
{
    /// <summary>Largest ring the device accepts (the virtio limit, as the Rust virtiofsd).</summary>
    public const ushort MaxRingSize = 32768;

    private readonly FuseServer _server;
    private readonly VirtioFsConfig _config;
    private readonly FuseRequestHandler _handler;

    /// <param name="tag">Served through GET_CONFIG; null means the CONFIG protocol feature is not
    /// offered (QEMU 7.1–8.0 mishandle it, so it is opt-in as in the Rust virtiofsd).</param>
    public VirtioFsDevice(FuseServer server, string? tag, int requestQueues, BlockingRequestPool? pool)
    {
        if (requestQueues < 1 || requestQueues > 255)
        {
            throw new ArgumentOutOfRangeException(nameof(requestQueues), requestQueues, "a virtio-fs device has 1..255 request queues");
        }
        _server = server;
        Tag = tag;
        RequestQueues = requestQueues;
        _config = tag is null ? default : VirtioFsConfig.Create(tag, (uint)requestQueues);
        _handler = new FuseRequestHandler(server, pool);
    }

    public string? Tag { get; }
    public int RequestQueues { get; }
    public FuseServer Server => _server;

    public int QueueCount => 1 + RequestQueues;
    public ushort MaxQueueSize => MaxRingSize;

    // VIRTIO_FS_F_NOTIFICATION (bit 0) is not offered: the daemon sends no notifications.
    public ulong DeviceFeatures => 0;
    public bool OffersConfig => Tag is not null;

    public unsafe bool ReadConfig(uint offset, Span<byte> destination)
    {
        if (Tag is null || offset > VirtioFsConfig.Size || (ulong)offset + (ulong)destination.Length > VirtioFsConfig.Size)
        {
            return false;
        }
        VirtioFsConfig config = _config;
        // SAFETY: config is a local 40-byte struct; the range was checked against its size above.
        new ReadOnlySpan<byte>((byte*)&config + offset, destination.Length).CopyTo(destination);
        return true;
    }

    // The virtio-fs configuration space is read-only for the driver.
    public bool WriteConfig(uint offset, ReadOnlySpan<byte> source, uint flags) => false;

    // The back-end only asks for indices below QueueCount.
    public IVringHandler GetVringHandler(int queueIndex) => _handler;

    // Nobody waits on hiprio (FORGET and BATCH_FORGET have no reply; INTERRUPTs are rare): polling it
    // would only take CPU from the request queues and the guest.
    public bool MayPoll(int queueIndex) => queueIndex != 0;

    /// <summary>RESET_DEVICE or the end of the session: the guest's inodes and handles go away.</summary>
    public void Reset() => _server.Reset();
}
