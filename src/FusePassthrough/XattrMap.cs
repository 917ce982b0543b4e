using System.Text;

namespace Vhostfsd.FusePassthrough;

/// <summary>What a client-side xattr name maps to.</summary>
public enum XattrMapAction
{
    /// <summary>Use the (possibly rewritten) name.</summary>
    Pass,
    /// <summary>A <c>bad</c> rule matched: EPERM (ENODATA for a get).</summary>
    Deny,
    /// <summary>An <c>unsupported</c> rule matched: ENOTSUP.</summary>
    Unsupported,
}

/// <summary>xattr name remapping in the syntax of the Rust virtiofsd's <c>--xattrmap</c> (and the C
/// virtiofsd's <c>-o xattrmap=</c>): a whitespace-separated list of rules, each written with its own
/// delimiter as <c>:type:scope:key:prepend:</c> or <c>:map:key:prepend:</c>.
/// <list type="bullet">
/// <item><c>prefix</c>: a client name starting with key gets prepend put in front; a host name
/// starting with prepend loses it in LISTXATTR replies.</item>
/// <item><c>ok</c>: passes unchanged. <c>bad</c>: client use is EPERM, host names are hidden.
/// <c>unsupported</c>: client use is ENOTSUP, host names are hidden.</item>
/// <item><c>map</c> (only as the last rule): prefix all with prepend, hide unprefixed host names
/// that start with key (and deny the client the prefixed names), pass the rest (or, with an
/// empty key, hide the rest).</item>
/// </list>
/// Scopes: <c>client</c> matches client names on key, <c>server</c> matches host names on
/// prepend, <c>all</c> both. Rules are tried in order; the first match decides. A map must have
/// a terminating rule for each direction (an empty key for the client, an empty prepend for the
/// host), which this parser checks up front rather than failing at run time.</summary>
public sealed class XattrMap
{
    [Flags]
    private enum Scope
    {
        Client = 1,
        Server = 2,
        All = Client | Server,
    }

    private enum RuleType
    {
        Prefix,
        Ok,
        Bad,
        Unsupported,
    }

    private sealed record Rule(RuleType Type, Scope Scope, byte[] Key, byte[] Prepend);

    private readonly Rule[] _rules;

    private XattrMap(Rule[] rules)
    {
        _rules = rules;
    }

    /// <summary>Number of rules after expanding <c>map</c>.</summary>
    public int RuleCount => _rules.Length;

    /// <summary>Parses a rule list; throws FormatException naming the rule at fault.</summary>
    public static XattrMap Parse(string text)
    {
        var rules = new List<Rule>();
        int i = 0;
        int ruleNumber = 0;
        string s = text.Trim();
        while (i < s.Length)
        {
            if (char.IsWhiteSpace(s[i]))
            {
                i++;
                continue;
            }
            ruleNumber++;
            char delimiter = s[i++];
            string NextToken()
            {
                int end = s.IndexOf(delimiter, i);
                if (end < 0)
                {
                    throw new FormatException($"xattrmap rule {ruleNumber}: incomplete rule (missing closing '{delimiter}')");
                }
                string token = s[i..end];
                i = end + 1;
                return token;
            }
            string type = NextToken();
            if (type == "map")
            {
                byte[] key = Encoding.UTF8.GetBytes(NextToken());
                byte[] prepend = Encoding.UTF8.GetBytes(NextToken());
                while (i < s.Length && char.IsWhiteSpace(s[i]))
                {
                    i++;
                }
                if (i < s.Length)
                {
                    throw new FormatException($"xattrmap rule {ruleNumber}: a 'map' rule must be the last rule");
                }
                rules.Add(new Rule(RuleType.Prefix, Scope.All, key, prepend));
                if (key.Length > 0)
                {
                    rules.Add(new Rule(RuleType.Bad, Scope.All, prepend, key));
                    rules.Add(new Rule(RuleType.Ok, Scope.All, [], []));
                }
                else
                {
                    rules.Add(new Rule(RuleType.Bad, Scope.All, [], []));
                }
                continue;
            }
            RuleType ruleType = type switch
            {
                "prefix" => RuleType.Prefix,
                "ok" => RuleType.Ok,
                "bad" => RuleType.Bad,
                "unsupported" => RuleType.Unsupported,
                _ => throw new FormatException($"xattrmap rule {ruleNumber}: unknown type '{type}' (expected prefix, ok, bad, unsupported or map)"),
            };
            string scopeText = NextToken();
            Scope scope = scopeText switch
            {
                "all" => Scope.All,
                "client" => Scope.Client,
                "server" => Scope.Server,
                _ => throw new FormatException($"xattrmap rule {ruleNumber}: unknown scope '{scopeText}' (expected all, client or server)"),
            };
            rules.Add(new Rule(ruleType, scope, Encoding.UTF8.GetBytes(NextToken()), Encoding.UTF8.GetBytes(NextToken())));
        }
        if (rules.Count == 0)
        {
            throw new FormatException("xattrmap: no rules given");
        }
        bool clientTerminated = false;
        bool serverTerminated = false;
        foreach (Rule r in rules)
        {
            clientTerminated |= (r.Scope & Scope.Client) != 0 && r.Key.Length == 0;
            serverTerminated |= (r.Scope & Scope.Server) != 0 && r.Prepend.Length == 0;
        }
        if (!clientTerminated || !serverTerminated)
        {
            throw new FormatException("xattrmap: no terminating rule (end the list with one that matches every name, such as ':ok:all:::' or ':bad:all:::')");
        }
        return new XattrMap(rules.ToArray());
    }

    /// <summary>Maps a name from the guest. On Pass, the host name is written to
    /// <paramref name="hostName"/> (without NUL) and its length returned in <paramref name="hostNameLength"/>;
    /// -1 there means the result does not fit (the caller answers ERANGE).</summary>
    public XattrMapAction MapClient(ReadOnlySpan<byte> name, Span<byte> hostName, out int hostNameLength)
    {
        hostNameLength = 0;
        foreach (Rule r in _rules)
        {
            if ((r.Scope & Scope.Client) == 0 || !name.StartsWith(r.Key))
            {
                continue;
            }
            switch (r.Type)
            {
                case RuleType.Bad:
                    return XattrMapAction.Deny;
                case RuleType.Unsupported:
                    return XattrMapAction.Unsupported;
                case RuleType.Ok:
                    if (name.Length > hostName.Length)
                    {
                        hostNameLength = -1;
                        return XattrMapAction.Pass;
                    }
                    name.CopyTo(hostName);
                    hostNameLength = name.Length;
                    return XattrMapAction.Pass;
                default:
                    int total = r.Prepend.Length + name.Length;
                    if (total > hostName.Length)
                    {
                        hostNameLength = -1;
                        return XattrMapAction.Pass;
                    }
                    r.Prepend.CopyTo(hostName);
                    name.CopyTo(hostName[r.Prepend.Length..]);
                    hostNameLength = total;
                    return XattrMapAction.Pass;
            }
        }
        // Parse() guarantees a client terminator; keep a defined answer anyway.
        return XattrMapAction.Deny;
    }

    /// <summary>Rewrites a host LISTXATTR result (NUL-terminated names) in place for the guest:
    /// hidden names are dropped, prefixes stripped. Returns the new length.</summary>
    public int MapServerList(Span<byte> list)
    {
        int read = 0;
        int write = 0;
        while (read < list.Length)
        {
            int end = list[read..].IndexOf((byte)0);
            int nameLength = end < 0 ? list.Length - read : end;
            int next = read + nameLength + (end < 0 ? 0 : 1);
            if (nameLength > 0)
            {
                ReadOnlySpan<byte> name = list.Slice(read, nameLength);
                int keepFrom = -1;
                foreach (Rule r in _rules)
                {
                    if ((r.Scope & Scope.Server) == 0 || !name.StartsWith(r.Prepend))
                    {
                        continue;
                    }
                    keepFrom = r.Type switch
                    {
                        RuleType.Ok => 0,
                        RuleType.Prefix => r.Prepend.Length,
                        _ => -1,
                    };
                    break;
                }
                if (keepFrom >= 0 && keepFrom < nameLength)
                {
                    int length = nameLength - keepFrom;
                    list.Slice(read + keepFrom, length).CopyTo(list[write..]);
                    write += length;
                    list[write++] = 0;
                }
            }
            read = next;
        }
        return write;
    }
}
