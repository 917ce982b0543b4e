using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Vhostfsd.VhostUser;

/// <summary>Named limits of the protocol as this implementation applies them.</summary>
public static class VhostUserLimits
{
    /// <summary>Largest payload accepted for any request (rust-vmm's MAX_MSG_SIZE): the
    /// variable-size payloads (memory table, config space) all fit well below it.</summary>
    public const int MaxPayloadSize = 0x1000;

    /// <summary>Most fds one message carries (VHOST_MEMORY_BASELINE_NREGIONS in QEMU).</summary>
    public const int MaxFds = 8;

    /// <summary>Most regions one SET_MEM_TABLE carries: one fd per region.</summary>
    public const int MaxMemTableRegions = 8;

    /// <summary>Memory slots reported by GET_MAX_MEM_SLOTS (KVM's limit, which QEMU caps to).</summary>
    public const int MaxMemSlots = 509;

    /// <summary>Largest split virtqueue (virtio 1.x: Queue Size ≤ 32768).</summary>
    public const int MaxQueueSize = 32768;

    /// <summary>Largest config-space access (QEMU's VHOST_USER_MAX_CONFIG_SIZE).</summary>
    public const int MaxConfigSize = 256;

    /// <summary>Queue indices travel in the low byte of the u64 of SET_VRING_KICK/CALL/ERR.</summary>
    public const ulong VringIndexMask = 0xFF;

    /// <summary>VHOST_USER_VRING_NOFD_MASK: no fd in the ancillary data (polling mode for kick).</summary>
    public const ulong VringNoFdFlag = 0x100;

    /// <summary>VHOST_VRING_F_LOG in SET_VRING_ADDR's flags.</summary>
    public const uint VringAddrFlagLog = 0x1;
}

/// <summary>The 12-byte message header: request, flags (version, reply, need_reply), payload size.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct VhostUserHeader
{
    public const int Size = 12;

    public uint Request;
    public uint Flags;
    public uint PayloadSize;

    public VhostUserHeader(uint request, VhostUserHeaderFlags flags, uint payloadSize)
    {
        Request = request;
        Flags = (uint)flags;
        PayloadSize = payloadSize;
    }

    public readonly uint Version => Flags & (uint)VhostUserHeaderFlags.VersionMask;
    public readonly bool IsReply => (Flags & (uint)VhostUserHeaderFlags.Reply) != 0;
    public readonly bool NeedsReply => (Flags & (uint)VhostUserHeaderFlags.NeedReply) != 0;
    public readonly bool HasReservedBits => (Flags & (uint)VhostUserHeaderFlags.ReservedMask) != 0;

    public static VhostUserHeader Read(ReadOnlySpan<byte> source) => MemoryMarshal.Read<VhostUserHeader>(source);

    public readonly void Write(Span<byte> destination) => MemoryMarshal.Write(destination, in this);

    public override readonly string ToString() => $"request {Request} flags 0x{Flags:x} size {PayloadSize}";
}

/// <summary>A vring state description: index + number (SET_VRING_NUM/BASE/ENABLE, GET_VRING_BASE).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct VringState
{
    public const int Size = 8;

    public uint Index;
    public uint Num;

    public VringState(uint index, uint num)
    {
        Index = index;
        Num = num;
    }
}

/// <summary>A vring address description (SET_VRING_ADDR). Ring addresses are VMM user addresses.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct VringAddress
{
    public const int Size = 40;

    public uint Index;
    public uint Flags;
    public ulong DescriptorTable;
    public ulong UsedRing;
    public ulong AvailableRing;
    public ulong LogGuestAddress;
}

/// <summary>One memory region: guest physical address, size, VMM user address, offset into the fd.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct MemoryRegionDescription
{
    public const int Size = 32;

    public ulong GuestPhysAddr;
    public ulong MemorySize;
    public ulong UserAddr;
    public ulong MmapOffset;

    public MemoryRegionDescription(ulong guestPhysAddr, ulong memorySize, ulong userAddr, ulong mmapOffset)
    {
        GuestPhysAddr = guestPhysAddr;
        MemorySize = memorySize;
        UserAddr = userAddr;
        MmapOffset = mmapOffset;
    }

    /// <summary>Non-empty, and none of the three ranges wraps around 2^64.</summary>
    public readonly bool IsWellFormed =>
        MemorySize != 0
        && GuestPhysAddr <= ulong.MaxValue - MemorySize
        && UserAddr <= ulong.MaxValue - MemorySize
        && MmapOffset <= ulong.MaxValue - MemorySize
        && MmapOffset <= long.MaxValue;

    public override readonly string ToString() =>
        $"gpa 0x{GuestPhysAddr:x} size 0x{MemorySize:x} uaddr 0x{UserAddr:x} offset 0x{MmapOffset:x}";
}

/// <summary>The first 8 bytes of SET_MEM_TABLE's payload; <see cref="NumRegions"/> regions follow.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct MemoryTableHeader
{
    public const int Size = 8;

    public uint NumRegions;
    public uint Padding;
}

[InlineArray(VhostUserLimits.MaxMemTableRegions)]
public struct MemoryRegionArray
{
    private MemoryRegionDescription _element0;
}

/// <summary>The full SET_MEM_TABLE payload as QEMU declares it (header + 8 regions, 264 bytes);
/// a message carries only the header and <see cref="MemoryTableHeader.NumRegions"/> regions.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct MemoryTable
{
    public const int Size = MemoryTableHeader.Size + VhostUserLimits.MaxMemTableRegions * MemoryRegionDescription.Size;

    public MemoryTableHeader Header;
    public MemoryRegionArray Regions;

    /// <summary>The payload size of a SET_MEM_TABLE with <paramref name="regions"/> regions.</summary>
    public static int PayloadSize(int regions) => MemoryTableHeader.Size + regions * MemoryRegionDescription.Size;
}

/// <summary>ADD_MEM_REG / REM_MEM_REG payload: 8 bytes of padding, then one region.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct SingleMemoryRegion
{
    public const int Size = 40;

    public ulong Padding;
    public MemoryRegionDescription Region;

    public SingleMemoryRegion(MemoryRegionDescription region)
    {
        Padding = 0;
        Region = region;
    }
}

/// <summary>SET_LOG_BASE payload.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct LogDescription
{
    public const int Size = 16;

    public ulong MmapSize;
    public ulong MmapOffset;
}

/// <summary>GET_CONFIG / SET_CONFIG header; <see cref="ConfigSize"/> bytes of config space follow.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct ConfigHeader
{
    public const int Size = 12;

    /// <summary>flags value: the write comes from the driver to a writable field.</summary>
    public const uint FlagWritable = 0;
    /// <summary>flags value: the write restores state during live migration.</summary>
    public const uint FlagLiveMigration = 1;

    public uint Offset;
    public uint ConfigSize;
    public uint Flags;

    public ConfigHeader(uint offset, uint configSize, uint flags)
    {
        Offset = offset;
        ConfigSize = configSize;
        Flags = flags;
    }
}

/// <summary>GET_INFLIGHT_FD / SET_INFLIGHT_FD payload (C layout: 20 bytes of fields, padded to 24).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct InflightDescription
{
    public const int Size = 24;

    public ulong MmapSize;
    public ulong MmapOffset;
    public ushort NumQueues;
    public ushort QueueSize;
    public uint Padding;
}

/// <summary>struct vhost_iotlb_msg (IOTLB_MSG): 26 bytes of fields, padded to 32.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct IotlbMessage
{
    public const int Size = 32;

    public ulong Iova;
    public ulong IotlbSize;
    public ulong UserAddr;
    public byte Permissions;
    public byte Type;
    public fixed byte Padding[6];
}

/// <summary>A vring area description (back-end VRING_HOST_NOTIFIER_MSG).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct VringAreaDescription
{
    public const int Size = 24;

    public ulong IndexAndFlags;
    public ulong AreaSize;
    public ulong Offset;
}

/// <summary>SET_DEVICE_STATE_FD payload: transfer direction and migration phase.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct DeviceStateTransfer
{
    public const int Size = 8;

    /// <summary>0 = save (back-end to front-end), 1 = load.</summary>
    public uint Direction;
    /// <summary>0 = stopped (the only phase defined).</summary>
    public uint Phase;
}

/// <summary>A virtio shared object UUID (GET_SHARED_OBJECT, SHARED_OBJECT_*).</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct SharedObjectUuid
{
    public const int Size = 16;

    public fixed byte Uuid[16];
}

/// <summary>The virtio-fs device configuration space (virtio 1.x, "File System Device"):
/// <c>char tag[36]; le32 num_request_queues;</c> (the optional notify_buf_size is not offered).</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct VirtioFsConfig
{
    public const int TagCapacity = 36;
    public const int Size = 40;

    public fixed byte Tag[TagCapacity];
    public uint NumRequestQueues;

    /// <summary>Builds the config for <paramref name="tag"/> (UTF-8, at most 36 bytes, NUL padded, not
    /// necessarily NUL terminated).</summary>
    public static VirtioFsConfig Create(string tag, uint numRequestQueues)
    {
        var config = new VirtioFsConfig { NumRequestQueues = numRequestQueues };
        int length = System.Text.Encoding.UTF8.GetByteCount(tag);
        if (length == 0 || length > TagCapacity)
        {
            throw new ArgumentException($"a virtio-fs tag is 1..{TagCapacity} bytes of UTF-8; '{tag}' is {length}", nameof(tag));
        }
        // SAFETY: Tag is a fixed 36-byte buffer inside the local struct; the length was checked above.
        System.Text.Encoding.UTF8.GetBytes(tag, new Span<byte>(config.Tag, TagCapacity));
        return config;
    }

    /// <summary>The tag up to its first NUL (or all 36 bytes).</summary>
    public readonly string TagString
    {
        get
        {
            fixed (byte* p = Tag)
            {
                // SAFETY: p points at the 36-byte tag of this struct.
                var span = new ReadOnlySpan<byte>(p, TagCapacity);
                int end = span.IndexOf((byte)0);
                return System.Text.Encoding.UTF8.GetString(end < 0 ? span : span[..end]);
            }
        }
    }
}

/// <summary>Reads and writes the wire structs at the start of a span, with length checks.</summary>
public static class Wire
{
    public static T Read<T>(ReadOnlySpan<byte> source) where T : unmanaged => MemoryMarshal.Read<T>(source);

    public static void Write<T>(Span<byte> destination, in T value) where T : unmanaged => MemoryMarshal.Write(destination, in value);

    public static ReadOnlySpan<byte> AsBytes<T>(ref readonly T value) where T : unmanaged =>
        MemoryMarshal.AsBytes(new ReadOnlySpan<T>(in value));
}
