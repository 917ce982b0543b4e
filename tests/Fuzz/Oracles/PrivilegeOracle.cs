namespace Vhostfsd.Fuzz.Oracles;

/// <summary>What a configuration allows to reach the host, written down independently of the daemon:
/// whether the share may change at all, and which extended-attribute names a guest-set name can
/// appear under on the host once the configured --xattrmap rules have been applied to it.</summary>
public sealed class HostRules
{
    /// <summary>--readonly: nothing in the share may change.</summary>
    public bool ReadOnly { get; init; }

    /// <summary>--killpriv-v2: a data change by a user other than root clears S_ISUID, and S_ISGID with S_IXGRP.</summary>
    public bool KillprivV2 { get; init; }

    /// <summary>True when a guest-set attribute may exist on the host under this (host) name.</summary>
    public required Func<string, bool> HostXattrName { get; init; }

    /// <summary>The rule above in words, for failure messages.</summary>
    public required string XattrRule { get; init; }

    public const string FileCapability = "security.capability";

    /// <summary>Without --xattrmap: any name, but the POSIX ACL names only with --posix-acl.</summary>
    public static HostRules Unmapped(bool posixAcl, bool readOnly = false) => new()
    {
        ReadOnly = readOnly,
        HostXattrName = name => posixAcl || !name.StartsWith("system.posix_acl_", StringComparison.Ordinal),
        XattrRule = posixAcl ? "any name" : "any name but system.posix_acl_* (no --posix-acl)",
    };

    /// <summary><c>:map::user.virtiofs.:</c> — every guest name gets the prefix on the host.</summary>
    public static HostRules MapAllUnderUserVirtiofs() => new()
    {
        HostXattrName = name => name.StartsWith("user.virtiofs.", StringComparison.Ordinal) && name.Length > "user.virtiofs.".Length,
        XattrRule = "':map::user.virtiofs.:' (every guest name as user.virtiofs.<name>)",
    };

    /// <summary><c>:prefix:all:trusted.:user.virtiofs.: :bad:all:::</c> — only trusted.* names, renamed.</summary>
    public static HostRules TrustedOnlyUnderUserVirtiofs() => new()
    {
        HostXattrName = name => name.StartsWith("user.virtiofs.trusted.", StringComparison.Ordinal),
        XattrRule = "':prefix:all:trusted.:user.virtiofs.: :bad:all:::' (only trusted.* names, as user.virtiofs.trusted.*)",
    };
}

/// <summary>The host-state oracle: given the share's inodes before and after one request and who sent
/// it, lists every change that request was not entitled to cause. Two models, by who decides:
/// <para><b>What the request creates</b> — the host kernel decides owner, group and whether S_ISGID
/// stays from the credentials of the thread that made it, which the guest cannot check beforehand.
/// The model is a process running as the requester (its uid, its gid and its extension's groups, no
/// other group, every capability for uid 0 only): the new inode is owned by the requester's uid; its
/// group is one the requester is in or, in a setgid directory, the directory's group; it is setgid
/// only if the requester is in that group or is root (a directory also when its setgid parent gave it
/// the bit); it carries security.capability only for root. Only MKNOD, MKDIR, SYMLINK and CREATE
/// create a named inode; RENAME leaves at most a whiteout (a 0:0 character device). TMPFILE makes an
/// inode without a name, which the host cannot list: it is judged by the attributes the reply reports
/// (the daemon's statx of it, <see cref="JudgeUnnamed"/>), and when LINK names it later, by the
/// attribute-name rule alone (what happened to it while it had no name is out of sight).</para>
/// <para><b>What the request changes</b> — SETATTR and SETXATTR run with the daemon's rights, as in both
/// reference daemons: the guest kernel has checked ownership, group membership and capabilities (a
/// virtio-fs mount has default_permissions) and the request carries neither the caller's supplementary
/// groups nor its capabilities, so a uid alone cannot tell a permitted chgrp from a forbidden one. The
/// model: an existing inode changes owner or group, or gains S_ISUID or S_ISGID, only through a
/// SETATTR that asked for exactly that, and gains or changes security.capability only through a
/// SETXATTR.</para>
/// <para>With --killpriv-v2 the daemon, not the guest kernel, clears the set-id bits a data change
/// removes (the kernel's should_remove_suid): after a WRITE or truncating SETATTR that carried
/// KILL_SUIDGID, a COPY_FILE_RANGE or a FALLOCATE by a requester other than uid 0 that changed a
/// regular file's mtime or size on the host, the file has no S_ISUID, and no S_ISGID with S_IXGRP.</para>
/// <para>For every request: an attribute name appears or changes on the host only in a form the
/// configuration's xattr rules produce, and with --readonly nothing changes at all.</para></summary>
public static class PrivilegeOracle
{
    /// <param name="count">Counts what was judged (created entries, setgid entries allowed...).</param>
    public static List<string> Judge(HostRules rules, Requester request, IReadOnlyDictionary<ulong, HostEntry> before,
        IReadOnlyDictionary<ulong, HostEntry> after, Action<string> count)
    {
        var problems = new List<string>();
        foreach (var (ino, now) in after)
        {
            if (!before.TryGetValue(ino, out HostEntry? was))
            {
                if (rules.ReadOnly)
                {
                    problems.Add($"the read-only share gained {now}");
                    continue;
                }
                HostEntry? parent = before.TryGetValue(now.ParentIno, out HostEntry? p) ? p : after.GetValueOrDefault(now.ParentIno);
                if (request.Opcode == Requester.Link)
                {
                    // An inode without a name until now (TMPFILE, or CREATE with O_TMPFILE).
                    count("host:unnamed-linked");
                    foreach (var (name, _) in now.Xattrs)
                    {
                        JudgeXattr(rules, request, now, name, problems, count);
                    }
                }
                else if (request.Opcode is Requester.Rename or Requester.Rename2)
                {
                    if (!now.IsWhiteout)
                    {
                        problems.Add($"{now} appeared after a RENAME, which creates nothing but a whiteout");
                    }
                    count("host:whiteout");
                }
                else if (request.Opcode is Requester.Mknod or Requester.Mkdir or Requester.Symlink or Requester.Create)
                {
                    JudgeCreated(rules, request, now, parent, problems, count);
                }
                else
                {
                    problems.Add($"{now} appeared after a request with opcode {request.Opcode}, which creates nothing");
                }
                continue;
            }
            if (now.SameState(was))
            {
                continue;
            }
            if (rules.ReadOnly)
            {
                problems.Add($"the read-only share changed: {was} became {now}");
                continue;
            }
            JudgeChanged(rules, request, was, now, problems, count);
        }
        foreach (var (ino, was) in before)
        {
            if (rules.ReadOnly && !after.ContainsKey(ino))
            {
                problems.Add($"the read-only share lost {was}");
            }
        }
        return problems;
    }

    /// <summary>An inode a TMPFILE made, as the reply describes it, in the directory the request named
    /// (null when the target cannot tell which host directory that node is: then its group is not judged).</summary>
    public static List<string> JudgeUnnamed(HostRules rules, Requester creator, HostEntry made, HostEntry? parent, Action<string> count)
    {
        var problems = new List<string>();
        if (rules.ReadOnly)
        {
            problems.Add($"the read-only share gained an unnamed inode {made}");
            return problems;
        }
        JudgeCreated(rules, creator, made, parent, problems, count, parentKnown: parent != null);
        return problems;
    }

    private static void JudgeCreated(HostRules rules, Requester creator, HostEntry now, HostEntry? parent, List<string> problems, Action<string> count,
        bool parentKnown = true)
    {
        count("host:created");
        if (!parentKnown)
        {
            count("host:created-in-unknown-directory");
            if (now.Uid != creator.Uid)
            {
                problems.Add($"{now} was created for a request by {creator} but is owned by uid {now.Uid}");
            }
            return;
        }
        bool parentGroup = parent is { IsSetgid: true } && parent.Gid == now.Gid;
        if (now.Uid != creator.Uid)
        {
            problems.Add($"{now} was created for a request by {creator} but is owned by uid {now.Uid}");
        }
        if (!creator.InGroup(now.Gid) && !parentGroup)
        {
            problems.Add($"{now} was created for a request by {creator} with group {now.Gid}, which is neither one of the requester's nor the group of a setgid parent");
        }
        if (parentGroup && !creator.IsRoot && !creator.InGroup(now.Gid) && !now.IsDirectory)
        {
            // Where CVE-2022-0358 lives: a file a non-member makes in a setgid directory takes its group.
            count((now.Mode & 0x8) != 0 ? "host:created-by-nonmember-in-setgid-dir(group-exec)" : "host:created-by-nonmember-in-setgid-dir");
        }
        if (now.IsSetgid)
        {
            bool inherited = now.IsDirectory && parentGroup;
            if (!creator.IsRoot && !creator.InGroup(now.Gid) && !inherited)
            {
                problems.Add($"{now} was created setgid {now.Gid} for a request by {creator}, who is not in group {now.Gid}");
            }
            else
            {
                count(creator.IsRoot || inherited ? "host:created-setgid" : "host:created-setgid-by-member");
            }
        }
        if (now.IsSetuid)
        {
            count("host:created-setuid");
        }
        foreach (var (name, _) in now.Xattrs)
        {
            JudgeXattr(rules, creator, now, name, problems, count);
            if (name == HostRules.FileCapability && !creator.IsRoot)
            {
                problems.Add($"{now} was created with a file capability (security.capability) for a request by {creator}; only root may set one");
            }
        }
    }

    private static void JudgeChanged(HostRules rules, Requester request, HostEntry was, HostEntry now, List<string> problems, Action<string> count)
    {
        if (now.Uid != was.Uid && !(request.Sets(Requester.AttrUid) && request.SetUid == now.Uid))
        {
            problems.Add($"{was} changed owner to uid {now.Uid} for a request (opcode {request.Opcode}, {request}) that did not ask for it");
        }
        if (now.Gid != was.Gid && !(request.Sets(Requester.AttrGid) && request.SetGid == now.Gid))
        {
            problems.Add($"{was} changed group to {now.Gid} for a request (opcode {request.Opcode}, {request}) that did not ask for it");
        }
        // A bit kept through an owner change that was asked for is the chown's doing (judged above).
        if (now.IsSetuid && !was.IsSetuid)
        {
            if (!(request.Sets(Requester.AttrMode) && (request.SetMode & 0x800) != 0))
            {
                problems.Add($"{was} became setuid {now.Uid} (mode {Convert.ToString(now.Mode, 8)}) for a request (opcode {request.Opcode}, {request}) that did not ask for it");
            }
            count("host:setuid-gained");
        }
        if (now.IsSetgid && !was.IsSetgid)
        {
            if (!(request.Sets(Requester.AttrMode) && (request.SetMode & 0x400) != 0))
            {
                problems.Add($"{was} became setgid {now.Gid} (mode {Convert.ToString(now.Mode, 8)}) for a request (opcode {request.Opcode}, {request}) that did not ask for it");
            }
            count("host:setgid-gained");
        }
        if (rules.KillprivV2 && now.IsRegular && (now.Mtime != was.Mtime || now.Size != was.Size) && request.KillsSuidgidOnDataChange)
        {
            const uint groupExec = 0x8;
            if (was.IsSetuid || (was.IsSetgid && (was.Mode & groupExec) != 0))
            {
                count("host:killpriv-checked");
            }
            if (now.IsSetuid || (now.IsSetgid && (now.Mode & groupExec) != 0))
            {
                problems.Add($"{was} kept set-id bits (mode {Convert.ToString(now.Mode, 8)}) through a data change by {request} (opcode {request.Opcode}) with --killpriv-v2, which must clear S_ISUID, and S_ISGID with S_IXGRP, for a user other than root");
            }
        }
        foreach (var (name, value) in now.Xattrs)
        {
            if (!was.Xattrs.TryGetValue(name, out string? old) || old != value)
            {
                JudgeXattr(rules, request, now, name, problems, count);
                if (name == HostRules.FileCapability)
                {
                    if (request.Opcode != Requester.Setxattr)
                    {
                        problems.Add($"{now} gained a file capability (security.capability) for a request with opcode {request.Opcode}, which sets no attribute");
                    }
                    count("host:file-capability-set");
                }
            }
        }
    }

    private static void JudgeXattr(HostRules rules, Requester request, HostEntry entry, string name, List<string> problems, Action<string> count)
    {
        count("host:xattr-set");
        if (!rules.HostXattrName(name))
        {
            problems.Add($"{entry} has the attribute '{name}' (set for a request by {request}), a name the rules {rules.XattrRule} never give a guest-set attribute");
        }
    }
}
