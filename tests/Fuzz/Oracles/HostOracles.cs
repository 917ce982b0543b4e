namespace Vhostfsd.Fuzz.Oracles;

/// <summary>The host-state oracles a FUSE target runs after every request: the sentinel tree beside
/// the share is unchanged (content, listing, mode, owner and atime/mtime/ctime, so "read" counts
/// where the mount updates atime), and every change in the share is one the requester was entitled
/// to (<see cref="PrivilegeOracle"/> under the configuration's <see cref="HostRules"/>).</summary>
public sealed class HostOracles
{
    private readonly HostShare _share;
    private readonly SentinelTree _sentinel;
    private readonly Dictionary<ulong, Requester> _unnamed = new();
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
        _unnamed.Clear();
    }

    /// <summary>A request made inode <paramref name="ino"/> without a name (TMPFILE): when a later
    /// request links it into the share, it is judged as <paramref name="creator"/>'s creation.</summary>
    public void NoteUnnamed(ulong ino, Requester creator)
    {
        if (_unnamed.Count > 1000)
        {
            _unnamed.Clear();
        }
        _unnamed[ino] = creator;
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
        problems.AddRange(PrivilegeOracle.Judge(Rules, request, _current, after, _unnamed, count));
        _current = after;
        return problems.Count == 0 ? null : string.Join("; ", problems);
    }
}
