using System.Diagnostics.CodeAnalysis;
using System.Reflection;

namespace Vhostfsd.Hosting;

/// <summary>Loads, before the sandbox hides the host's file system, everything the runtime
/// would otherwise open lazily from disk. The native (AOT) executable carries all of its code, so
/// there only the runtime services below need it; the JIT build (make run-jit) also loads its
/// assemblies: after pivot_root or chroot, an assembly first needed later (the device's, the
/// framework's) could not be found and the daemon would fail at its first use. Loaded assemblies
/// are mapped into memory and stay usable. Native libraries are
/// already loaded by then: every P/Invoke goes through src/Posix's "libc", which the start-up
/// code has used. A few runtime services open files on first use and keep them: the random
/// source (/dev/urandom, behind Guid, Random and string hashing) and the local time zone
/// (/etc/localtime); they are started here too.</summary>
internal static class Preload
{
    /// <summary>References of a library that the daemon never reaches through that library, so
    /// they are not followed from it (each loaded assembly stays resident: about its file size
    /// of idle memory). System.Runtime.InteropServices uses System.Collections.Concurrent only in
    /// the COM marshalling cache (DefaultCaching). A reference from the daemon's own assemblies,
    /// or from any other library, is still followed.</summary>
    internal static readonly (string Library, string Reference)[] NotFollowed =
    [
        ("System.Runtime.InteropServices", "System.Collections.Concurrent"),
    ];

    /// <summary>On the JIT, loads the transitive closure of the entry assembly's references (less
    /// <see cref="NotFollowed"/>); then starts the runtime services that open files. Returns how many assemblies were loaded (0 in the native
    /// executable, which has no assembly files).</summary>
    public static int BeforeSandbox()
    {
        int assemblies = RunsFromAssemblyFiles ? LoadReferencedAssemblies() : 0;
        StartRuntimeServices();
        return assemblies;
    }

    /// <summary>True on the JIT build, whose assemblies are files the host lists for the runtime
    /// (the trusted platform assemblies); the native executable has none. RuntimeFeature's
    /// IsDynamicCodeSupported cannot tell: a project that publishes AOT switches it off for its
    /// JIT build too.</summary>
    internal static bool RunsFromAssemblyFiles => AppContext.GetData("TRUSTED_PLATFORM_ASSEMBLIES") is string;

    // The walk reads assembly metadata, which trimming may remove; it runs only on the JIT
    // (RunsFromAssemblyFiles), where every assembly is a whole IL file. The native executable
    // has no assembly to load and never calls it.
    [UnconditionalSuppressMessage("Trimming", "IL2026", Justification = "Runs only on the JIT, where assemblies are untrimmed IL files")]
    private static int LoadReferencedAssemblies()
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        var pending = new Stack<Assembly>();
        pending.Push(typeof(Preload).Assembly);
        foreach (Assembly loaded in AppDomain.CurrentDomain.GetAssemblies())
        {
            pending.Push(loaded);
        }
        while (pending.Count > 0)
        {
            Assembly assembly = pending.Pop();
            if (!seen.Add(assembly.FullName ?? assembly.GetName().Name ?? ""))
            {
                continue;
            }
            foreach (AssemblyName reference in assembly.GetReferencedAssemblies())
            {
                if (seen.Contains(reference.FullName) || IsNotFollowed(assembly.GetName().Name, reference.Name))
                {
                    continue;
                }
                try
                {
                    pending.Push(Assembly.Load(reference));
                }
                catch (Exception e) when (e is FileNotFoundException or FileLoadException or BadImageFormatException)
                {
                    // A reference the app never resolves (a facade that is not shipped): it
                    // could not be loaded after the sandbox either, so nothing changes.
                }
            }
        }
        return AppDomain.CurrentDomain.GetAssemblies().Length;
    }

    private static void StartRuntimeServices()
    {
        // The runtime's random source (Guid, Random, string hashing) keeps /dev/urandom open once
        // it has read it. System.Security.Cryptography's RandomNumberGenerator is another source
        // (OpenSSL, a 4 MiB library) that nothing in the daemon uses: it is not started.
        _ = Guid.NewGuid();
        // Log timestamps are local time: read the zone while /etc/localtime is there.
        _ = TimeZoneInfo.Local;
    }

    private static bool IsNotFollowed(string? library, string? reference)
    {
        foreach (var (notFrom, name) in NotFollowed)
        {
            if (library == notFrom && reference == name)
            {
                return true;
            }
        }
        return false;
    }
}
