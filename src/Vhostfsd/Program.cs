using Vhostfsd.Cli;
using Vhostfsd.Hosting;
using Vhostfsd.Posix;

namespace Vhostfsd;

internal static class Program
{
    private static int Main(string[] args)
    {
        try
        {
            return DaemonHost.Run(args);
        }
        catch (UsageException e)
        {
            FdTextWriter.StandardError.WriteLine("vhostfsd: " + e.Message + " (see --help)");
            return ExitCodes.Usage;
        }
        catch (StartupException e)
        {
            FdTextWriter.StandardError.WriteLine("vhostfsd: " + e.Message);
            return ExitCodes.Failure;
        }
        catch (Exception e)
        {
            // Never a stack trace: one line with what failed.
            var line = new System.Text.StringBuilder("vhostfsd: fatal: ");
            for (Exception? inner = e; inner != null; inner = inner.InnerException)
            {
                line.Append(inner == e ? "" : " <- ").Append(inner.GetType().Name).Append(": ").Append(inner.Message.ReplaceLineEndings(" "));
            }
            FdTextWriter.StandardError.WriteLine(line.ToString());
            return ExitCodes.Failure;
        }
    }
}
