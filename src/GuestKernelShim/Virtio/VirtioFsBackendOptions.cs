namespace Vhostfsd.GuestKernelShim;

/// <summary>Settings of a <see cref="VirtioFsBackend"/>: what QEMU's -device vhost-user-fs-pci and
/// -object memory-backend-memfd say, plus the driver's choices.</summary>
public sealed class VirtioFsBackendOptions
{
    /// <summary>The tag when the daemon does not offer its config space (QEMU's tag=).</summary>
    public string Tag { get; set; } = "virtiofs";

    /// <summary>Request queues when the daemon does not offer its config space (QEMU's num-request-queues=).</summary>
    public int NumRequestQueues { get; set; } = 1;

    /// <summary>Size of every queue (QEMU's queue-size=, default 128; larger lets more requests be in flight).</summary>
    public ushort QueueSize { get; set; } = 1024;

    /// <summary>Guest memory (one memfd region, shared with the daemon).</summary>
    public ulong MemorySize { get; set; } = 256UL << 20;

    /// <summary>Negotiate VIRTIO_RING_F_INDIRECT_DESC when offered (one ring slot per request).</summary>
    public bool UseIndirectDescriptors { get; set; } = true;

    /// <summary>Negotiate VIRTIO_RING_F_EVENT_IDX when offered (kick and interrupt suppression).</summary>
    public bool UseEventIdx { get; set; } = true;

    /// <summary>How long to wait for the daemon's socket to accept.</summary>
    public TimeSpan ConnectTimeout { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>Register the device by its tag for <see cref="FuseFs.Mount(string, MountOptions?, FuseConnOptions?)"/>.</summary>
    public bool Register { get; set; } = true;

    /// <summary>Receives one line per notable event (connection lost, broken queue).</summary>
    public Action<string>? Log { get; set; }
}
