using System.Text;
using Vhostfsd.Posix;

namespace Vhostfsd.Bench;

/// <summary>Sizes of the data the workloads use.</summary>
public sealed record DatasetShape(int TreeDirs, int FilesPerDir, int TreeFileBytes, int FlatEntries, long BigFileBytes)
{
    /// <summary>The sizes: a 10,000-file tree, a 10,000-entry directory, a 1 GiB file.</summary>
    public static DatasetShape Full => new(100, 100, 4096, 10_000, 1L << 30);

    /// <summary>CI-size: 1,000 files, 1,000 entries, 64 MiB.</summary>
    public static DatasetShape Quick => new(10, 100, 4096, 1_000, 64L << 20);

    public int TreeFiles => TreeDirs * FilesPerDir;
}

/// <summary>The shared directory of a run: a fresh tmpfs mount or a fresh directory on the root file system,
/// filled with the benchmark's files:
/// <c>tree/dNNN/fNNNNN</c> (metadata and git-status workloads), <c>flat/eNNNNN</c> (readdir),
/// <c>big</c> (random and sequential I/O), <c>small/</c> (create/unlink).</summary>
public sealed unsafe class Dataset : IDisposable
{
    private readonly bool _mounted;
    private readonly string _baseDir;

    private Dataset(string kind, string root, string baseDir, bool mounted, DatasetShape shape)
    {
        Kind = kind;
        Root = root;
        _baseDir = baseDir;
        _mounted = mounted;
        Shape = shape;
        TreeNames = new byte[shape.TreeFiles][];
        DirNames = new byte[shape.TreeDirs][];
        for (int d = 0; d < shape.TreeDirs; d++)
        {
            DirNames[d] = Encoding.ASCII.GetBytes($"d{d:D3}\0");
            for (int f = 0; f < shape.FilesPerDir; f++)
            {
                int i = d * shape.FilesPerDir + f;
                TreeNames[i] = Encoding.ASCII.GetBytes($"f{i:D5}\0");
            }
        }
    }

    public string Kind { get; }

    /// <summary>The shared directory.</summary>
    public string Root { get; }

    public DatasetShape Shape { get; }

    /// <summary>NUL-terminated names of the tree's files, by file index (file i is in directory i / FilesPerDir).</summary>
    public byte[][] TreeNames { get; }

    /// <summary>NUL-terminated names of the tree's directories.</summary>
    public byte[][] DirNames { get; }

    public static readonly byte[] TreeName = "tree\0"u8.ToArray();
    public static readonly byte[] FlatName = "flat\0"u8.ToArray();
    public static readonly byte[] BigName = "big\0"u8.ToArray();
    public static readonly byte[] SmallName = "small\0"u8.ToArray();

    /// <summary>Creates the directory (<paramref name="kind"/> "tmpfs": mounts a fresh tmpfs, needs root;
    /// "disk": a temporary directory under /var/tmp) and fills it.</summary>
    public static Dataset Create(string kind, DatasetShape shape, Action<string> log)
    {
        string baseDir;
        bool mounted = false;
        string root;
        if (kind == "tmpfs")
        {
            baseDir = Directory.CreateTempSubdirectory("vhostfs-bench-").FullName;
            root = Path.Combine(baseDir, "share");
            Directory.CreateDirectory(root);
            long size = shape.BigFileBytes + (1L << 30);
            MountTmpfs(root, $"size={size},mode=0755");
            mounted = true;
        }
        else if (kind == "disk")
        {
            baseDir = Path.Combine("/var/tmp", "vhostfs-bench-" + Guid.NewGuid().ToString("N")[..8]);
            Directory.CreateDirectory(baseDir);
            root = Path.Combine(baseDir, "share");
            Directory.CreateDirectory(root);
        }
        else
        {
            throw new ArgumentException($"unknown dir kind '{kind}' (tmpfs or disk)");
        }
        var dataset = new Dataset(kind, root, baseDir, mounted, shape);
        try
        {
            dataset.Fill(log);
        }
        catch
        {
            dataset.Dispose();
            throw;
        }
        return dataset;
    }

    private static void MountTmpfs(string target, string options)
    {
        byte[] source = "tmpfs\0"u8.ToArray();
        byte[] path = Encoding.UTF8.GetBytes(target + "\0");
        byte[] data = Encoding.ASCII.GetBytes(options + "\0");
        fixed (byte* s = source)
        fixed (byte* p = path)
        fixed (byte* d = data)
        {
            // SAFETY: all three are NUL-terminated arrays pinned for the call.
            if (Libc.Mount(s, p, s, 0, d) != 0)
            {
                throw new InvalidOperationException($"mounting a tmpfs on {target} failed ({Libc.LastErrno}); --dir-kind tmpfs needs root (or use --dir-kind disk)");
            }
        }
    }

    private void Fill(Action<string> log)
    {
        var sw = System.Diagnostics.Stopwatch.StartNew();
        var content = new byte[Shape.TreeFileBytes];
        new Random(1).NextBytes(content);
        string tree = Path.Combine(Root, "tree");
        for (int d = 0; d < Shape.TreeDirs; d++)
        {
            string dir = Path.Combine(tree, $"d{d:D3}");
            Directory.CreateDirectory(dir);
            for (int f = 0; f < Shape.FilesPerDir; f++)
            {
                int i = d * Shape.FilesPerDir + f;
                File.WriteAllBytes(Path.Combine(dir, $"f{i:D5}"), content);
            }
        }
        string flat = Path.Combine(Root, "flat");
        Directory.CreateDirectory(flat);
        for (int i = 0; i < Shape.FlatEntries; i++)
        {
            File.WriteAllBytes(Path.Combine(flat, $"e{i:D5}"), []);
        }
        Directory.CreateDirectory(Path.Combine(Root, "small"));
        var chunk = new byte[1 << 20];
        new Random(2).NextBytes(chunk);
        using (var big = new FileStream(Path.Combine(Root, "big"), FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
        {
            for (long written = 0; written < Shape.BigFileBytes; written += chunk.Length)
            {
                big.Write(chunk, 0, (int)Math.Min(chunk.Length, Shape.BigFileBytes - written));
            }
            big.Flush(flushToDisk: Kind == "disk");
        }
        log($"dataset on {Kind} at {Root}: {Shape.TreeFiles} tree files in {Shape.TreeDirs} dirs, {Shape.FlatEntries} entries in flat/, " +
            $"{Shape.BigFileBytes >> 20} MiB big file; made in {sw.Elapsed.TotalSeconds:F1} s");
    }

    /// <summary>Removes what the small-file workload may have left (an aborted run).</summary>
    public void CleanSmall()
    {
        string small = Path.Combine(Root, "small");
        foreach (string file in Directory.EnumerateFiles(small))
        {
            File.Delete(file);
        }
    }

    public void Dispose()
    {
        if (_mounted)
        {
            byte[] path = Encoding.UTF8.GetBytes(Root + "\0");
            fixed (byte* p = path)
            {
                // SAFETY: NUL-terminated and pinned. MNT_DETACH (2): a daemon killed late may still hold it.
                Libc.Umount2(p, 2);
            }
        }
        try
        {
            Directory.Delete(_baseDir, recursive: true);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }
}
