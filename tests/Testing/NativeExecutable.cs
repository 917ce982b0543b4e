namespace Vhostfsd.Testing;

/// <summary>The vhostfsd that ships: the native executable `make build` publishes to
/// src/Vhostfsd/bin/CONFIG/native/vhostfsd. Tests run it rather than the IL build next to them, so
/// what they prove holds for what is installed. $VHOSTFSD names another executable.</summary>
public static class NativeExecutable
{
    public const string EnvironmentVariable = "VHOSTFSD";

    /// <summary>The executable's path; throws with the command that builds it when it is missing.</summary>
    public static string Find()
    {
        if (Environment.GetEnvironmentVariable(EnvironmentVariable) is { Length: > 0 } chosen)
        {
            return File.Exists(chosen) ? chosen : throw new FileNotFoundException($"${EnvironmentVariable} names {chosen}, which does not exist");
        }
        string? root = RepositoryRoot();
        if (root == null)
        {
            throw new FileNotFoundException("vhostfsd.sln was not found above " + AppContext.BaseDirectory + "; set $" + EnvironmentVariable);
        }
        // The configuration the calling test was built in first (bin/CONFIG/net10.0), then the other.
        string own = new DirectoryInfo(Path.TrimEndingDirectorySeparator(AppContext.BaseDirectory)).Parent?.Name ?? "Release";
        foreach (string config in new[] { own, "Release", "Debug" })
        {
            string candidate = Path.Combine(root, "src", "Vhostfsd", "bin", config, "native", "vhostfsd");
            if (File.Exists(candidate))
            {
                return candidate;
            }
        }
        throw new FileNotFoundException($"the native vhostfsd is not built under {root}/src/Vhostfsd/bin/{own}/native; run 'make build'");
    }

    /// <summary>The directory holding vhostfsd.sln above this test assembly, or null.</summary>
    public static string? RepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir != null; dir = dir.Parent)
        {
            if (File.Exists(Path.Combine(dir.FullName, "vhostfsd.sln")))
            {
                return dir.FullName;
            }
        }
        return null;
    }
}
