using Vhostfsd.GuestKernelShim;

namespace Vhostfsd.Testing;

/// <summary>Waits on the shim's virtio transport shared by several test classes.</summary>
public static class ShimWait
{
    /// <summary>True once every block of the transport's request heap has come back (false after 5 s).
    /// The completion thread returns a request's blocks just after it wakes the caller, so a caller
    /// that got its answer may look a moment before that: wait rather than read once.</summary>
    public static bool HeapReturned(VirtioFsBackend backend) =>
        SpinWait.SpinUntil(() => backend.HeapBytesInUse == 0, TimeSpan.FromSeconds(5));
}
