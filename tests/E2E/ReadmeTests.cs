using System.Diagnostics;
using System.Text.RegularExpressions;
using Xunit;

namespace Vhostfsd.E2E;

/// <summary>README.md's option table against the options `vhostfsd --help` prints.</summary>
[Trait("Category", "Docs")]
public sealed partial class ReadmeTests
{
    [Fact]
    public void OptionTable_NamesExactlyTheOptionsOfHelp()
    {
        var readme = File.ReadAllText(Path.Combine(RepositoryLayout.Root, "README.md"));
        var inReadme = ReadmeOptions(readme);
        Assert.True(inReadme.Count > 10, $"README.md: no option table between the options:begin/end markers ({inReadme.Count} options)");

        var inHelp = HelpOptions(RunHelp());
        Assert.True(inHelp.Count > 10, $"vhostfsd --help listed only {inHelp.Count} options");

        var missing = inHelp.Except(inReadme).Order().ToList();
        var extra = inReadme.Except(inHelp).Order().ToList();
        Assert.True(missing.Count == 0 && extra.Count == 0,
            "README.md's option table and `vhostfsd --help` differ; update the table. " +
            $"In --help only: {string.Join(' ', missing)}; in README only: {string.Join(' ', extra)}");
    }

    [Fact]
    public void OptionParsers_ReadTheFormatsTheyAreGiven()
    {
        var help = HelpOptions(
            "Options:\n" +
            "  --shared-dir <DIR>                 Directory to share\n" +
            "  --cache <auto|always>              Guest caching [default: auto]\n" +
            "  -o <OPT[,OPT...]>                  C options: -o source=DIR\n" +
            "  -V, --version                      Print the version\n" +
            "  -?, -h, --help                     Show help\n" +
            "\nExit status: 0\n");
        Assert.Equal(new SortedSet<string>(["--shared-dir", "--cache", "-o", "-V", "--version"]), help);

        var readme = ReadmeOptions(
            "intro `--not-in-table`\n<!-- options:begin -->\n| option | meaning |\n|---|---|\n" +
            "| `--cache auto\\|always` | policy, see `--other` |\n| `--version`, `-V` | version |\n" +
            "<!-- options:end -->\n");
        Assert.Equal(new SortedSet<string>(["--cache", "--version", "-V"]), readme);
    }

    /// <summary>The option names in the first column of the table between the markers.</summary>
    private static SortedSet<string> ReadmeOptions(string readme)
    {
        var names = new SortedSet<string>(StringComparer.Ordinal);
        var begin = readme.IndexOf("<!-- options:begin -->", StringComparison.Ordinal);
        var end = readme.IndexOf("<!-- options:end -->", StringComparison.Ordinal);
        if (begin < 0 || end < begin)
        {
            return names;
        }
        foreach (var line in readme[begin..end].Split('\n'))
        {
            if (!line.StartsWith("| `", StringComparison.Ordinal))
            {
                continue;
            }
            var firstCell = line[1..].Replace("\\|", "/", StringComparison.Ordinal).Split('|')[0];
            foreach (Match m in OptionInCode().Matches(firstCell))
            {
                names.Add(m.Groups[1].Value);
            }
        }
        return names;
    }

    /// <summary>The aliases in the first column of the Options section, minus help's own.</summary>
    private static SortedSet<string> HelpOptions(string help)
    {
        var names = new SortedSet<string>(StringComparer.Ordinal);
        var inOptions = false;
        foreach (var line in help.Split('\n'))
        {
            if (line.StartsWith("Options:", StringComparison.Ordinal))
            {
                inOptions = true;
                continue;
            }
            if (!inOptions)
            {
                continue;
            }
            if (line.Length > 0 && !char.IsWhiteSpace(line[0]))
            {
                inOptions = false; // the next section ("Exit status: ...")
                continue;
            }
            var m = HelpLine().Match(line);
            if (!m.Success)
            {
                continue; // blank, or a wrapped description
            }
            foreach (var alias in m.Groups[1].Value.Split(", "))
            {
                if (alias is not ("-?" or "-h" or "--help"))
                {
                    names.Add(alias);
                }
            }
        }
        return names;
    }

    private static string RunHelp()
    {
        string executable = Vhostfsd.Testing.NativeExecutable.Find();
        var psi = new ProcessStartInfo(executable) { RedirectStandardOutput = true, RedirectStandardError = true };
        psi.ArgumentList.Add("--help");
        using var p = Process.Start(psi) ?? throw new InvalidOperationException("cannot start " + executable);
        var stderr = p.StandardError.ReadToEndAsync();
        var stdout = p.StandardOutput.ReadToEnd();
        Assert.True(p.WaitForExit(60_000), "vhostfsd --help did not finish in 60 s");
        Assert.True(p.ExitCode == 0, $"vhostfsd --help exited {p.ExitCode}: {stdout}{stderr.Result}");
        return stdout;
    }

    // `--name ...` or `-x ...` at the start of an inline code span.
    [GeneratedRegex(@"`(--?[A-Za-z?][A-Za-z0-9-]*)")]
    private static partial Regex OptionInCode();

    // "  -V, --version <ARG>   description": the comma-separated aliases before the argument.
    [GeneratedRegex(@"^\s+((?:--?[A-Za-z?][A-Za-z0-9-]*)(?:, --?[A-Za-z?][A-Za-z0-9-]*)*)(?:\s|$)")]
    private static partial Regex HelpLine();
}
