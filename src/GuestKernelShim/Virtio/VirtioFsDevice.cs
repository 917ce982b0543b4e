namespace Vhostfsd.GuestKernelShim;

/// <summary>The virtio-fs devices of this "guest", by tag (Linux's virtio_fs_instances list): a device
/// registers when it is set up, and mount -t virtiofs TAG (<see cref="FuseFs.Mount(string, MountOptions?, FuseConnOptions?)"/>)
/// finds it here. A tag names one device; a second device with the same tag is refused (EEXIST in Linux).</summary>
public static class VirtioFsDevice
{
    private static readonly Dictionary<string, IFuseTransport> s_devices = new(StringComparer.Ordinal);

    /// <summary>Registers <paramref name="device"/> under <paramref name="tag"/>; throws when the tag is taken.</summary>
    public static void Register(string tag, IFuseTransport device)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentException.ThrowIfNullOrEmpty(tag);
        lock (s_devices)
        {
            if (!s_devices.TryAdd(tag, device))
            {
                throw new InvalidOperationException($"a virtio-fs device with tag '{tag}' already exists");
            }
        }
    }

    /// <summary>Removes the registration of <paramref name="device"/> (if it is the one under <paramref name="tag"/>).</summary>
    public static void Unregister(string tag, IFuseTransport device)
    {
        lock (s_devices)
        {
            if (s_devices.TryGetValue(tag, out var present) && ReferenceEquals(present, device))
            {
                s_devices.Remove(tag);
            }
        }
    }

    /// <summary>The device registered under <paramref name="tag"/>, or null.</summary>
    public static IFuseTransport? Find(string tag)
    {
        lock (s_devices)
        {
            return s_devices.GetValueOrDefault(tag);
        }
    }

    /// <summary>Tags of every registered device.</summary>
    public static IReadOnlyList<string> Tags
    {
        get
        {
            lock (s_devices)
            {
                return s_devices.Keys.ToArray();
            }
        }
    }
}
