using System.Diagnostics;
using System.Text.Json;
using Vhostfsd.Posix;

namespace Vhostfsd.Tests;

/// <summary>"make install" into a scratch prefix, then the installed launcher runs.</summary>
public class InstallTests
{
    private static string RepositoryRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir != null && !File.Exists(Path.Combine(dir.FullName, "vhostfsd.sln")))
        {
            dir = dir.Parent;
        }
        Assert.True(dir != null, "vhostfsd.sln not found above " + AppContext.BaseDirectory);
        return dir!.FullName;
    }

    /// <summary>Release or Debug: the configuration this test assembly was built in.</summary>
    private static string Configuration() =>
        new DirectoryInfo(Path.TrimEndingDirectorySeparator(AppContext.BaseDirectory)).Parent!.Name;

    private static (int Code, string Output) Run(string file, string workingDirectory, params string[] args)
    {
        var start = new ProcessStartInfo(file, args)
        {
            WorkingDirectory = workingDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        start.Environment["DOTNET_EnableDiagnostics"] = "0";
        using var process = Process.Start(start)!;
        var stderr = process.StandardError.ReadToEndAsync();
        string stdout = process.StandardOutput.ReadToEnd();
        Assert.True(process.WaitForExit(120_000), "timed out: " + file);
        return (process.ExitCode, stdout + stderr.Result);
    }

    [Fact]
    public void Make_install_puts_the_launcher_the_descriptor_and_the_units_in_place()
    {
        using var tree = new TempTree();
        string prefix = Path.Combine(tree.Root, "usr");
        string descriptors = Path.Combine(tree.Root, "vhost-user");
        string units = Path.Combine(tree.Root, "systemd");
        // -o build -o restore: the solution is already built (this test runs from its output).
        var (code, output) = Run("make", RepositoryRoot(), "-o", "build", "-o", "restore", "install",
            "CONFIG=" + Configuration(), "PREFIX=" + prefix, "VHOST_USER_DIR=" + descriptors, "SYSTEMD_UNIT_DIR=" + units);
        Assert.True(code == 0, output);

        string launcher = Path.Combine(prefix, "bin", "vhostfsd");
        Assert.True(File.Exists(Path.Combine(prefix, "lib", "vhostfsd", "vhostfsd.dll")));
        Assert.True((File.GetUnixFileMode(launcher) & UnixFileMode.UserExecute) != 0);

        using var descriptor = JsonDocument.Parse(File.ReadAllText(Path.Combine(descriptors, "50-vhostfsd.json")));
        Assert.Equal("fs", descriptor.RootElement.GetProperty("type").GetString());
        Assert.Equal(launcher, descriptor.RootElement.GetProperty("binary").GetString());
        Assert.False(string.IsNullOrWhiteSpace(descriptor.RootElement.GetProperty("description").GetString()));

        string service = File.ReadAllText(Path.Combine(units, "vhostfsd@.service"));
        Assert.Contains($"ExecStart={launcher} --fd=3 ", service);
        Assert.Contains("ListenStream=/run/vhostfsd/%i.sock", File.ReadAllText(Path.Combine(units, "vhostfsd@.socket")));

        // The installed launcher works, with a minimal PATH as libvirt gives it.
        var capabilities = Run("/usr/bin/env", tree.Root, "-i", "PATH=/bin", launcher, "--print-capabilities");
        Assert.True(capabilities.Code == 0, capabilities.Output);
        using var json = JsonDocument.Parse(capabilities.Output);
        Assert.Equal("fs", json.RootElement.GetProperty("type").GetString());

        // And it serves from the namespace sandbox, which re-runs the installed program.
        var start = new ProcessStartInfo(launcher, ["--socket-path", tree.Socket, "--shared-dir", tree.Share])
        {
            RedirectStandardError = true,
        };
        using var daemon = Process.Start(start)!;
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        string log = "";
        var reader = daemon.StandardError;
        while (!log.Contains("waiting for the vhost-user front-end") && DateTime.UtcNow < deadline)
        {
            string? line = reader.ReadLine();
            if (line == null)
            {
                break;
            }
            log += line + "\n";
        }
        Assert.Contains("sandbox namespace", log);
        Assert.Equal(0, Libc.Kill(daemon.Id, Libc.SIGTERM));
        Assert.True(daemon.WaitForExit(30_000));
        Assert.Equal(0, daemon.ExitCode);
    }
}
