using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Vhostfsd.FuseProtocol;
using Xunit;

namespace Vhostfsd.FusePassthrough.Tests;

/// <summary>Pins every protocol struct to the C layout of Linux include/uapi/linux/fuse.h:
/// the expected sizes and offsets were produced by compiling offsetof() against the header
/// (7.38 from linux-libc-dev, the 7.39–7.43 additions from the upstream header).</summary>
public class FuseStructLayoutTests
{
    private static void Check<T>(int declaredSize, int cSize, params (string Field, int Offset)[] fields) where T : unmanaged
    {
        string name = typeof(T).Name;
        Assert.True(cSize == declaredSize, $"{name}.Size is {declaredSize}, C sizeof is {cSize}");
        Assert.True(cSize == Unsafe.SizeOf<T>(), $"{name}: managed size {Unsafe.SizeOf<T>()}, C sizeof {cSize}");
        Assert.True(cSize == Marshal.SizeOf<T>(), $"{name}: marshalled size {Marshal.SizeOf<T>()}, C sizeof {cSize}");
        var declared = typeof(T).GetFields(System.Reflection.BindingFlags.Public | System.Reflection.BindingFlags.Instance);
        Assert.True(declared.Length == fields.Length, $"{name} has {declared.Length} fields, C has {fields.Length}");
        for (int i = 0; i < fields.Length; i++)
        {
            int actual = (int)Marshal.OffsetOf<T>(fields[i].Field);
            Assert.True(fields[i].Offset == actual, $"{name}.{fields[i].Field} at {actual}, C offset {fields[i].Offset}");
        }
    }

    [Fact]
    public void EveryStructMatchesTheCLayout()
    {
        Check<FuseAttr>(FuseAttr.Size, 88, ("Ino", 0), ("FileSize", 8), ("Blocks", 16), ("Atime", 24), ("Mtime", 32), ("Ctime", 40), ("AtimeNsec", 48), ("MtimeNsec", 52), ("CtimeNsec", 56), ("Mode", 60), ("Nlink", 64), ("Uid", 68), ("Gid", 72), ("Rdev", 76), ("BlkSize", 80), ("Flags", 84));
        Check<FuseSxTime>(FuseSxTime.Size, 16, ("TvSec", 0), ("TvNsec", 8), ("Reserved", 12));
        Check<FuseStatx>(FuseStatx.Size, 256, ("Mask", 0), ("BlkSize", 4), ("Attributes", 8), ("Nlink", 16), ("Uid", 20), ("Gid", 24), ("Mode", 28), ("Spare0", 30), ("Ino", 32), ("FileSize", 40), ("Blocks", 48), ("AttributesMask", 56), ("Atime", 64), ("Btime", 80), ("Ctime", 96), ("Mtime", 112), ("RdevMajor", 128), ("RdevMinor", 132), ("DevMajor", 136), ("DevMinor", 140), ("Spare2", 144));
        Check<FuseKStatfs>(FuseKStatfs.Size, 80, ("Blocks", 0), ("Bfree", 8), ("Bavail", 16), ("Files", 24), ("Ffree", 32), ("Bsize", 40), ("NameLen", 44), ("Frsize", 48), ("Padding", 52), ("Spare", 56));
        Check<FuseFileLock>(FuseFileLock.Size, 24, ("Start", 0), ("End", 8), ("Type", 16), ("Pid", 20));
        Check<FuseEntryOut>(FuseEntryOut.Size, 128, ("NodeId", 0), ("Generation", 8), ("EntryValid", 16), ("AttrValid", 24), ("EntryValidNsec", 32), ("AttrValidNsec", 36), ("Attr", 40));
        Check<FuseForgetIn>(FuseForgetIn.Size, 8, ("Nlookup", 0));
        Check<FuseForgetOne>(FuseForgetOne.Size, 16, ("NodeId", 0), ("Nlookup", 8));
        Check<FuseBatchForgetIn>(FuseBatchForgetIn.Size, 8, ("Count", 0), ("Dummy", 4));
        Check<FuseGetattrIn>(FuseGetattrIn.Size, 16, ("GetattrFlags", 0), ("Dummy", 4), ("Fh", 8));
        Check<FuseAttrOut>(FuseAttrOut.Size, 104, ("AttrValid", 0), ("AttrValidNsec", 8), ("Dummy", 12), ("Attr", 16));
        Check<FuseStatxIn>(FuseStatxIn.Size, 24, ("GetattrFlags", 0), ("Reserved", 4), ("Fh", 8), ("SxFlags", 16), ("SxMask", 20));
        Check<FuseStatxOut>(FuseStatxOut.Size, 288, ("AttrValid", 0), ("AttrValidNsec", 8), ("Flags", 12), ("Spare", 16), ("Stat", 32));
        Check<FuseMknodIn>(FuseMknodIn.Size, 16, ("Mode", 0), ("Rdev", 4), ("Umask", 8), ("Padding", 12));
        Check<FuseMkdirIn>(FuseMkdirIn.Size, 8, ("Mode", 0), ("Umask", 4));
        Check<FuseRenameIn>(FuseRenameIn.Size, 8, ("NewDir", 0));
        Check<FuseRename2In>(FuseRename2In.Size, 16, ("NewDir", 0), ("Flags", 8), ("Padding", 12));
        Check<FuseLinkIn>(FuseLinkIn.Size, 8, ("OldNodeId", 0));
        Check<FuseSetattrIn>(FuseSetattrIn.Size, 88, ("Valid", 0), ("Padding", 4), ("Fh", 8), ("FileSize", 16), ("LockOwner", 24), ("Atime", 32), ("Mtime", 40), ("Ctime", 48), ("AtimeNsec", 56), ("MtimeNsec", 60), ("CtimeNsec", 64), ("Mode", 68), ("Unused4", 72), ("Uid", 76), ("Gid", 80), ("Unused5", 84));
        Check<FuseOpenIn>(FuseOpenIn.Size, 8, ("Flags", 0), ("OpenFlags", 4));
        Check<FuseCreateIn>(FuseCreateIn.Size, 16, ("Flags", 0), ("Mode", 4), ("Umask", 8), ("OpenFlags", 12));
        Check<FuseOpenOut>(FuseOpenOut.Size, 16, ("Fh", 0), ("OpenFlags", 8), ("BackingId", 12));
        Check<FuseReleaseIn>(FuseReleaseIn.Size, 24, ("Fh", 0), ("Flags", 8), ("ReleaseFlags", 12), ("LockOwner", 16));
        Check<FuseFlushIn>(FuseFlushIn.Size, 24, ("Fh", 0), ("Unused", 8), ("Padding", 12), ("LockOwner", 16));
        Check<FuseReadIn>(FuseReadIn.Size, 40, ("Fh", 0), ("Offset", 8), ("Length", 16), ("ReadFlags", 20), ("LockOwner", 24), ("Flags", 32), ("Padding", 36));
        Check<FuseWriteIn>(FuseWriteIn.Size, 40, ("Fh", 0), ("Offset", 8), ("Length", 16), ("WriteFlags", 20), ("LockOwner", 24), ("Flags", 32), ("Padding", 36));
        Check<FuseWriteOut>(FuseWriteOut.Size, 8, ("Length", 0), ("Padding", 4));
        Check<FuseStatfsOut>(FuseStatfsOut.Size, 80, ("St", 0));
        Check<FuseFsyncIn>(FuseFsyncIn.Size, 16, ("Fh", 0), ("FsyncFlags", 8), ("Padding", 12));
        Check<FuseSetxattrIn>(FuseSetxattrIn.Size, 16, ("Length", 0), ("Flags", 4), ("SetxattrFlags", 8), ("Padding", 12));
        Check<FuseGetxattrIn>(FuseGetxattrIn.Size, 8, ("Length", 0), ("Padding", 4));
        Check<FuseGetxattrOut>(FuseGetxattrOut.Size, 8, ("Length", 0), ("Padding", 4));
        Check<FuseLkIn>(FuseLkIn.Size, 48, ("Fh", 0), ("Owner", 8), ("Lk", 16), ("LkFlags", 40), ("Padding", 44));
        Check<FuseLkOut>(FuseLkOut.Size, 24, ("Lk", 0));
        Check<FuseAccessIn>(FuseAccessIn.Size, 8, ("Mask", 0), ("Padding", 4));
        Check<FuseInitIn>(FuseInitIn.Size, 64, ("Major", 0), ("Minor", 4), ("MaxReadahead", 8), ("Flags", 12), ("Flags2", 16), ("Unused", 20));
        Check<FuseInitOut>(FuseInitOut.Size, 64, ("Major", 0), ("Minor", 4), ("MaxReadahead", 8), ("Flags", 12), ("MaxBackground", 16), ("CongestionThreshold", 18), ("MaxWrite", 20), ("TimeGran", 24), ("MaxPages", 28), ("MapAlignment", 30), ("Flags2", 32), ("MaxStackDepth", 36), ("RequestTimeout", 40), ("Unused", 42));
        Check<CuseInitIn>(CuseInitIn.Size, 16, ("Major", 0), ("Minor", 4), ("Unused", 8), ("Flags", 12));
        Check<CuseInitOut>(CuseInitOut.Size, 72, ("Major", 0), ("Minor", 4), ("Unused", 8), ("Flags", 12), ("MaxRead", 16), ("MaxWrite", 20), ("DevMajor", 24), ("DevMinor", 28), ("Spare", 32));
        Check<FuseInterruptIn>(FuseInterruptIn.Size, 8, ("Unique", 0));
        Check<FuseBmapIn>(FuseBmapIn.Size, 16, ("Block", 0), ("BlockSize", 8), ("Padding", 12));
        Check<FuseBmapOut>(FuseBmapOut.Size, 8, ("Block", 0));
        Check<FuseIoctlIn>(FuseIoctlIn.Size, 32, ("Fh", 0), ("Flags", 8), ("Cmd", 12), ("Arg", 16), ("InSize", 24), ("OutSize", 28));
        Check<FuseIoctlIovec>(FuseIoctlIovec.Size, 16, ("Base", 0), ("Len", 8));
        Check<FuseIoctlOut>(FuseIoctlOut.Size, 16, ("Result", 0), ("Flags", 4), ("InIovs", 8), ("OutIovs", 12));
        Check<FusePollIn>(FusePollIn.Size, 24, ("Fh", 0), ("Kh", 8), ("Flags", 16), ("Events", 20));
        Check<FusePollOut>(FusePollOut.Size, 8, ("Revents", 0), ("Padding", 4));
        Check<FuseNotifyPollWakeupOut>(FuseNotifyPollWakeupOut.Size, 8, ("Kh", 0));
        Check<FuseFallocateIn>(FuseFallocateIn.Size, 32, ("Fh", 0), ("Offset", 8), ("Length", 16), ("Mode", 24), ("Padding", 28));
        Check<FuseInHeader>(FuseInHeader.Size, 40, ("Len", 0), ("Opcode", 4), ("Unique", 8), ("NodeId", 16), ("Uid", 24), ("Gid", 28), ("Pid", 32), ("TotalExtLen", 36), ("Padding", 38));
        Check<FuseOutHeader>(FuseOutHeader.Size, 16, ("Len", 0), ("Error", 4), ("Unique", 8));
        Check<FuseDirent>(FuseDirent.Size, 24, ("Ino", 0), ("Off", 8), ("NameLen", 16), ("Type", 20));
        Check<FuseDirentplus>(FuseDirentplus.Size, 152, ("EntryOut", 0), ("Dirent", 128));
        Check<FuseNotifyInvalInodeOut>(FuseNotifyInvalInodeOut.Size, 24, ("Ino", 0), ("Off", 8), ("Len", 16));
        Check<FuseNotifyInvalEntryOut>(FuseNotifyInvalEntryOut.Size, 16, ("Parent", 0), ("NameLen", 8), ("Flags", 12));
        Check<FuseNotifyDeleteOut>(FuseNotifyDeleteOut.Size, 24, ("Parent", 0), ("Child", 8), ("NameLen", 16), ("Padding", 20));
        Check<FuseNotifyStoreOut>(FuseNotifyStoreOut.Size, 24, ("NodeId", 0), ("Offset", 8), ("Length", 16), ("Padding", 20));
        Check<FuseNotifyRetrieveOut>(FuseNotifyRetrieveOut.Size, 32, ("NotifyUnique", 0), ("NodeId", 8), ("Offset", 16), ("Length", 24), ("Padding", 28));
        Check<FuseNotifyRetrieveIn>(FuseNotifyRetrieveIn.Size, 40, ("Dummy1", 0), ("Offset", 8), ("Length", 16), ("Dummy2", 20), ("Dummy3", 24), ("Dummy4", 32));
        Check<FuseBackingMap>(FuseBackingMap.Size, 16, ("Fd", 0), ("Flags", 4), ("Padding", 8));
        Check<FuseLseekIn>(FuseLseekIn.Size, 24, ("Fh", 0), ("Offset", 8), ("Whence", 16), ("Padding", 20));
        Check<FuseLseekOut>(FuseLseekOut.Size, 8, ("Offset", 0));
        Check<FuseCopyFileRangeIn>(FuseCopyFileRangeIn.Size, 56, ("FhIn", 0), ("OffIn", 8), ("NodeIdOut", 16), ("FhOut", 24), ("OffOut", 32), ("Len", 40), ("Flags", 48));
        Check<FuseSetupmappingIn>(FuseSetupmappingIn.Size, 40, ("Fh", 0), ("FOffset", 8), ("Len", 16), ("Flags", 24), ("MOffset", 32));
        Check<FuseRemovemappingIn>(FuseRemovemappingIn.Size, 4, ("Count", 0));
        Check<FuseRemovemappingOne>(FuseRemovemappingOne.Size, 16, ("MOffset", 0), ("Len", 8));
        Check<FuseSyncfsIn>(FuseSyncfsIn.Size, 8, ("Padding", 0));
        Check<FuseSecctx>(FuseSecctx.Size, 8, ("Length", 0), ("Padding", 4));
        Check<FuseSecctxHeader>(FuseSecctxHeader.Size, 8, ("Length", 0), ("NrSecctx", 4));
        Check<FuseExtHeader>(FuseExtHeader.Size, 8, ("Length", 0), ("Type", 4));
        Check<FuseSuppGroups>(FuseSuppGroups.Size, 4, ("NrGroups", 0));
        Check<FuseUringEntInOut>(FuseUringEntInOut.Size, 32, ("Flags", 0), ("CommitId", 8), ("PayloadSz", 16), ("Padding", 20), ("Reserved", 24));
        Check<FuseUringCmdReq>(FuseUringCmdReq.Size, 24, ("Flags", 0), ("CommitId", 8), ("Qid", 16), ("Padding", 18));    }

    [Fact]
    public void OpcodesHaveTheHeaderValues()
    {
        Assert.Equal(1u, (uint)FuseOpcode.Lookup);
        Assert.Equal(2u, (uint)FuseOpcode.Forget);
        Assert.Equal(8u, (uint)FuseOpcode.Mknod);
        Assert.Equal(18u, (uint)FuseOpcode.Release);
        Assert.Equal(20u, (uint)FuseOpcode.Fsync);
        Assert.Equal(26u, (uint)FuseOpcode.Init);
        Assert.Equal(36u, (uint)FuseOpcode.Interrupt);
        Assert.Equal(42u, (uint)FuseOpcode.BatchForget);
        Assert.Equal(44u, (uint)FuseOpcode.Readdirplus);
        Assert.Equal(47u, (uint)FuseOpcode.CopyFileRange);
        Assert.Equal(50u, (uint)FuseOpcode.Syncfs);
        Assert.Equal(51u, (uint)FuseOpcode.Tmpfile);
        Assert.Equal(52u, (uint)FuseOpcode.Statx);
        Assert.Equal(4096u, (uint)FuseOpcode.CuseInit);
        Assert.Equal((uint)FuseOpcode.Init << 24, (uint)FuseOpcode.FuseInitBswapReserved);
        Assert.Equal((uint)FuseOpcode.CuseInit << 8, (uint)FuseOpcode.CuseInitBswapReserved);
    }

    [Fact]
    public void InitFlagsSplitIntoFlagsAndFlags2()
    {
        Assert.Equal(1UL << 30, (ulong)FuseInitFlags.InitExt);
        Assert.Equal(1UL << 32, (ulong)FuseInitFlags.SecurityCtx);
        Assert.Equal(1UL << 34, (ulong)FuseInitFlags.CreateSuppGroup);
        Assert.Equal(1UL << 36, (ulong)FuseInitFlags.DirectIoAllowMmap);
        Assert.Equal(1UL << 40, (ulong)FuseInitFlags.AllowIdmap);
        var (flags, flags2) = FuseConstants.SplitInitFlags(FuseInitFlags.AsyncRead | FuseInitFlags.InitExt | FuseInitFlags.SecurityCtx | FuseInitFlags.CreateSuppGroup);
        Assert.Equal(1u | (1u << 30), flags);
        Assert.Equal(1u | (1u << 2), flags2);
        Assert.Equal(FuseInitFlags.AsyncRead | FuseInitFlags.InitExt | FuseInitFlags.SecurityCtx | FuseInitFlags.CreateSuppGroup, FuseConstants.JoinInitFlags(flags, flags2));
    }

    [Fact]
    public void DirentRecordsAreEightByteAligned()
    {
        Assert.Equal(24, FuseConstants.NameOffset);
        Assert.Equal(152, FuseConstants.NameOffsetDirentplus);
        Assert.Equal(24, FuseConstants.DirentSize(0));
        Assert.Equal(32, FuseConstants.DirentSize(1));
        Assert.Equal(32, FuseConstants.DirentSize(8));
        Assert.Equal(40, FuseConstants.DirentSize(9));
        Assert.Equal(160, FuseConstants.DirentplusSize(3));
        Assert.Equal(8192, FuseConstants.MinReadBuffer);
    }

    [Fact]
    public void OtherFlagValuesMatchTheHeader()
    {
        Assert.Equal(1u << 3, (uint)FuseOpenOutFlags.CacheDir);
        Assert.Equal(1u << 5, (uint)FuseOpenOutFlags.NoFlush);
        Assert.Equal(1u << 6, (uint)FuseOpenOutFlags.ParallelDirectWrites);
        Assert.Equal(1u << 11, (uint)FuseSetattrValid.KillSuidgid);
        Assert.Equal(1u << 10, (uint)FuseSetattrValid.Ctime);
        Assert.Equal(1u << 2, (uint)FuseWriteFlags.KillSuidgid);
        Assert.Equal(1u << 1, (uint)FuseReleaseFlags.FlockUnlock);
        Assert.Equal(32u, (uint)FuseExtType.Groups);
        Assert.Equal(1UL << 63, FuseConstants.UniqueResend);
    }
}
