using System.Reflection;

namespace Vhostfsd.E2E;

/// <summary>Where the repository and its e2e scripts are, seen from the test assembly.</summary>
internal static class RepositoryLayout
{
    /// <summary>The directory holding vhostfsd.sln (found by walking up from the test binaries).</summary>
    public static string Root { get; } = FindRoot();

    public static string RunScript => Path.Combine(Root, "scripts", "e2e", "run.sh");

    /// <summary>Runs live here, one directory per configuration, replaced by the next run.</summary>
    public static string RunsDirectory => Path.Combine(
        Environment.GetEnvironmentVariable("E2E_CACHE") is { Length: > 0 } cache ? cache : Path.Combine(Root, ".e2e-cache"),
        "runs");

    /// <summary>The build configuration of this test assembly (Release or Debug); the
    /// vhostfsd under test is the one built with the same configuration.</summary>
    public static string Configuration { get; } =
        typeof(RepositoryLayout).Assembly.GetCustomAttribute<AssemblyConfigurationAttribute>()?.Configuration ?? "Release";

    private static string FindRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "vhostfsd.sln")))
            {
                return dir.FullName;
            }
        }
        throw new InvalidOperationException($"vhostfsd.sln not found above {AppContext.BaseDirectory}");
    }
}
