namespace Vhostfsd;

/// <summary>--sandbox: how the daemon isolates itself from the rest of the host.</summary>
public enum SandboxMode
{
    /// <summary>New mount, pid and network namespaces and pivot_root into the shared directory (the default).</summary>
    Namespace,

    /// <summary>chroot(2) into the shared directory.</summary>
    Chroot,

    /// <summary>No isolation beyond the file system's own *at() walking.</summary>
    None,
}

/// <summary>--seccomp: what a system call outside the allow-list of the serving process does
/// (<see cref="Hosting.SeccompPolicy"/>).</summary>
public enum SeccompMode
{
    /// <summary>No filter.</summary>
    None,

    /// <summary>The process is killed (SECCOMP_RET_KILL_PROCESS), as by SIGSYS (the default).</summary>
    Kill,

    /// <summary>The call runs and the kernel logs it (SECCOMP_RET_LOG, an audit record).</summary>
    Log,

    /// <summary>The calling thread gets SIGSYS (SECCOMP_RET_TRAP); nothing handles it, so the process ends.</summary>
    Trap,
}

/// <summary>--log-level.</summary>
public enum DaemonLogLevel
{
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}
