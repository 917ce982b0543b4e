using Vhostfsd.Cli;
using Vhostfsd.Hosting;

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
            Console.Error.WriteLine("vhostfsd: " + e.Message + " (see --help)");
            return ExitCodes.Usage;
        }
        catch (StartupException e)
        {
            Console.Error.WriteLine("vhostfsd: " + e.Message);
            return ExitCodes.Failure;
        }
        catch (Exception e)
        {
            // Never a stack trace: one line with what failed.
            Console.Error.WriteLine("vhostfsd: fatal: " + e.GetType().Name + ": " + e.Message.ReplaceLineEndings(" "));
            return ExitCodes.Failure;
        }
    }
}
