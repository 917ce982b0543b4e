namespace Vhostfsd.Bench;

/// <summary>A daemon's process and its descendants, as the bench measures them (from /proc).</summary>
public sealed record ProcessTree(int Pid)
{
    /// <summary>CPU seconds (user + system) of the daemon and its descendants so far.</summary>
    public double CpuSeconds() => ProcStats.TreeCpuSeconds(Pid);

    /// <summary>Peak resident memory of the daemon's process tree, bytes: the largest VmHWM of its processes plus
    /// the private memory (USS) of the others. Summing VmHWM would count the pages they share (the executable's
    /// code, mapped by a parent and the copy it spawns) once per process.</summary>
    public long PeakRssBytes() => ProcStats.TreeResidentBytes(Pid, "VmHWM:");

    /// <summary>Resident memory of the daemon's process tree now, bytes (largest VmRSS plus the others' USS).</summary>
    public long RssBytes() => ProcStats.TreeResidentBytes(Pid, "VmRSS:");

    /// <summary>Unique set size (Private_Clean + Private_Dirty of /proc/PID/smaps_rollup) of the daemon and its
    /// descendants, bytes: memory no other process shares (file pages such as the executable's code, shared with any
    /// other process that maps them, are left out).</summary>
    public long UssBytes() => ProcStats.TreeUssBytes(Pid);

    /// <summary>Context switches (voluntary: the thread slept, e.g. waiting for a kick) summed over every live
    /// thread of the daemon and its descendants.</summary>
    public long ContextSwitches() => ProcStats.TreeContextSwitches(Pid);

    /// <summary>CPU seconds of the .NET runtime's background JIT threads (".NET Tiered Com") in the tree;
    /// 0 for a daemon that has none.</summary>
    public double JitCpuSeconds() => ProcStats.TreeThreadCpuSeconds(Pid, ".NET Tiered");

    /// <summary>Threads of the daemon and its descendants.</summary>
    public int Threads() => (int)ProcStats.TreeStatusBytes(Pid, "Threads:", 1);

    /// <summary>Memory and threads now, read together for a cell's idle figures.</summary>
    public IdleFigures Idle() => new(RssBytes(), UssBytes(), Threads());
}

/// <summary>A process tree's resident memory, private memory and threads at one moment.</summary>
public readonly record struct IdleFigures(long RssBytes, long UssBytes, int Threads);
