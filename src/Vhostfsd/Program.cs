namespace Vhostfsd;

// Scaffolding: the command line lands with issue #5.
internal static class Program
{
    private static int Main(string[] args)
    {
        Console.Error.WriteLine("vhostfsd: not built yet");
        return 1;
    }
}
