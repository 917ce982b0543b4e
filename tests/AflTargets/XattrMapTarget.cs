using System.Text;
using Vhostfsd.FusePassthrough;

namespace Vhostfsd.AflTargets;

/// <summary>--xattrmap rule parsing and mapping. Input: the first line is the rule list (as the
/// command line gives it), every further line an attribute name. Rules: parsing a malformed list
/// throws FormatException and nothing else; a parsed map maps every name from the guest without
/// throwing, and a host name it passes ends with the guest name (a prefix rule only puts text in
/// front); rewriting a host LISTXATTR result never grows it, and leaves only NUL-terminated names
/// that end an input name.</summary>
public sealed class XattrMapTarget : AflTarget
{
    public override string Name => "xattrmap";

    public override string[] Instrument => ["Vhostfsd.FusePassthrough.dll Vhostfsd.FusePassthrough.XattrMap"];

    public override void Run(ReadOnlySpan<byte> input)
    {
        string text = Encoding.UTF8.GetString(input);
        int newline = text.IndexOf('\n');
        string rules = newline < 0 ? text : text[..newline];
        string[] names = newline < 0 ? [] : text[(newline + 1)..].Split('\n');
        XattrMap map;
        try
        {
            map = XattrMap.Parse(rules);
        }
        catch (FormatException)
        {
            return;
        }
        Span<byte> host = stackalloc byte[256];
        foreach (string name in names.Append("user.a").Append("security.capability").Append("trusted.x").Append(""))
        {
            byte[] guest = Encoding.UTF8.GetBytes(name);
            var action = map.MapClient(guest, host, out int length);
            if (action == XattrMapAction.Pass && length >= 0)
            {
                if (length > host.Length || !host[..length].EndsWith(guest))
                {
                    throw new BrokenRuleException($"'{name}' mapped to '{Encoding.UTF8.GetString(host[..Math.Min(length, host.Length)])}', which does not end with it");
                }
            }
        }
        // The host's list: the names NUL-terminated (a name with a NUL in it is two names there).
        byte[] list = Encoding.UTF8.GetBytes(string.Join('\0', names) + "\0");
        var hostNames = new List<byte[]>();
        foreach (var range in list.AsSpan().Split((byte)0))
        {
            hostNames.Add(list.AsSpan(range).ToArray());
        }
        int written = map.MapServerList(list);
        if (written < 0 || written > list.Length)
        {
            throw new BrokenRuleException($"a {list.Length}-byte list rewritten to {written} bytes");
        }
        var kept = list.AsSpan(0, written);
        while (kept.Length > 0)
        {
            int end = kept.IndexOf((byte)0);
            if (end <= 0)
            {
                throw new BrokenRuleException("the rewritten list holds an empty or unterminated name");
            }
            byte[] name = kept[..end].ToArray();
            if (!hostNames.Any(n => n.AsSpan().EndsWith(name)))
            {
                throw new BrokenRuleException($"the rewritten list holds '{Encoding.UTF8.GetString(name)}', which ends no host name");
            }
            kept = kept[(end + 1)..];
        }
    }

    public override IEnumerable<(string Name, byte[] Bytes)> SeedCorpus()
    {
        yield return ("map-all", Encoding.UTF8.GetBytes(":map::user.virtiofs.:\nuser.a\nuser.virtiofs.b\nsecurity.selinux"));
        yield return ("trusted-only", Encoding.UTF8.GetBytes(":prefix:all:trusted.:user.virtiofs.: :bad:all:::\ntrusted.x\nuser.virtiofs.trusted.y\nuser.z"));
        yield return ("scopes", Encoding.UTF8.GetBytes(":ok:client:user.::,bad,server,security.,, /unsupported/all/trusted.// :prefix:all::x.:\nuser.q\nsecurity.capability\nx.trusted.w"));
        yield return ("map-key", Encoding.UTF8.GetBytes("|map|security.|user.g.|\nsecurity.selinux\nuser.g.security.x\nuser.h"));
        yield return ("malformed", Encoding.UTF8.GetBytes(":prefix:all:a:"));
    }
}
