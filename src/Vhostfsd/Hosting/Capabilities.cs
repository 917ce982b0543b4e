using Vhostfsd.Cli;
using Vhostfsd.Posix;
using Vhostfsd.FusePassthrough;

namespace Vhostfsd.Hosting;

/// <summary>The capabilities the daemon keeps once it is set up, and the calls that drop the
/// rest. Linux keeps capability sets per thread: <see cref="DropOnCurrentThread"/> changes only
/// the calling thread and the threads it creates afterwards, never the runtime's threads that
/// already exist. That is why, as root, the serving process is spawned by
/// <see cref="SandboxSpawner"/> with its bounding set already narrowed: every thread it ever
/// has starts with the kept set.</summary>
internal static class Capabilities
{
    public const int Chown = 0;
    public const int DacOverride = 1;
    public const int DacReadSearch = 2;
    public const int Fowner = 3;
    public const int Fsetid = 4;
    public const int Setgid = 6;
    public const int Setuid = 7;
    public const int Setpcap = 8;
    public const int SysChroot = 18;
    public const int SysAdmin = 21;
    public const int SysResource = 24;
    public const int Mknod = 27;
    public const int Setfcap = 31;

    /// <summary>Highest capability number this code knows (CAP_CHECKPOINT_RESTORE).</summary>
    public const int LastKnown = 40;

    /// <summary>Names without the CAP_ prefix, indexed by number (include/uapi/linux/capability.h).</summary>
    private static readonly string[] Names =
    [
        "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid", "setuid",
        "setpcap", "linux_immutable", "net_bind_service", "net_broadcast", "net_admin", "net_raw",
        "ipc_lock", "ipc_owner", "sys_module", "sys_rawio", "sys_chroot", "sys_ptrace", "sys_pacct",
        "sys_admin", "sys_boot", "sys_nice", "sys_resource", "sys_time", "sys_tty_config", "mknod",
        "lease", "audit_write", "audit_control", "setfcap", "mac_override", "mac_admin", "syslog",
        "wake_alarm", "block_suspend", "audit_read", "perfmon", "bpf", "checkpoint_restore",
    ];

    /// <summary>What virtiofsd keeps: enough to act for any guest user on files.</summary>
    private static readonly int[] Default = [Chown, DacOverride, Fowner, Fsetid, Setgid, Setuid, Mknod, Setfcap];

    public static string Name(int cap) => cap >= 0 && cap < Names.Length ? Names[cap] : "cap_" + cap;

    public static int? FromName(string name)
    {
        string n = name.Trim().ToLowerInvariant();
        if (n.StartsWith("cap_", StringComparison.Ordinal))
        {
            n = n[4..];
        }
        int i = Array.IndexOf(Names, n);
        return i >= 0 ? i : null;
    }

    public sealed record ModCaps(HashSet<int> Added, HashSet<int> Removed);

    /// <summary>Parses "+cap:-cap:..." (virtiofsd's --modcaps syntax; names case-insensitive,
    /// with or without CAP_). Throws <see cref="UsageException"/> on a bad item.</summary>
    public static ModCaps ParseModCaps(string text)
    {
        var added = new HashSet<int>();
        var removed = new HashSet<int>();
        foreach (string item in text.Split(':'))
        {
            if (item.Length < 2 || (item[0] != '+' && item[0] != '-'))
            {
                throw new UsageException($"invalid --modcaps item '{item}' in '{text}': expected +name or -name separated by ':', e.g. +sys_admin:-mknod");
            }
            int cap = FromName(item[1..]) ?? throw new UsageException($"unknown capability '{item[1..]}' in --modcaps");
            if (item[0] == '+')
            {
                removed.Remove(cap);
                added.Add(cap);
            }
            else
            {
                added.Remove(cap);
                removed.Add(cap);
            }
        }
        return new ModCaps(added, removed);
    }

    /// <summary>The set kept after start-up as a bit mask: the default set, DAC_READ_SEARCH
    /// unless inode file handles are off, edited by --modcaps.</summary>
    public static ulong KeptMask(InodeFileHandles inodeFileHandles, string? modCaps)
    {
        ulong mask = 0;
        foreach (int cap in Default)
        {
            mask |= 1UL << cap;
        }
        if (inodeFileHandles != InodeFileHandles.Never)
        {
            mask |= 1UL << DacReadSearch;
        }
        if (modCaps != null)
        {
            var edits = ParseModCaps(modCaps);
            foreach (int cap in edits.Added)
            {
                mask |= 1UL << cap;
            }
            foreach (int cap in edits.Removed)
            {
                mask &= ~(1UL << cap);
            }
        }
        return mask;
    }

    public static string Describe(ulong mask)
    {
        var names = new List<string>();
        for (int cap = 0; cap < 64; cap++)
        {
            if ((mask & (1UL << cap)) != 0)
            {
                names.Add(Name(cap));
            }
        }
        return names.Count == 0 ? "(none)" : string.Join(',', names);
    }

    /// <summary>Highest capability the running kernel supports (/proc/sys/kernel/cap_last_cap),
    /// read while /proc is still reachable.</summary>
    public static int KernelLastCap()
    {
        try
        {
            return int.Parse(File.ReadAllText("/proc/sys/kernel/cap_last_cap").Trim(), System.Globalization.CultureInfo.InvariantCulture);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException)
        {
            return LastKnown;
        }
    }

    /// <summary>Removes every capability outside <paramref name="keep"/> from the calling
    /// thread's bounding set. Needs CAP_SETPCAP, so drop that one last (it is dropped here
    /// too unless kept).</summary>
    public static void NarrowBoundingSet(ulong keep, int lastCap)
    {
        for (int cap = 0; cap <= lastCap; cap++)
        {
            if (cap == Setpcap || (keep & (1UL << cap)) != 0)
            {
                continue;
            }
            if (Libc.Prctl(Libc.PR_CAPBSET_READ, (nuint)cap, 0, 0, 0) == 1)
            {
                PosixException.Check(Libc.Prctl(Libc.PR_CAPBSET_DROP, (nuint)cap, 0, 0, 0), "prctl(PR_CAPBSET_DROP, " + Name(cap) + ")");
            }
        }
        if ((keep & (1UL << Setpcap)) == 0 && Libc.Prctl(Libc.PR_CAPBSET_READ, Setpcap, 0, 0, 0) == 1)
        {
            PosixException.Check(Libc.Prctl(Libc.PR_CAPBSET_DROP, Setpcap, 0, 0, 0), "prctl(PR_CAPBSET_DROP, setpcap)");
        }
    }

    /// <summary>Makes the calling thread's effective and permitted sets exactly <paramref name="keep"/>
    /// (restricted to what it has), empties its inheritable and ambient sets and narrows its
    /// bounding set to match.</summary>
    public static unsafe void DropOnCurrentThread(ulong keep, int lastCap)
    {
        NarrowBoundingSet(keep, lastCap);
        // Ambient capabilities would survive an execve; nothing here needs them.
        Libc.Prctl(Libc.PR_CAP_AMBIENT, Libc.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
        var header = new CapUserHeader { Version = Libc._LINUX_CAPABILITY_VERSION_3, Pid = 0 };
        CapUserData* data = stackalloc CapUserData[2];
        PosixException.Check(Libc.Capget(&header, data), "capget");
        ulong permitted = data[0].Permitted | ((ulong)data[1].Permitted << 32);
        ulong target = permitted & keep;
        data[0] = new CapUserData { Effective = (uint)target, Permitted = (uint)target, Inheritable = 0 };
        data[1] = new CapUserData { Effective = (uint)(target >> 32), Permitted = (uint)(target >> 32), Inheritable = 0 };
        header = new CapUserHeader { Version = Libc._LINUX_CAPABILITY_VERSION_3, Pid = 0 };
        PosixException.Check(Libc.Capset(&header, data), "capset");
    }

    /// <summary>The calling thread's effective set, from capget.</summary>
    public static unsafe ulong EffectiveOfCurrentThread()
    {
        var header = new CapUserHeader { Version = Libc._LINUX_CAPABILITY_VERSION_3, Pid = 0 };
        CapUserData* data = stackalloc CapUserData[2];
        PosixException.Check(Libc.Capget(&header, data), "capget");
        return data[0].Effective | ((ulong)data[1].Effective << 32);
    }

    /// <summary>The calling thread's bounding set, from PR_CAPBSET_READ.</summary>
    public static ulong BoundingOfCurrentThread(int lastCap)
    {
        ulong mask = 0;
        for (int cap = 0; cap <= lastCap; cap++)
        {
            if (Libc.Prctl(Libc.PR_CAPBSET_READ, (nuint)cap, 0, 0, 0) == 1)
            {
                mask |= 1UL << cap;
            }
        }
        return mask;
    }
}
