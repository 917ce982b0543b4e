namespace Vhostfsd.VhostUser;

/// <summary>Requests a front-end (the VMM) sends to a back-end, with the numbers of QEMU's
/// docs/interop/vhost-user.rst ("Front-end message types").</summary>
public enum VhostUserRequest : uint
{
    None = 0,
    GetFeatures = 1,
    SetFeatures = 2,
    SetOwner = 3,
    ResetOwner = 4,
    SetMemTable = 5,
    SetLogBase = 6,
    SetLogFd = 7,
    SetVringNum = 8,
    SetVringAddr = 9,
    SetVringBase = 10,
    GetVringBase = 11,
    SetVringKick = 12,
    SetVringCall = 13,
    SetVringErr = 14,
    GetProtocolFeatures = 15,
    SetProtocolFeatures = 16,
    GetQueueNum = 17,
    SetVringEnable = 18,
    SendRarp = 19,
    NetSetMtu = 20,
    SetBackendReqFd = 21,
    IotlbMsg = 22,
    SetVringEndian = 23,
    GetConfig = 24,
    SetConfig = 25,
    CreateCryptoSession = 26,
    CloseCryptoSession = 27,
    PostcopyAdvise = 28,
    PostcopyListen = 29,
    PostcopyEnd = 30,
    GetInflightFd = 31,
    SetInflightFd = 32,
    GpuSetSocket = 33,
    ResetDevice = 34,
    VringKick = 35,
    GetMaxMemSlots = 36,
    AddMemReg = 37,
    RemMemReg = 38,
    SetStatus = 39,
    GetStatus = 40,
    GetSharedObject = 41,
    SetDeviceStateFd = 42,
    CheckDeviceState = 43,
    GetShmemConfig = 44,
}

/// <summary>Requests a back-end sends to the front-end over the channel given by
/// SET_BACKEND_REQ_FD ("Back-end message types").</summary>
public enum VhostUserBackendRequest : uint
{
    None = 0,
    IotlbMsg = 1,
    ConfigChangeMsg = 2,
    VringHostNotifierMsg = 3,
    VringCall = 4,
    VringErr = 5,
    SharedObjectAdd = 6,
    SharedObjectRemove = 7,
    SharedObjectLookup = 8,
    ShmemMap = 9,
    ShmemUnmap = 10,
}

/// <summary>Bits of the header's flags word.</summary>
[Flags]
public enum VhostUserHeaderFlags : uint
{
    None = 0,
    /// <summary>The protocol version, in the low two bits; the only version is 1.</summary>
    Version1 = 0x1,
    VersionMask = 0x3,
    /// <summary>Set on every reply.</summary>
    Reply = 0x4,
    /// <summary>The sender asks for an acknowledgement (REPLY_ACK).</summary>
    NeedReply = 0x8,
    /// <summary>Every bit above the defined ones: must be zero.</summary>
    ReservedMask = ~0xFu,
}

/// <summary>Virtio feature bits the vhost-user transport deals with (bit numbers from the
/// virtio 1.x spec and vhost-user.rst), as masks.</summary>
public static class VirtioFeatures
{
    public const int NotifyOnEmptyBit = 24;
    public const int AnyLayoutBit = 27;
    public const int RingIndirectDescBit = 28;
    public const int RingEventIdxBit = 29;
    /// <summary>VHOST_USER_F_PROTOCOL_FEATURES: reuses the reserved virtio bit 30.</summary>
    public const int ProtocolFeaturesBit = 30;
    public const int Version1Bit = 32;
    public const int AccessPlatformBit = 33;
    public const int RingPackedBit = 34;
    public const int LogAllBit = 26;

    public const ulong NotifyOnEmpty = 1UL << NotifyOnEmptyBit;
    public const ulong LogAll = 1UL << LogAllBit;
    public const ulong RingIndirectDesc = 1UL << RingIndirectDescBit;
    public const ulong RingEventIdx = 1UL << RingEventIdxBit;
    public const ulong ProtocolFeatures = 1UL << ProtocolFeaturesBit;
    public const ulong Version1 = 1UL << Version1Bit;
    public const ulong AccessPlatform = 1UL << AccessPlatformBit;
    public const ulong RingPacked = 1UL << RingPackedBit;

    /// <summary>The names of the transport bits set in <paramref name="features"/>, for log lines
    /// (unnamed bits as "bit N").</summary>
    public static string Describe(ulong features)
    {
        var names = new List<string>();
        for (int bit = 0; bit < 64; bit++)
        {
            if ((features & (1UL << bit)) == 0)
            {
                continue;
            }
            names.Add(bit switch
            {
                NotifyOnEmptyBit => "NOTIFY_ON_EMPTY",
                AnyLayoutBit => "ANY_LAYOUT",
                RingIndirectDescBit => "RING_INDIRECT_DESC",
                RingEventIdxBit => "RING_EVENT_IDX",
                ProtocolFeaturesBit => "PROTOCOL_FEATURES",
                Version1Bit => "VERSION_1",
                AccessPlatformBit => "ACCESS_PLATFORM",
                RingPackedBit => "RING_PACKED",
                LogAllBit => "LOG_ALL",
                _ => "bit " + bit,
            });
        }
        return names.Count == 0 ? "none" : string.Join(", ", names);
    }
}

/// <summary>vhost-user protocol feature bits (VHOST_USER_PROTOCOL_F_*), as masks.</summary>
[Flags]
public enum VhostUserProtocolFeatures : ulong
{
    None = 0,
    Mq = 1UL << 0,
    LogShmfd = 1UL << 1,
    Rarp = 1UL << 2,
    ReplyAck = 1UL << 3,
    Mtu = 1UL << 4,
    BackendReq = 1UL << 5,
    CrossEndian = 1UL << 6,
    CryptoSession = 1UL << 7,
    Pagefault = 1UL << 8,
    Config = 1UL << 9,
    BackendSendFd = 1UL << 10,
    HostNotifier = 1UL << 11,
    InflightShmfd = 1UL << 12,
    ResetDevice = 1UL << 13,
    InbandNotifications = 1UL << 14,
    ConfigureMemSlots = 1UL << 15,
    Status = 1UL << 16,
    XenMmap = 1UL << 17,
    SharedObject = 1UL << 18,
    DeviceState = 1UL << 19,
    Shmem = 1UL << 20,
}

/// <summary>Virtio device status bits (virtio 1.x, "Device Status Field"), carried by SET_STATUS / GET_STATUS.</summary>
[Flags]
public enum VirtioDeviceStatus : byte
{
    Reset = 0,
    Acknowledge = 1,
    Driver = 2,
    DriverOk = 4,
    FeaturesOk = 8,
    DeviceNeedsReset = 64,
    Failed = 128,
}
