namespace Vhostfsd.GuestKernelShim;

/// <summary>The credentials of the process on whose behalf a request is sent: what a guest kernel
/// puts in fuse_in_header (fsuid, fsgid, tgid) plus what the shim's own permission checks and
/// create paths need (supplementary groups, umask).</summary>
public readonly struct FuseCaller
{
    public FuseCaller(uint uid, uint gid, uint pid = 0, uint[]? groups = null, uint umask = 0x12 /* 022 */)
    {
        Uid = uid;
        Gid = gid;
        Pid = pid == 0 ? (uint)Environment.ProcessId : pid;
        Groups = groups;
        Umask = umask & 0x1FF;
    }

    private FuseCaller(uint uid, uint gid, uint pid, bool exactPid)
    {
        Uid = uid;
        Gid = gid;
        Pid = pid;
        Groups = null;
        Umask = 0x12;
    }

    /// <summary>No credentials (uid, gid and pid 0): what the kernel sends for requests with nocreds
    /// (RELEASE, DESTROY, FORGET, INTERRUPT).</summary>
    public static FuseCaller Kernel => new(0, 0, 0, exactPid: true);

    public uint Uid { get; }
    public uint Gid { get; }
    public uint Pid { get; }

    /// <summary>Supplementary groups (null: none).</summary>
    public uint[]? Groups { get; }

    /// <summary>The caller's umask (applied by the shim unless FUSE_DONT_MASK was negotiated).</summary>
    public uint Umask { get; }

    /// <summary>uid 0 / gid 0, this process, umask 022.</summary>
    public static FuseCaller Root => new(0, 0);

    /// <summary>True for uid 0: the capabilities a root caller has in a guest (CAP_DAC_OVERRIDE,
    /// CAP_FOWNER, CAP_CHOWN, CAP_FSETID) are granted to it.</summary>
    public bool IsRoot => Uid == 0;

    /// <summary>in_group_p(): the primary or a supplementary group is <paramref name="gid"/>.</summary>
    public bool InGroup(uint gid)
    {
        if (Gid == gid)
        {
            return true;
        }
        var groups = Groups;
        if (groups != null)
        {
            foreach (uint g in groups)
            {
                if (g == gid)
                {
                    return true;
                }
            }
        }
        return false;
    }

    public override string ToString() => $"uid {Uid} gid {Gid} pid {Pid}";
}
