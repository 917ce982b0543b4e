namespace Vhostfsd.Fuzz.Oracles;

/// <summary>The host-state oracles a FUSE target runs after every request: the sentinel tree beside
/// the share is unchanged (content, listing, mode, owner and atime/mtime/ctime, so "read" counts
/// where the mount updates atime), and every change in the share is one the requester was entitled
/// to (<see cref="PrivilegeOracle"/> under the configuration's <see cref="HostRules"/>).</summary>
public sealed class HostOracles
{
    private readonly HostShare _share;
    private readonly SentinelTree _sentinel;
    private readonly Dictionary<ulong, ulong> _nodeInos = new();
    private SortedDictionary<string, string> _sentinelBefore;
    private Dictionary<ulong, HostEntry> _current;

    public HostOracles(string share, SentinelTree sentinel, HostRules rules)
    {
        _share = new HostShare(share);
        _sentinel = sentinel;
        Rules = rules;
        _sentinelBefore = sentinel.Snapshot();
        _current = _share.Scan();
    }

    public HostRules Rules { get; }

    /// <summary>The share as of the last check.</summary>
    public IReadOnlyDictionary<ulong, HostEntry> Current => _current;

    /// <summary>Takes the share as it is now as the state to judge the next request against (after the
    /// test itself changed it: a fresh population, a refresh).</summary>
    public void Baseline()
    {
        _current = _share.Scan();
    }

    /// <summary>The guest's node ids mean nothing any more (a new session, a reset).</summary>
    public void ForgetNodes() => _nodeInos.Clear();

    /// <summary>The guest was told that FUSE node <paramref name="node"/> is host inode <paramref name="ino"/>.</summary>
    public void NoteNode(ulong node, ulong ino)
    {
        if (_nodeInos.Count > 10_000)
        {
            _nodeInos.Clear();
        }
        _nodeInos[node] = ino;
    }

    /// <summary>A TMPFILE in directory node <paramref name="parentNode"/> made an inode without a name,
    /// which the host cannot list: judges it by the attributes the reply reports (uid, gid, mode).
    /// Null when <paramref name="creator"/> was entitled to it.</summary>
    public string? CheckUnnamed(Requester creator, ulong parentNode, ulong ino, uint mode, uint uid, uint gid, Action<string> count)
    {
        var made = new HostEntry
        {
            Ino = ino, Mode = mode, Uid = uid, Gid = gid, Size = 0, Nlink = 0, Rdev = (0, 0), Mtime = default, Ctime = default,
            Xattrs = new SortedDictionary<string, string>(StringComparer.Ordinal),
        };
        made.Paths.Add($"(unnamed, made by TMPFILE in node {parentNode})");
        HostEntry? parent = parentNode == 1 ? _current.Values.FirstOrDefault(e => e.Paths.Contains(""))
            : _nodeInos.TryGetValue(parentNode, out ulong parentIno) ? _current.GetValueOrDefault(parentIno) : null;
        var problems = PrivilegeOracle.JudgeUnnamed(Rules, creator, made, parent, count);
        return problems.Count == 0 ? null : string.Join("; ", problems);
    }

    /// <summary>Checks the host after a request by <paramref name="request"/>; null when every change
    /// was one it may cause, else what was not. The state seen becomes the next request's "before",
    /// so one violation is reported once.</summary>
    public string? Check(Requester request, Action<string> count)
    {
        var problems = new List<string>();
        var outside = SentinelTree.Compare(_sentinelBefore, _sentinel.Snapshot());
        if (outside.Count > 0)
        {
            problems.Add("a host path outside the share changed or was read: " + string.Join("; ", outside));
            _sentinelBefore = _sentinel.Snapshot();
        }
        var after = _share.Scan();
        problems.AddRange(PrivilegeOracle.Judge(Rules, request, _current, after, count));
        _current = after;
        return problems.Count == 0 ? null : string.Join("; ", problems);
    }
}
