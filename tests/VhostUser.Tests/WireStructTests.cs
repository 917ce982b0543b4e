using System.Runtime.InteropServices;
using Vhostfsd.VhostUser;
using Xunit;

namespace Vhostfsd.VhostUser.Tests;

/// <summary>Pins every wire struct to the byte layout of vhost-user.rst / the virtio spec.</summary>
public unsafe class WireStructTests
{
    private static int Offset<T>(string field) => (int)Marshal.OffsetOf<T>(field);

    [Fact]
    public void SizesMatchTheSpec()
    {
        Assert.Equal(12, sizeof(VhostUserHeader));
        Assert.Equal(8, sizeof(VringState));
        Assert.Equal(40, sizeof(VringAddress));
        Assert.Equal(32, sizeof(MemoryRegionDescription));
        Assert.Equal(8, sizeof(MemoryTableHeader));
        Assert.Equal(8 + 8 * 32, sizeof(MemoryTable));
        Assert.Equal(40, sizeof(SingleMemoryRegion));
        Assert.Equal(16, sizeof(LogDescription));
        Assert.Equal(12, sizeof(ConfigHeader));
        Assert.Equal(24, sizeof(InflightDescription));
        Assert.Equal(32, sizeof(IotlbMessage));
        Assert.Equal(24, sizeof(VringAreaDescription));
        Assert.Equal(8, sizeof(DeviceStateTransfer));
        Assert.Equal(16, sizeof(SharedObjectUuid));
        Assert.Equal(40, sizeof(VirtioFsConfig));
    }

    [Fact]
    public void SizeConstantsMatchTheStructs()
    {
        Assert.Equal(VhostUserHeader.Size, sizeof(VhostUserHeader));
        Assert.Equal(VringState.Size, sizeof(VringState));
        Assert.Equal(VringAddress.Size, sizeof(VringAddress));
        Assert.Equal(MemoryRegionDescription.Size, sizeof(MemoryRegionDescription));
        Assert.Equal(MemoryTableHeader.Size, sizeof(MemoryTableHeader));
        Assert.Equal(MemoryTable.Size, sizeof(MemoryTable));
        Assert.Equal(SingleMemoryRegion.Size, sizeof(SingleMemoryRegion));
        Assert.Equal(LogDescription.Size, sizeof(LogDescription));
        Assert.Equal(ConfigHeader.Size, sizeof(ConfigHeader));
        Assert.Equal(InflightDescription.Size, sizeof(InflightDescription));
        Assert.Equal(IotlbMessage.Size, sizeof(IotlbMessage));
        Assert.Equal(VringAreaDescription.Size, sizeof(VringAreaDescription));
        Assert.Equal(DeviceStateTransfer.Size, sizeof(DeviceStateTransfer));
        Assert.Equal(SharedObjectUuid.Size, sizeof(SharedObjectUuid));
        Assert.Equal(VirtioFsConfig.Size, sizeof(VirtioFsConfig));
    }

    [Fact]
    public void HeaderOffsets()
    {
        Assert.Equal(0, Offset<VhostUserHeader>(nameof(VhostUserHeader.Request)));
        Assert.Equal(4, Offset<VhostUserHeader>(nameof(VhostUserHeader.Flags)));
        Assert.Equal(8, Offset<VhostUserHeader>(nameof(VhostUserHeader.PayloadSize)));
    }

    [Fact]
    public void VringOffsets()
    {
        Assert.Equal(0, Offset<VringState>(nameof(VringState.Index)));
        Assert.Equal(4, Offset<VringState>(nameof(VringState.Num)));
        Assert.Equal(0, Offset<VringAddress>(nameof(VringAddress.Index)));
        Assert.Equal(4, Offset<VringAddress>(nameof(VringAddress.Flags)));
        Assert.Equal(8, Offset<VringAddress>(nameof(VringAddress.DescriptorTable)));
        Assert.Equal(16, Offset<VringAddress>(nameof(VringAddress.UsedRing)));
        Assert.Equal(24, Offset<VringAddress>(nameof(VringAddress.AvailableRing)));
        Assert.Equal(32, Offset<VringAddress>(nameof(VringAddress.LogGuestAddress)));
        Assert.Equal(0, Offset<VringAreaDescription>(nameof(VringAreaDescription.IndexAndFlags)));
        Assert.Equal(8, Offset<VringAreaDescription>(nameof(VringAreaDescription.AreaSize)));
        Assert.Equal(16, Offset<VringAreaDescription>(nameof(VringAreaDescription.Offset)));
    }

    [Fact]
    public void MemoryOffsets()
    {
        Assert.Equal(0, Offset<MemoryRegionDescription>(nameof(MemoryRegionDescription.GuestPhysAddr)));
        Assert.Equal(8, Offset<MemoryRegionDescription>(nameof(MemoryRegionDescription.MemorySize)));
        Assert.Equal(16, Offset<MemoryRegionDescription>(nameof(MemoryRegionDescription.UserAddr)));
        Assert.Equal(24, Offset<MemoryRegionDescription>(nameof(MemoryRegionDescription.MmapOffset)));
        Assert.Equal(0, Offset<MemoryTableHeader>(nameof(MemoryTableHeader.NumRegions)));
        Assert.Equal(4, Offset<MemoryTableHeader>(nameof(MemoryTableHeader.Padding)));
        Assert.Equal(0, Offset<MemoryTable>(nameof(MemoryTable.Header)));
        Assert.Equal(8, Offset<MemoryTable>(nameof(MemoryTable.Regions)));
        Assert.Equal(0, Offset<SingleMemoryRegion>(nameof(SingleMemoryRegion.Padding)));
        Assert.Equal(8, Offset<SingleMemoryRegion>(nameof(SingleMemoryRegion.Region)));
        Assert.Equal(0, Offset<LogDescription>(nameof(LogDescription.MmapSize)));
        Assert.Equal(8, Offset<LogDescription>(nameof(LogDescription.MmapOffset)));
    }

    [Fact]
    public void ConfigInflightIotlbDeviceStateOffsets()
    {
        Assert.Equal(0, Offset<ConfigHeader>(nameof(ConfigHeader.Offset)));
        Assert.Equal(4, Offset<ConfigHeader>(nameof(ConfigHeader.ConfigSize)));
        Assert.Equal(8, Offset<ConfigHeader>(nameof(ConfigHeader.Flags)));
        Assert.Equal(0, Offset<InflightDescription>(nameof(InflightDescription.MmapSize)));
        Assert.Equal(8, Offset<InflightDescription>(nameof(InflightDescription.MmapOffset)));
        Assert.Equal(16, Offset<InflightDescription>(nameof(InflightDescription.NumQueues)));
        Assert.Equal(18, Offset<InflightDescription>(nameof(InflightDescription.QueueSize)));
        Assert.Equal(0, Offset<IotlbMessage>(nameof(IotlbMessage.Iova)));
        Assert.Equal(8, Offset<IotlbMessage>(nameof(IotlbMessage.IotlbSize)));
        Assert.Equal(16, Offset<IotlbMessage>(nameof(IotlbMessage.UserAddr)));
        Assert.Equal(24, Offset<IotlbMessage>(nameof(IotlbMessage.Permissions)));
        Assert.Equal(25, Offset<IotlbMessage>(nameof(IotlbMessage.Type)));
        Assert.Equal(0, Offset<DeviceStateTransfer>(nameof(DeviceStateTransfer.Direction)));
        Assert.Equal(4, Offset<DeviceStateTransfer>(nameof(DeviceStateTransfer.Phase)));
        Assert.Equal(0, Offset<VirtioFsConfig>(nameof(VirtioFsConfig.Tag)));
        Assert.Equal(36, Offset<VirtioFsConfig>(nameof(VirtioFsConfig.NumRequestQueues)));
    }

    [Fact]
    public void HeaderRoundTripsThroughBytesInNativeOrder()
    {
        var header = new VhostUserHeader((uint)VhostUserRequest.SetMemTable,
            VhostUserHeaderFlags.Version1 | VhostUserHeaderFlags.NeedReply, 0x48);
        Span<byte> bytes = stackalloc byte[VhostUserHeader.Size];
        header.Write(bytes);
        Assert.Equal(new byte[] { 5, 0, 0, 0, 0x9, 0, 0, 0, 0x48, 0, 0, 0 }, bytes.ToArray());
        var back = VhostUserHeader.Read(bytes);
        Assert.Equal(1u, back.Version);
        Assert.True(back.NeedsReply);
        Assert.False(back.IsReply);
        Assert.False(back.HasReservedBits);
        Assert.Equal(0x48u, back.PayloadSize);
    }

    [Fact]
    public void VirtioFsConfigCarriesTagAndQueueCount()
    {
        var config = VirtioFsConfig.Create("myfs", 1);
        var bytes = Wire.AsBytes(in config).ToArray();
        Assert.Equal((byte)'m', bytes[0]);
        Assert.Equal((byte)'s', bytes[3]);
        Assert.Equal(0, bytes[4]);
        Assert.Equal(1, BitConverter.ToInt32(bytes, 36));
        Assert.Equal("myfs", Wire.Read<VirtioFsConfig>(bytes).TagString);
        Assert.Equal(new string('t', 36), VirtioFsConfig.Create(new string('t', 36), 1).TagString);
        Assert.Throws<ArgumentException>(() => VirtioFsConfig.Create(new string('t', 37), 1));
        Assert.Throws<ArgumentException>(() => VirtioFsConfig.Create("", 1));
    }

    [Fact]
    public void RequestNumbersMatchTheSpec()
    {
        Assert.Equal(1u, (uint)VhostUserRequest.GetFeatures);
        Assert.Equal(5u, (uint)VhostUserRequest.SetMemTable);
        Assert.Equal(11u, (uint)VhostUserRequest.GetVringBase);
        Assert.Equal(15u, (uint)VhostUserRequest.GetProtocolFeatures);
        Assert.Equal(18u, (uint)VhostUserRequest.SetVringEnable);
        Assert.Equal(21u, (uint)VhostUserRequest.SetBackendReqFd);
        Assert.Equal(24u, (uint)VhostUserRequest.GetConfig);
        Assert.Equal(34u, (uint)VhostUserRequest.ResetDevice);
        Assert.Equal(36u, (uint)VhostUserRequest.GetMaxMemSlots);
        Assert.Equal(38u, (uint)VhostUserRequest.RemMemReg);
        Assert.Equal(40u, (uint)VhostUserRequest.GetStatus);
        Assert.Equal(43u, (uint)VhostUserRequest.CheckDeviceState);
        Assert.Equal(2u, (uint)VhostUserBackendRequest.ConfigChangeMsg);
        Assert.Equal(1UL << 15, (ulong)VhostUserProtocolFeatures.ConfigureMemSlots);
        Assert.Equal(1UL << 16, (ulong)VhostUserProtocolFeatures.Status);
        Assert.Equal(1UL << 30, VirtioFeatures.ProtocolFeatures);
        Assert.Equal(1UL << 32, VirtioFeatures.Version1);
    }
}
