using System.Runtime.InteropServices;

namespace Vhostfsd.Posix;

/// <summary>struct __user_cap_header_struct.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct CapUserHeader
{
    public const int Size = 8;
    public uint Version;
    public int Pid;
}

/// <summary>struct __user_cap_data_struct; version 3 passes an array of two (caps 0–31, 32–63).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct CapUserData
{
    public const int Size = 12;
    public uint Effective;
    public uint Permitted;
    public uint Inheritable;
}

/// <summary>Capability sets. capget/capset and the bounding-set prctls act on the calling thread
/// only; a thread created later inherits its creator's sets.</summary>
public static unsafe partial class Libc
{
    public const uint _LINUX_CAPABILITY_VERSION_3 = 0x20080522;

    /// <summary>CAP_FSETID: keep S_ISUID/S_ISGID when a file is written, truncated or chowned.</summary>
    public const int CAP_FSETID = 4;

    [LibraryImport(Lib, EntryPoint = "capget", SetLastError = true)]
    public static partial int Capget(CapUserHeader* header, CapUserData* data);

    [LibraryImport(Lib, EntryPoint = "capset", SetLastError = true)]
    public static partial int Capset(CapUserHeader* header, CapUserData* data);
}
