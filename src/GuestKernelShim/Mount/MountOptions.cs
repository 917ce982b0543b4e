using System.Globalization;

namespace Vhostfsd.GuestKernelShim;

/// <summary>Options of a FUSE mount, as mount(8) passes them to fuse / virtiofs. The defaults are
/// virtio-fs's (fs/fuse/virtio_fs.c): a directory root, uid/gid 0, default_permissions and allow_other
/// on, no DAX.</summary>
public sealed class MountOptions
{
    /// <summary>rootmode: the file type (and permission bits) of the root before its first GETATTR.</summary>
    public uint RootMode { get; set; } = ModeBits.Directory;

    /// <summary>user_id: the owner of the mount (who may use it without allow_other).</summary>
    public uint UserId { get; set; }

    /// <summary>group_id: the group of the mount.</summary>
    public uint GroupId { get; set; }

    /// <summary>default_permissions: the shim checks mode bits itself (generic_permission) before sending;
    /// without it, the daemon decides (and ACCESS is sent for access(2)).</summary>
    public bool DefaultPermissions { get; set; } = true;

    /// <summary>allow_other: callers other than user_id/group_id may use the mount.</summary>
    public bool AllowOther { get; set; } = true;

    /// <summary>dax: only "never" exists here (no DAX window is mapped).</summary>
    public DaxMode Dax { get; set; } = DaxMode.Never;

    /// <summary>cache_size: bytes of page cache the mount may hold (the guest's memory for file data), rounded down
    /// to whole pages; least recently used pages go first when it is full. 0 (the default) means no page cache:
    /// every read and write goes to the daemon (as direct I/O) and mmap is refused (ENODEV), which is what the
    /// uncached benchmarks and the suites that count requests need.</summary>
    public long CacheSize { get; set; }

    /// <summary>writeback: ask for FUSE_WRITEBACK_CACHE at INIT. When the daemon grants it, writes land in the page
    /// cache and reach the daemon later (fsync, close, msync, munmap, memory pressure, the dirty timer, unmount).
    /// Needs a page cache.</summary>
    public bool Writeback { get; set; }

    /// <summary>dirty_expire_ms: how old dirty pages may get before the flusher writes them back
    /// (Linux's dirty_expire_centisecs, 30 s there).</summary>
    public TimeSpan DirtyExpire { get; set; } = TimeSpan.FromSeconds(30);

    /// <summary>Pages the page cache holds at most (<see cref="CacheSize"/> in pages).</summary>
    public int CachePages => (int)Math.Min(int.MaxValue, CacheSize / FuseConn.PageSize);

    /// <summary>Parses a mount option string: "rootmode=040000,user_id=0,group_id=0,default_permissions,
    /// allow_other,dax=never,cache_size=64M,writeback,dirty_expire_ms=30000". Unknown options and DAX modes other than never are refused with
    /// <see cref="ArgumentException"/>. Options not named keep the virtio-fs defaults; naming
    /// default_permissions or allow_other is allowed (they are on already).</summary>
    public static MountOptions Parse(string? text)
    {
        var options = new MountOptions();
        if (string.IsNullOrWhiteSpace(text))
        {
            return options;
        }
        foreach (string raw in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            int eq = raw.IndexOf('=');
            string key = eq < 0 ? raw : raw[..eq];
            string? value = eq < 0 ? null : raw[(eq + 1)..];
            switch (key)
            {
                case "rootmode":
                    options.RootMode = ParseOctal(key, value);
                    if ((options.RootMode & ModeBits.TypeMask) == 0)
                    {
                        throw new ArgumentException($"rootmode={value} has no file type bits (e.g. 040000 for a directory)");
                    }
                    break;
                case "user_id":
                    options.UserId = ParseDecimal(key, value);
                    break;
                case "group_id":
                    options.GroupId = ParseDecimal(key, value);
                    break;
                case "default_permissions":
                    options.DefaultPermissions = true;
                    break;
                case "allow_other":
                    options.AllowOther = true;
                    break;
                case "dax":
                    options.Dax = ParseDax(value ?? "always");
                    break;
                case "cache_size":
                    options.CacheSize = ParseSize(key, value);
                    break;
                case "writeback":
                    options.Writeback = true;
                    break;
                case "dirty_expire_ms":
                    options.DirtyExpire = TimeSpan.FromMilliseconds(ParseDecimal(key, value));
                    break;
                default:
                    throw new ArgumentException($"unknown mount option '{raw}'");
            }
        }
        options.Validate();
        return options;
    }

    /// <summary>Throws <see cref="ArgumentException"/> for a combination the shim cannot mount.</summary>
    public void Validate()
    {
        if (Dax != DaxMode.Never)
        {
            throw new ArgumentException($"dax={Dax.ToString().ToLowerInvariant()} is not supported: no DAX window exists, only dax=never");
        }
        if ((RootMode & ModeBits.TypeMask) == 0)
        {
            throw new ArgumentException("rootmode has no file type bits");
        }
        if (CacheSize < 0 || (CacheSize > 0 && CacheSize < 16 * FuseConn.PageSize))
        {
            throw new ArgumentException($"cache_size={CacheSize} is below 16 pages ({16 * FuseConn.PageSize} bytes)");
        }
        if (Writeback && CacheSize == 0)
        {
            throw new ArgumentException("writeback needs a page cache (cache_size)");
        }
        if (DirtyExpire <= TimeSpan.Zero)
        {
            throw new ArgumentException("dirty_expire_ms must be positive");
        }
    }

    /// <summary>A byte count with an optional K, M or G suffix (powers of 1024).</summary>
    private static long ParseSize(string key, string? value)
    {
        if (string.IsNullOrEmpty(value))
        {
            throw new ArgumentException($"{key} needs a value");
        }
        long multiplier = char.ToUpperInvariant(value[^1]) switch
        {
            'K' => 1L << 10,
            'M' => 1L << 20,
            'G' => 1L << 30,
            _ => 1,
        };
        string digits = multiplier == 1 ? value : value[..^1];
        if (!long.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out long number) || number > long.MaxValue / multiplier)
        {
            throw new ArgumentException($"{key}={value} is not a size");
        }
        return number * multiplier;
    }

    private static DaxMode ParseDax(string value) => value switch
    {
        "never" => DaxMode.Never,
        "always" => throw new ArgumentException("dax=always is not supported: no DAX window exists, only dax=never"),
        "inode" => throw new ArgumentException("dax=inode is not supported: no DAX window exists, only dax=never"),
        _ => throw new ArgumentException($"unknown dax mode '{value}' (never, always, inode)"),
    };

    private static uint ParseOctal(string key, string? value)
    {
        if (string.IsNullOrEmpty(value))
        {
            throw new ArgumentException($"{key} needs a value");
        }
        uint result = 0;
        foreach (char c in value)
        {
            if (c < '0' || c > '7' || result > (uint.MaxValue >> 3))
            {
                throw new ArgumentException($"{key}={value} is not an octal number");
            }
            result = (result << 3) | (uint)(c - '0');
        }
        return result;
    }

    private static uint ParseDecimal(string key, string? value)
    {
        if (!uint.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out uint result))
        {
            throw new ArgumentException($"{key}={value} is not a number");
        }
        return result;
    }

    public override string ToString() =>
        $"rootmode={Convert.ToString(RootMode, 8)},user_id={UserId},group_id={GroupId}"
        + (DefaultPermissions ? ",default_permissions" : "") + (AllowOther ? ",allow_other" : "") + ",dax=never"
        + (CacheSize > 0 ? $",cache_size={CacheSize}" : "") + (Writeback ? ",writeback" : "")
        + (CacheSize > 0 ? $",dirty_expire_ms={(long)DirtyExpire.TotalMilliseconds}" : "");
}

/// <summary>virtiofs's dax= mount option.</summary>
public enum DaxMode
{
    Never,
    Always,
    Inode,
}

/// <summary>st_mode bits and access masks (Linux values).</summary>
public static class ModeBits
{
    public const uint TypeMask = 0xF000; // S_IFMT
    public const uint Socket = 0xC000;
    public const uint Symlink = 0xA000;
    public const uint Regular = 0x8000;
    public const uint Block = 0x6000;
    public const uint Directory = 0x4000;
    public const uint Char = 0x2000;
    public const uint Fifo = 0x1000;
    public const uint SetUid = 0x800;
    public const uint SetGid = 0x400;
    public const uint Sticky = 0x200;
    public const uint ExecAny = 0x49; // S_IXUGO

    /// <summary>MAY_EXEC / MAY_WRITE / MAY_READ (also the R_OK/W_OK/X_OK of access(2)).</summary>
    public const int MayExec = 1;
    public const int MayWrite = 2;
    public const int MayRead = 4;

    public static bool IsDirectory(uint mode) => (mode & TypeMask) == Directory;
    public static bool IsRegular(uint mode) => (mode & TypeMask) == Regular;
    public static bool IsSymlink(uint mode) => (mode & TypeMask) == Symlink;

    /// <summary>fuse_valid_type: one of the seven file types.</summary>
    public static bool IsValidType(uint mode) => (mode & TypeMask) is Regular or Directory or Symlink or Char or Block or Fifo or Socket;
}
