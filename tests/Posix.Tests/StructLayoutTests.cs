using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Vhostfsd.Posix;
using Xunit;

namespace Vhostfsd.Posix.Tests;

public unsafe class StructLayoutTests
{
    [Fact]
    public void KernelStructsHaveX8664Sizes()
    {
        Assert.Equal(16, sizeof(IoVec));
        Assert.Equal(56, sizeof(MsgHdr));
        Assert.Equal(16, sizeof(CMsgHdr));
        Assert.Equal(110, sizeof(SockAddrUn));
        Assert.Equal(12, sizeof(EpollEvent));
        Assert.Equal(8, sizeof(PollFd));
        Assert.Equal(12, sizeof(UCred));
    }

    [Fact]
    public void MsgHdrFieldOffsetsMatchGlibc()
    {
        Assert.Equal(0, (int)Marshal.OffsetOf<MsgHdr>(nameof(MsgHdr.Name)));
        Assert.Equal(8, (int)Marshal.OffsetOf<MsgHdr>(nameof(MsgHdr.NameLen)));
        Assert.Equal(16, (int)Marshal.OffsetOf<MsgHdr>(nameof(MsgHdr.Iov)));
        Assert.Equal(24, (int)Marshal.OffsetOf<MsgHdr>(nameof(MsgHdr.IovLen)));
        Assert.Equal(32, (int)Marshal.OffsetOf<MsgHdr>(nameof(MsgHdr.Control)));
        Assert.Equal(40, (int)Marshal.OffsetOf<MsgHdr>(nameof(MsgHdr.ControlLen)));
        Assert.Equal(48, (int)Marshal.OffsetOf<MsgHdr>(nameof(MsgHdr.Flags)));
        Assert.Equal(4, (int)Marshal.OffsetOf<EpollEvent>(nameof(EpollEvent.Data)));
    }

    [Fact]
    public void SeccompFilterStructsMatchLinuxFilterH()
    {
        // struct sock_filter { __u16 code; __u8 jt; __u8 jf; __u32 k; }
        Assert.Equal(SockFilter.Size, sizeof(SockFilter));
        Assert.Equal(0, (int)Marshal.OffsetOf<SockFilter>(nameof(SockFilter.Code)));
        Assert.Equal(2, (int)Marshal.OffsetOf<SockFilter>(nameof(SockFilter.JumpTrue)));
        Assert.Equal(3, (int)Marshal.OffsetOf<SockFilter>(nameof(SockFilter.JumpFalse)));
        Assert.Equal(4, (int)Marshal.OffsetOf<SockFilter>(nameof(SockFilter.K)));
        // struct sock_fprog { unsigned short len; struct sock_filter *filter; }: the pointer is 8-aligned.
        Assert.Equal(SockFprog.Size, sizeof(SockFprog));
        Assert.Equal(0, (int)Marshal.OffsetOf<SockFprog>(nameof(SockFprog.Length)));
        Assert.Equal(8, (int)Marshal.OffsetOf<SockFprog>(nameof(SockFprog.Filter)));
    }
}
