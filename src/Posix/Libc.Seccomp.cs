using System.Runtime.InteropServices;

namespace Vhostfsd.Posix;

/// <summary>struct sock_filter (linux/filter.h): one classic BPF instruction.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct SockFilter
{
    public const int Size = 8;
    public ushort Code;
    public byte JumpTrue;
    public byte JumpFalse;
    public uint K;

    public SockFilter(ushort code, byte jumpTrue, byte jumpFalse, uint k)
    {
        Code = code;
        JumpTrue = jumpTrue;
        JumpFalse = jumpFalse;
        K = k;
    }

    /// <summary>BPF_STMT(code, k).</summary>
    public static SockFilter Statement(ushort code, uint k) => new(code, 0, 0, k);

    /// <summary>BPF_JUMP(code, k, jt, jf).</summary>
    public static SockFilter Jump(ushort code, uint k, byte jumpTrue, byte jumpFalse) => new(code, jumpTrue, jumpFalse, k);
}

/// <summary>struct sock_fprog: the program's length in instructions and where it is. The
/// pointer is 8-aligned, so 6 bytes of padding follow the length.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct SockFprog
{
    public const int Size = 16;
    public ushort Length;
    public SockFilter* Filter;
}

/// <summary>seccomp(2) and the classic BPF vocabulary its filters are written in
/// (linux/seccomp.h, linux/filter.h, linux/bpf_common.h, linux/audit.h).</summary>
public static unsafe partial class Libc
{
    // Instruction classes, sizes, modes, operations and sources (linux/bpf_common.h).
    public const ushort BPF_LD = 0x00;
    public const ushort BPF_JMP = 0x05;
    public const ushort BPF_RET = 0x06;
    public const ushort BPF_W = 0x00;
    public const ushort BPF_ABS = 0x20;
    public const ushort BPF_JA = 0x00;
    public const ushort BPF_JEQ = 0x10;
    public const ushort BPF_JGT = 0x20;
    public const ushort BPF_JGE = 0x30;
    public const ushort BPF_JSET = 0x40;
    public const ushort BPF_K = 0x00;

    /// <summary>Most instructions one filter may hold (BPF_MAXINSNS).</summary>
    public const int BPF_MAXINSNS = 4096;

    // seccomp(2) operations and flags.
    public const uint SECCOMP_SET_MODE_FILTER = 1;
    public const uint SECCOMP_FILTER_FLAG_TSYNC = 1;
    /// <summary>Log every action but "allow" (without it the kernel logs only kill and log).</summary>
    public const uint SECCOMP_FILTER_FLAG_LOG = 2;

    // Filter return values; the high 16 bits choose the action (SECCOMP_RET_ACTION_FULL).
    public const uint SECCOMP_RET_KILL_PROCESS = 0x80000000;
    public const uint SECCOMP_RET_KILL_THREAD = 0x00000000;
    public const uint SECCOMP_RET_TRAP = 0x00030000;
    public const uint SECCOMP_RET_ERRNO = 0x00050000;
    public const uint SECCOMP_RET_LOG = 0x7ffc0000;
    public const uint SECCOMP_RET_ALLOW = 0x7fff0000;
    public const uint SECCOMP_RET_ACTION_FULL = 0xffff0000;

    // Offsets in struct seccomp_data, what a filter reads with BPF_LD|BPF_W|BPF_ABS.
    public const uint SECCOMP_DATA_NR = 0;
    public const uint SECCOMP_DATA_ARCH = 4;
    public const uint SECCOMP_DATA_INSTRUCTION_POINTER = 8;
    public const uint SECCOMP_DATA_ARGS = 16;

    // AUDIT_ARCH_* values seccomp_data.arch holds for the ABI a call came through.
    public const uint AUDIT_ARCH_X86_64 = 0xc000003e;
    public const uint AUDIT_ARCH_I386 = 0x40000003;
    public const uint AUDIT_ARCH_AARCH64 = 0xc00000b7;

    /// <summary>Set in the number of a call made through the x32 ABI, which shares
    /// AUDIT_ARCH_X86_64 with the 64-bit one.</summary>
    public const uint __X32_SYSCALL_BIT = 0x40000000;

    // seccomp(2) by architecture: glibc has no wrapper, and the number differs.
    public const long SYS_seccomp_x86_64 = 317;
    public const long SYS_seccomp_aarch64 = 277;

    /// <summary>seccomp(SECCOMP_SET_MODE_FILTER, flags, program). Without CAP_SYS_ADMIN the
    /// calling thread needs no_new_privs first (<see cref="PR_SET_NO_NEW_PRIVS"/>); with
    /// <see cref="SECCOMP_FILTER_FLAG_TSYNC"/> every thread of the process gets the filter (and
    /// no_new_privs) or none does: a positive result is the id of a thread that could not be
    /// synchronised. -1 and errno on failure; ENOSYS on an architecture not listed here.</summary>
    public static long SeccompSetModeFilter(uint flags, SockFprog* program)
    {
        long number = RuntimeInformation.ProcessArchitecture switch
        {
            Architecture.X64 => SYS_seccomp_x86_64,
            Architecture.Arm64 => SYS_seccomp_aarch64,
            _ => -1,
        };
        if (number < 0)
        {
            Marshal.SetLastPInvokeError((int)Errno.ENOSYS);
            return -1;
        }
        return RawSyscall(number, (nint)SECCOMP_SET_MODE_FILTER, (nint)flags, (nint)program);
    }
}
