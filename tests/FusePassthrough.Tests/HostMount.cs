using System.Diagnostics;

namespace Vhostfsd.FusePassthrough.Tests;

/// <summary>Mounts for tests that need a second host file system inside a share (the tests run as root).</summary>
internal static class HostMount
{
    public static void Tmpfs(string path) => Run("mount", "-t", "tmpfs", "-o", "size=16m", "vhostfsd-test", path);

    public static void Unmount(string path) => Run("umount", "-l", path);

    private static void Run(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardError = true, UseShellExecute = false };
        foreach (string a in args)
        {
            psi.ArgumentList.Add(a);
        }
        using Process p = Process.Start(psi) ?? throw new InvalidOperationException("cannot start " + file);
        string err = p.StandardError.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0)
        {
            throw new InvalidOperationException($"{file} {string.Join(' ', args)} failed ({p.ExitCode}): {err} (these tests need root and mount(2))");
        }
    }
}
