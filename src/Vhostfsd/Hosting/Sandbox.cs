using System.Text;
using Vhostfsd.Cli;
using Vhostfsd.Posix;

namespace Vhostfsd.Hosting;

/// <summary>What the device needs from the sandbox: where the share is now, and the handle on the
/// /proc/self/fd directory opened before /proc went out of reach.</summary>
internal sealed record SandboxResult(string SharedRoot, SafeFd ProcSelfFd);

/// <summary>The in-process parts of the three sandbox modes. The namespace mode's other half
/// (creating the namespaces and spawning the process that enters them) is
/// <see cref="SandboxSpawner"/>.</summary>
internal static unsafe class Sandbox
{
    /// <summary>--sandbox=none: nothing is isolated; the /proc handles are opened all the same
    /// so the device uses one code path.</summary>
    public static SandboxResult EnterNone(string sharedDir)
    {
        SafeFd procSelfFd = Open("/proc/self/fd", Libc.O_PATH | Libc.O_DIRECTORY | Libc.O_CLOEXEC, "/proc/self/fd");
        return new SandboxResult(sharedDir, procSelfFd);
    }

    /// <summary>--sandbox=chroot: chroot(2) into the share. The root directory is part of the
    /// fs_struct that every thread of the process shares, so all threads move at once.</summary>
    public static SandboxResult EnterChroot(string sharedDir)
    {
        if (Libc.GetEuid() != 0)
        {
            throw new StartupException("--sandbox=chroot needs root (CAP_SYS_CHROOT); use --sandbox=none to run unprivileged");
        }
        SafeFd procSelfFd = Open("/proc/self/fd", Libc.O_PATH | Libc.O_DIRECTORY | Libc.O_CLOEXEC, "/proc/self/fd");
        fixed (byte* dir = Z(sharedDir))
        fixed (byte* root = Z("/"))
        {
            Check(Libc.Chroot(dir), "chroot " + sharedDir);
            Check(Libc.Chdir(root), "chdir / after chroot");
        }
        return new SandboxResult("/", procSelfFd);
    }

    /// <summary>--sandbox=namespace, the spawned process's side (see <see cref="SandboxSpawner"/>):
    /// it runs inside the new namespaces from its first instruction but holds no capability that
    /// could change mounts, so the spawning thread of the parent does the mount work while this
    /// process follows a short pipe handshake: say "ready", wait until
    /// the parent has bound our /proc/PID/fd over /proc, open that, say so, wait until the parent
    /// has pivoted the shared mount namespace into the share, then chdir("/").</summary>
    public static SandboxResult JoinNamespaceSandbox(SandboxSpawner.ChildMarker marker)
    {
        int toParent = marker.ToParentFd;
        using var fromParent = new SafeFd(marker.FromParentFd);
        SandboxSpawner.Send(toParent, SandboxSpawner.ChildReady);
        SandboxSpawner.Expect(fromParent.Fd, SandboxSpawner.ParentBoundProc);
        SafeFd procSelfFd = Open("/proc", Libc.O_PATH | Libc.O_DIRECTORY | Libc.O_CLOEXEC, "/proc (our fd directory, bound by the parent)");
        SandboxSpawner.Send(toParent, SandboxSpawner.ChildOpenedProc);
        SandboxSpawner.Expect(fromParent.Fd, SandboxSpawner.ParentPivoted);
        fixed (byte* root = Z("/"))
        {
            // The working directory was left in the old, now detached, root.
            Check(Libc.Chdir(root), "chdir / in the new root");
        }
        return new SandboxResult("/", procSelfFd);
    }

    /// <summary>The parent's mount work for --sandbox=namespace, run by the spawning thread inside
    /// the new mount namespace (which the child shares): bind the child's /proc/PID/fd over /proc
    /// so that only its own fds stay reachable, then bind the share onto itself, pivot_root into
    /// it and detach the old root. pivot_root moves the root of every process in the namespace
    /// whose root was the old one: the child's, and this thread's. The spawned process is told
    /// at each step (<paramref name="toChild"/>) and answers on <paramref name="fromChild"/>.</summary>
    public static void BuildNamespaceSandbox(string sharedDir, int childPid, int toChild, int fromChild)
    {
        SandboxSpawner.Expect(fromChild, SandboxSpawner.ChildReady);
        Mount($"/proc/{childPid}/fd", "/proc", null, Libc.MS_BIND, "bind the sandboxed process's /proc/PID/fd over /proc");
        SandboxSpawner.Send(toChild, SandboxSpawner.ParentBoundProc);
        SandboxSpawner.Expect(fromChild, SandboxSpawner.ChildOpenedProc);
        if (sharedDir != "/")
        {
            // pivot_root needs the new root to be a mount point.
            Mount(sharedDir, sharedDir, null, Libc.MS_BIND | Libc.MS_REC, "bind " + sharedDir + " onto itself");
            using SafeFd oldRoot = Open("/", Libc.O_RDONLY | Libc.O_DIRECTORY | Libc.O_CLOEXEC, "/");
            fixed (byte* dir = Z(sharedDir))
            fixed (byte* dot = Z("."))
            fixed (byte* root = Z("/"))
            {
                Check(Libc.Chdir(dir), "chdir " + sharedDir);
                // pivot_root(".", "."): the old root ends up stacked on the new one, detached below.
                Check(Libc.PivotRoot(dot, dot), "pivot_root into " + sharedDir);
                Check(Libc.Fchdir(oldRoot.Fd), "fchdir to the old root");
                Check(Libc.Mount(null, dot, null, Libc.MS_SLAVE | Libc.MS_REC, null), "make the old root a slave");
                Check(Libc.Umount2(dot, Libc.MNT_DETACH), "detach the old root");
                Check(Libc.Chdir(root), "chdir / in the new root");
            }
        }
        SandboxSpawner.Send(toChild, SandboxSpawner.ParentPivoted);
    }

    /// <summary>Makes every mount of the calling thread's (new) mount namespace a slave, so no
    /// mount made in it propagates back to the host.</summary>
    public static void MakeMountsPrivateToNamespace() =>
        Mount(null, "/", null, Libc.MS_SLAVE | Libc.MS_REC, "make / a recursive slave");

    internal static byte[] Z(string text) => Encoding.UTF8.GetBytes(text + "\0");

    private static SafeFd Open(string path, int flags, string what)
    {
        int fd;
        fixed (byte* p = Z(path))
        {
            fd = Libc.Open(p, flags, 0);
        }
        if (fd < 0)
        {
            throw new StartupException($"sandbox: cannot open {what}: {PosixException.Describe(Libc.LastErrno)}");
        }
        return new SafeFd(fd);
    }

    private static void Mount(string? source, string target, string? fsType, ulong flags, string what)
    {
        byte[]? s = source == null ? null : Z(source);
        byte[]? f = fsType == null ? null : Z(fsType);
        fixed (byte* sp = s)
        fixed (byte* tp = Z(target))
        fixed (byte* fp = f)
        {
            Check(Libc.Mount(sp, tp, fp, flags, null), what);
        }
    }

    private static void Check(int rc, string what)
    {
        if (rc < 0)
        {
            throw new StartupException($"sandbox: cannot {what}: {PosixException.Describe(Libc.LastErrno)}");
        }
    }
}
