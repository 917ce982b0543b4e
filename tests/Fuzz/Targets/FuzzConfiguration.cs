using Vhostfsd.Fuzz.Oracles;
using Vhostfsd.FusePassthrough;

namespace Vhostfsd.Fuzz.Targets;

/// <summary>A daemon configuration the FUSE targets run under: the options that change what a request
/// may do to the host (inode file handles, --xattrmap, --security-label, --posix-acl, --readonly) and
/// the supplementary groups the serving thread holds when the first request arrives (as a daemon
/// started by a root login or under <c>setpriv --groups</c> would have them). The same configuration
/// is given to the in-process server (<see cref="Options"/>) and to a real daemon
/// (<see cref="DaemonArgs"/>, <see cref="DaemonWrapper"/>); <see cref="Rules"/> is the oracles' model
/// of what it allows, written separately.</summary>
public sealed record FuzzConfiguration(string Name)
{
    private const string MapAll = ":map::user.virtiofs.:";
    private const string TrustedOnly = ":prefix:all:trusted.:user.virtiofs.: :bad:all:::";

    public InodeFileHandles FileHandles { get; init; } = InodeFileHandles.Never;
    public string? XattrMap { get; init; }
    public bool SecurityLabel { get; init; }
    public bool PosixAcl { get; init; }
    public bool ReadOnly { get; init; }

    /// <summary>--killpriv-v2: the daemon clears S_ISUID/S_ISGID on a data change by a user other than root.</summary>
    public bool KillprivV2 { get; init; }

    /// <summary>Supplementary groups of the serving thread (in process) or of the daemon's start (setpriv).</summary>
    public uint[] ServingGroups { get; init; } = [];

    public static readonly FuzzConfiguration Groups = new("groups") { ServingGroups = [0, 4242] };
    public static readonly FuzzConfiguration FileHandlesPrefer = new("file-handles-prefer") { FileHandles = InodeFileHandles.Prefer, ServingGroups = [0] };
    public static readonly FuzzConfiguration FileHandlesMandatory = new("file-handles-mandatory") { FileHandles = InodeFileHandles.Mandatory };
    public static readonly FuzzConfiguration XattrMapLabels = new("xattrmap-security-label") { XattrMap = MapAll, SecurityLabel = true, ServingGroups = [0] };
    public static readonly FuzzConfiguration PosixAcls = new("posix-acl") { PosixAcl = true, ServingGroups = [0] };
    public static readonly FuzzConfiguration ReadOnlyShare = new("readonly") { ReadOnly = true, ServingGroups = [0] };
    public static readonly FuzzConfiguration KillprivV2Share = new("killpriv-v2") { KillprivV2 = true, ServingGroups = [0] };

    /// <summary>A real daemon under setpriv --groups 0,4242, a trusted.*-only map and security labels.</summary>
    public static readonly FuzzConfiguration DaemonGroupsTrustedMap = new("setpriv-groups-xattrmap-security-label")
    {
        FileHandles = InodeFileHandles.Prefer, XattrMap = TrustedOnly, SecurityLabel = true, ServingGroups = [0, 4242],
    };

    /// <summary>A real daemon under setpriv --groups 0 with POSIX ACLs and O_PATH nodes.</summary>
    public static readonly FuzzConfiguration DaemonGroupsAcl = new("setpriv-groups-posix-acl") { PosixAcl = true, ServingGroups = [0] };

    /// <summary>A real daemon serving a read-only share by file handles alone.</summary>
    public static readonly FuzzConfiguration DaemonReadOnly = new("readonly-file-handles-mandatory")
    {
        ReadOnly = true, FileHandles = InodeFileHandles.Mandatory, ServingGroups = [0],
    };

    private static readonly FuzzConfiguration[] All =
    [
        Groups, FileHandlesPrefer, FileHandlesMandatory, XattrMapLabels, PosixAcls, ReadOnlyShare, KillprivV2Share,
        DaemonGroupsTrustedMap, DaemonGroupsAcl, DaemonReadOnly,
    ];

    public static FuzzConfiguration Named(string name) =>
        Array.Find(All, c => c.Name == name) ?? throw new ArgumentException("no fuzz configuration " + name, nameof(name));

    public PassthroughOptions Options(string share) => new()
    {
        SharedDir = share,
        Xattr = true,
        PosixLocks = true,
        FlockLocks = true,
        MaxGuestFds = 300,
        InodeFileHandles = FileHandles,
        XattrMap = XattrMap,
        SecurityLabel = SecurityLabel,
        PosixAcl = PosixAcl,
        ReadOnly = ReadOnly,
        KillprivV2 = KillprivV2,
    };

    /// <summary>vhostfsd's options for this configuration (beyond the socket and share).</summary>
    public string[] DaemonArgs()
    {
        var args = new List<string> { "--xattr", "--posix-lock", "--flock", "--inode-file-handles=" + FileHandles.ToString().ToLowerInvariant() };
        if (XattrMap != null)
        {
            args.Add("--xattrmap=" + XattrMap);
        }
        if (SecurityLabel)
        {
            args.Add("--security-label");
        }
        if (PosixAcl)
        {
            args.Add("--posix-acl");
        }
        if (ReadOnly)
        {
            args.Add("--readonly");
        }
        if (KillprivV2)
        {
            args.Add("--killpriv-v2");
        }
        return args.ToArray();
    }

    /// <summary>The command vhostfsd is started through: setpriv with the serving groups, or nothing.</summary>
    public string[] DaemonWrapper() =>
        ServingGroups.Length == 0 ? [] : ["setpriv", "--groups", string.Join(',', ServingGroups), "--"];

    public HostRules Rules
    {
        get
        {
            var rules = XattrMap switch
            {
                null => HostRules.Unmapped(PosixAcl),
                MapAll => HostRules.MapAllUnderUserVirtiofs(),
                TrustedOnly => HostRules.TrustedOnlyUnderUserVirtiofs(),
                _ => throw new InvalidOperationException("no host rules written for --xattrmap " + XattrMap),
            };
            return new HostRules { ReadOnly = ReadOnly, KillprivV2 = KillprivV2, HostXattrName = rules.HostXattrName, XattrRule = rules.XattrRule };
        }
    }

    public override string ToString() => Name;
}
