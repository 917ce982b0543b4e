using System.CommandLine;
using System.Globalization;
using System.Text;
using Vhostfsd.Hosting;
using Vhostfsd.FusePassthrough;

namespace Vhostfsd.Cli;

/// <summary>What <see cref="CommandLine.Parse"/> decided to do.</summary>
internal enum CommandLineOutcome
{
    /// <summary>Run the daemon with <see cref="ParsedCommandLine.Options"/>.</summary>
    Run,

    /// <summary>--help or --version: the text was printed; exit 0.</summary>
    Printed,
}

internal sealed record ParsedCommandLine(CommandLineOutcome Outcome, DaemonOptions Options);

/// <summary>The command line of vhostfsd: the Rust virtiofsd's long options (same names,
/// meanings and defaults) and the C virtiofsd's "-o" dialect, merged into one
/// <see cref="DaemonOptions"/>. Errors are <see cref="UsageException"/>s with a one-line message.</summary>
internal static class CommandLine
{
    /// <summary>Longest tag the virtio-fs config space holds.</summary>
    public const int MaxTagBytes = 36;

    public const string Description =
        "vhostfsd: a virtio-fs device back-end (vhost-user) serving a host directory to a guest; a drop-in for virtiofsd.";

    private sealed class Definition
    {
        public readonly RootCommand Root = new(Description);
        public readonly Option<string> SharedDir = new("--shared-dir") { Description = "Directory to share with the guest (required; C dialect: -o source=DIR)", HelpName = "DIR" };
        public readonly Option<string> Tag = new("--tag") { Description = "Tag the device reports in its config space (1-36 bytes); enables VHOST_USER_PROTOCOL_F_CONFIG", HelpName = "TAG" };
        public readonly Option<string> SocketPath = new("--socket-path") { Description = "Create and listen on this vhost-user UNIX socket; a lock file PATH.pid guards it", HelpName = "PATH" };
        public readonly Option<string> Socket = new("--socket") { Description = "Deprecated alias of --socket-path", Hidden = true };
        public readonly Option<string> SocketGroup = new("--socket-group") { Description = "Give this group ownership of the socket and let it connect (not with --fd)", HelpName = "GROUP" };
        public readonly Option<string> Fd = new("--fd") { Description = "Serve an already-listening UNIX stream socket passed as this fd (socket activation, libvirt, Kata)", HelpName = "N" };
        public readonly Option<string> ThreadPoolSize = new("--thread-pool-size") { Description = "Threads started for blocking requests (SETLKW, FSYNC, FLUSH...); one more is added whenever all are busy, up to 64 more; 0 starts one [default: 0]", HelpName = "N" };
        public readonly Option<string> PollMaxUs = new("--poll-max-us") { Description = "How long a queue thread keeps checking its ring for the next request before it sleeps, in microseconds: adapts to how soon requests come (0 to this; after a request that kept it busy longer, up to that long and at most 16 times this), 0 turns polling off [default: 64]", HelpName = "N" };
        public readonly Option<bool> Xattr = new("--xattr") { Description = "Serve extended attributes (otherwise the xattr requests fail with ENOSYS)" };
        public readonly Option<bool> PosixAcl = new("--posix-acl") { Description = "Support POSIX ACLs; the guest must offer POSIX_ACL (implies --xattr)" };
        public readonly Option<string> XattrMap = new("--xattrmap") { Description = "Rules that rename extended attributes between guest and host, e.g. :map::user.virtiofs.: (implies --xattr)", HelpName = "RULES" };
        public readonly Option<string> Sandbox = new("--sandbox") { Description = "Isolation: namespace (mount/pid/net namespaces + pivot_root), chroot, or none [default: namespace]", HelpName = "namespace|chroot|none" };
        public readonly Option<bool> ReadOnly = new("--readonly") { Description = "Refuse every change to the shared directory (EROFS)" };
        public readonly Option<string> Seccomp = new("--seccomp") { Description = "What a system call outside the daemon's allow-list does: kill the process, log it (and let it run), trap (SIGSYS, which ends the process), or none (no filter) [default: kill]", HelpName = "kill|log|trap|none" };
        public readonly Option<bool> AnnounceSubmounts = new("--announce-submounts") { Description = "Tell the guest which directories are mount points [default]" };
        public readonly Option<bool> NoAnnounceSubmounts = new("--no-announce-submounts") { Description = "Do not tell the guest which directories are mount points" };
        public readonly Option<string> InodeFileHandles = new("--inode-file-handles") { Description = "Hold inodes as file handles instead of O_PATH fds: never, prefer, mandatory [default: prefer]", HelpName = "never|prefer|mandatory" };
        public readonly Option<string> Cache = new("--cache") { Description = "Guest caching: never (alias none), metadata, auto, always [default: auto]", HelpName = "auto|always|metadata|never" };
        public readonly Option<bool> AllowMmap = new("--allow-mmap") { Description = "Allow shared mmap with --cache=never or metadata (only when the guest has the directory to itself)" };
        public readonly Option<bool> NoReaddirplus = new("--no-readdirplus") { Description = "Do not offer READDIRPLUS (never offered with --cache=never)" };
        public readonly Option<bool> Writeback = new("--writeback") { Description = "Let the guest use a writeback cache" };
        public readonly Option<bool> AllowDirectIo = new("--allow-direct-io") { Description = "Honour O_DIRECT from the guest (otherwise it is dropped)" };
        public readonly Option<bool> PrintCapabilities = new("--print-capabilities") { Description = "Print the vhost-user back-end capabilities as JSON and exit" };
        public readonly Option<string> ModCaps = new("--modcaps") { Description = "Change the capabilities kept after start-up, e.g. +sys_admin:-mknod", HelpName = "+CAP:-CAP" };
        public readonly Option<string> LogLevel = new("--log-level") { Description = "error, warn, info, debug, trace or off [default: info]", HelpName = "LEVEL" };
        public readonly Option<bool> Syslog = new("--syslog") { Description = "Log to syslog (/dev/log) instead of stderr" };
        public readonly Option<string> RlimitNofile = new("--rlimit-nofile") { Description = "Set RLIMIT_NOFILE; 0 leaves it unchanged [default: min(1000000, fs.nr_open) when lower]", HelpName = "N" };
        public readonly Option<string[]> Compat = new("-o") { Description = "C virtiofsd options: source=DIR,cache=,sandbox=,xattr,posix_lock,flock,log_level=,... (deprecated form)", HelpName = "OPT[,OPT...]", AllowMultipleArgumentsPerToken = false };
        public readonly Option<bool> Debug = new("-d") { Description = "Same as --log-level=debug (deprecated)" };
        public readonly Option<bool> Foreground = new("-f") { Description = "No effect: vhostfsd always runs in the foreground (deprecated)" };
        public readonly Option<bool> KillprivV2 = new("--killpriv-v2") { Description = "Support FUSE_HANDLE_KILLPRIV_V2" };
        public readonly Option<bool> NoKillprivV2 = new("--no-killpriv-v2") { Description = "Do not support FUSE_HANDLE_KILLPRIV_V2 [default]" };
        public readonly Option<bool> SecurityLabel = new("--security-label") { Description = "Store the security label the guest sends with new files (implies --xattr)" };
        public readonly Option<bool> PreserveNoatime = new("--preserve-noatime") { Description = "Keep the guest's O_NOATIME (otherwise it is dropped to avoid EPERM)" };
        public readonly Option<bool> Version = new("--version", "-V") { Description = "Print the version and exit" };
        public readonly Option<bool> PosixLock = new("--posix-lock") { Description = "Forward the guest's POSIX (fcntl) locks to the host, so they conflict with other guests' and host programs' locks (C dialect: -o posix_lock)" };
        public readonly Option<bool> NoPosixLock = new("--no-posix-lock") { Description = "Keep POSIX locks local to the guest [default]" };
        public readonly Option<bool> Flock = new("--flock") { Description = "Forward the guest's flock() locks to the host (C dialect: -o flock)" };
        public readonly Option<bool> NoFlock = new("--no-flock") { Description = "Keep flock() locks local to the guest [default]" };
        public readonly Option<string> FuseMount = new("--fuse-mount") { Description = "Instead of serving a vhost-user socket, mount the share on this host directory through the kernel's FUSE (/dev/fuse) and serve it there until unmounted or signalled (needs root)", HelpName = "MOUNTPOINT" };
        public readonly Option<string> FuseOptions = new("--fuse-options") { Description = "With --fuse-mount: allow_other (every user may use the mount, not only root; implies default_permissions), default_permissions (the kernel checks file modes itself), comma-separated", HelpName = "OPT[,OPT]" };

        // Recognised so that they get a clear refusal instead of "unrecognized".
        public readonly Option<string[]> UidMap = new("--uid-map") { Hidden = true };
        public readonly Option<string[]> GidMap = new("--gid-map") { Hidden = true };
        public readonly Option<string[]> TranslateUid = new("--translate-uid") { Hidden = true };
        public readonly Option<string[]> TranslateGid = new("--translate-gid") { Hidden = true };
        public readonly Option<string> MigrationMode = new("--migration-mode") { Hidden = true };
        public readonly Option<string> MigrationOnError = new("--migration-on-error") { Hidden = true };
        public readonly Option<bool> MigrationVerifyHandles = new("--migration-verify-handles") { Hidden = true };
        public readonly Option<bool> MigrationConfirmPaths = new("--migration-confirm-paths") { Hidden = true };

        public Definition()
        {
            // Our own --version (-V, as virtiofsd) replaces the library's.
            for (int i = Root.Options.Count - 1; i >= 0; i--)
            {
                if (Root.Options[i] is VersionOption)
                {
                    Root.Options.RemoveAt(i);
                }
            }
            Root.Directives.Clear();
            Option[] all =
            [
                SharedDir, Tag, SocketPath, Socket, SocketGroup, Fd, ThreadPoolSize, PollMaxUs, Xattr, PosixAcl, XattrMap,
                Sandbox, ReadOnly, Seccomp, AnnounceSubmounts, NoAnnounceSubmounts, InodeFileHandles, Cache,
                AllowMmap, NoReaddirplus, Writeback, AllowDirectIo, PrintCapabilities, ModCaps, LogLevel, Syslog,
                RlimitNofile, Compat, Debug, Foreground, KillprivV2, NoKillprivV2, SecurityLabel, PreserveNoatime,
                Version, UidMap, GidMap, TranslateUid, TranslateGid, MigrationMode, MigrationOnError,
                MigrationVerifyHandles, MigrationConfirmPaths,
                PosixLock, NoPosixLock, Flock, NoFlock, FuseMount, FuseOptions,
            ];
            foreach (Option option in all)
            {
                Root.Options.Add(option);
            }
        }
    }

    /// <summary>Parses <paramref name="args"/>. Prints --help / --version to <paramref name="output"/>.
    /// Throws <see cref="UsageException"/> for anything wrong.</summary>
    public static ParsedCommandLine Parse(IReadOnlyList<string> args, TextWriter output)
    {
        var d = new Definition();
        var configuration = new ParserConfiguration { ResponseFileTokenReplacer = null };
        ParseResult result = d.Root.Parse(args, configuration);

        if (result.Errors.Count > 0)
        {
            throw new UsageException(OneLine(result.Errors[0].Message));
        }
        if (result.GetValue(d.Version))
        {
            output.WriteLine("vhostfsd " + VersionText());
            return new ParsedCommandLine(CommandLineOutcome.Printed, new DaemonOptions());
        }
        if (result.Action is System.CommandLine.Help.HelpAction)
        {
            result.Invoke(new InvocationConfiguration { Output = output, Error = output });
            output.WriteLine();
            output.WriteLine("Exit status: 0 after a normal disconnect, an unmount (--fuse-mount) or a termination signal, 1 when start-up or serving fails, 2 for a wrong command line.");
            output.WriteLine("See docs/cli.md for every option, the C (-o) dialect and how to run under libvirt, Kata and systemd.");
            return new ParsedCommandLine(CommandLineOutcome.Printed, new DaemonOptions());
        }

        RefuseUnsupported(result, d);

        var o = new DaemonOptions();
        o.SharedDir = NonEmpty(result, d.SharedDir);
        o.Tag = NonEmpty(result, d.Tag);
        if (o.Tag != null && Encoding.UTF8.GetByteCount(o.Tag) > MaxTagBytes)
        {
            throw new UsageException($"--tag '{o.Tag}' is {Encoding.UTF8.GetByteCount(o.Tag)} bytes; the virtio-fs tag holds at most {MaxTagBytes}");
        }

        string? socketPath = NonEmpty(result, d.SocketPath);
        string? socketAlias = NonEmpty(result, d.Socket);
        if (socketPath == null && socketAlias != null)
        {
            socketPath = socketAlias;
            o.Warnings.Add("--socket is deprecated: use --socket-path");
        }
        else if (socketPath != null && socketAlias != null && socketAlias != socketPath)
        {
            throw new UsageException("--socket and --socket-path name different sockets; give only --socket-path");
        }
        o.SocketPath = socketPath;
        o.SocketGroup = NonEmpty(result, d.SocketGroup);
        if (Given(result, d.Fd))
        {
            o.Fd = (int)ParseUnsigned(result.GetValue(d.Fd), "--fd", int.MaxValue);
        }
        if (Given(result, d.ThreadPoolSize))
        {
            o.ThreadPoolSize = (int)ParseUnsigned(result.GetValue(d.ThreadPoolSize), "--thread-pool-size", 1024);
        }
        if (Given(result, d.PollMaxUs))
        {
            o.PollMaxUs = (int)ParseUnsigned(result.GetValue(d.PollMaxUs), "--poll-max-us", DaemonOptions.MaxPollMaxUs);
        }
        o.Xattr = result.GetValue(d.Xattr);
        o.PosixAcl = result.GetValue(d.PosixAcl);
        o.XattrMap = NonEmpty(result, d.XattrMap);
        if (Given(result, d.Sandbox))
        {
            o.Sandbox = ParseChoice(result.GetValue(d.Sandbox), "--sandbox", SandboxChoices);
        }
        o.ReadOnly = result.GetValue(d.ReadOnly);
        if (Given(result, d.Seccomp))
        {
            o.Seccomp = ParseChoice(result.GetValue(d.Seccomp), "--seccomp", SeccompChoices);
        }
        // Last one wins between the pair, as with the reference daemon's overrides_with.
        o.AnnounceSubmounts = LastOfPair(result, d.AnnounceSubmounts, d.NoAnnounceSubmounts, defaultValue: true);
        if (Given(result, d.InodeFileHandles))
        {
            string? value = result.GetValue(d.InodeFileHandles);
            if (string.Equals(value, "fallback", StringComparison.OrdinalIgnoreCase))
            {
                o.Warnings.Add("--inode-file-handles=fallback is deprecated: use prefer");
            }
            o.InodeFileHandles = ParseChoice(value, "--inode-file-handles", InodeFileHandleChoices);
        }
        if (Given(result, d.Cache))
        {
            o.Cache = ParseChoice(result.GetValue(d.Cache), "--cache", CacheChoices);
        }
        o.AllowMmap = result.GetValue(d.AllowMmap);
        o.NoReaddirplus = result.GetValue(d.NoReaddirplus);
        o.Writeback = result.GetValue(d.Writeback);
        o.AllowDirectIo = result.GetValue(d.AllowDirectIo);
        o.PrintCapabilities = result.GetValue(d.PrintCapabilities);
        if (Given(result, d.ModCaps))
        {
            o.ModCaps = result.GetValue(d.ModCaps) ?? "";
            Capabilities.ParseModCaps(o.ModCaps);
        }
        if (Given(result, d.LogLevel))
        {
            o.LogLevel = ParseChoice(result.GetValue(d.LogLevel), "--log-level", LogLevelChoices);
        }
        o.Syslog = result.GetValue(d.Syslog);
        if (Given(result, d.RlimitNofile))
        {
            o.RlimitNofile = ParseUnsigned(result.GetValue(d.RlimitNofile), "--rlimit-nofile", long.MaxValue);
        }
        o.KillprivV2 = LastOfPair(result, d.KillprivV2, d.NoKillprivV2, defaultValue: false);
        o.PosixLock = LastOfPair(result, d.PosixLock, d.NoPosixLock, defaultValue: false);
        o.Flock = LastOfPair(result, d.Flock, d.NoFlock, defaultValue: false);
        o.SecurityLabel = result.GetValue(d.SecurityLabel);
        o.PreserveNoatime = result.GetValue(d.PreserveNoatime);

        if (result.GetValue(d.Foreground))
        {
            o.Warnings.Add("-f has no effect (vhostfsd always runs in the foreground); please remove it");
        }
        if (result.GetValue(d.Debug))
        {
            o.LogLevel = DaemonLogLevel.Debug;
            o.Warnings.Add("-d is deprecated: use --log-level=debug");
        }
        string[]? compat = result.GetValue(d.Compat);
        if (compat is { Length: > 0 })
        {
            CompatOptions.Apply(o, compat);
            o.Warnings.Add("the -o option form is deprecated: use the long options (e.g. --cache=auto instead of -o cache=auto)");
        }

        ApplyFuseMount(result, d, o);
        Validate(o);
        return new ParsedCommandLine(CommandLineOutcome.Run, o);
    }

    /// <summary>Cross-option rules, after both dialects were applied.</summary>
    private static void Validate(DaemonOptions o)
    {
        if (o.PrintCapabilities)
        {
            return;
        }
        if (o.SharedDir == null)
        {
            throw new UsageException("missing --shared-dir DIR (or -o source=DIR)");
        }
        if (o.Fd != null && o.SocketPath != null)
        {
            throw new UsageException("--fd and --socket-path both name the listening socket; give only one");
        }
        if (o.Fd != null && o.SocketGroup != null)
        {
            throw new UsageException("--socket-group only applies to a socket created with --socket-path, not to --fd");
        }
        if (o.Fd != null && o.Fd < 3)
        {
            throw new UsageException($"--fd={o.Fd} is a standard stream (0-2), not a listening socket");
        }
        if (o.InodeFileHandles != InodeFileHandles.Never && o.ModCaps != null
            && Capabilities.ParseModCaps(o.ModCaps).Removed.Contains(Capabilities.DacReadSearch))
        {
            throw new UsageException($"--modcaps cannot remove dac_read_search while --inode-file-handles={o.InodeFileHandles.ToString().ToLowerInvariant()} needs it; add --inode-file-handles=never");
        }
    }

    /// <summary>--fuse-mount and --fuse-options; the vhost-user options mean nothing without a socket
    /// and are refused beside --fuse-mount rather than ignored.</summary>
    private static void ApplyFuseMount(ParseResult result, Definition d, DaemonOptions o)
    {
        o.FuseMount = NonEmpty(result, d.FuseMount);
        string? fuseOptions = NonEmpty(result, d.FuseOptions);
        if (o.FuseMount == null)
        {
            if (fuseOptions != null)
            {
                throw new UsageException("--fuse-options applies only with --fuse-mount MOUNTPOINT");
            }
            return;
        }
        foreach (Option vhostUser in new Option[] { d.SocketPath, d.Socket, d.Fd, d.SocketGroup, d.Tag, d.ThreadPoolSize, d.PollMaxUs })
        {
            if (Given(result, vhostUser))
            {
                throw new UsageException($"{vhostUser.Name} is a vhost-user option; it does not apply with --fuse-mount");
            }
        }
        foreach (string word in (fuseOptions ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            switch (word)
            {
                case "allow_other":
                    o.FuseAllowOther = true;
                    break;
                case "default_permissions":
                    o.FuseDefaultPermissions = true;
                    break;
                default:
                    throw new UsageException($"unknown --fuse-options word '{word}' (expected allow_other, default_permissions)");
            }
        }
        // The daemon takes the caller's ids only to create entries; open, write, chmod, chown,
        // unlink, rename and the rest run with its own rights, so on a mount that other users may
        // enter the kernel has to check their permissions first.
        if (o.FuseAllowOther)
        {
            o.FuseDefaultPermissions = true;
        }
    }

    private static void RefuseUnsupported(ParseResult result, Definition d)
    {
        if (Given(result, d.UidMap) || Given(result, d.GidMap))
        {
            throw new UsageException("--uid-map/--gid-map are not supported: vhostfsd runs as root and does not create a user namespace");
        }
        if (Given(result, d.TranslateUid) || Given(result, d.TranslateGid))
        {
            throw new UsageException("--translate-uid/--translate-gid are not supported: ids are passed through unchanged");
        }
        if (Given(result, d.MigrationMode) || Given(result, d.MigrationOnError)
            || Given(result, d.MigrationVerifyHandles) || Given(result, d.MigrationConfirmPaths))
        {
            throw new UsageException("the --migration-* options are not supported: vhostfsd does not migrate device state");
        }
    }

    private static readonly (string Name, SandboxMode Value)[] SandboxChoices =
        [("namespace", SandboxMode.Namespace), ("chroot", SandboxMode.Chroot), ("none", SandboxMode.None)];

    private static readonly (string Name, SeccompMode Value)[] SeccompChoices =
        [("none", SeccompMode.None), ("kill", SeccompMode.Kill), ("log", SeccompMode.Log), ("trap", SeccompMode.Trap)];

    private static readonly (string Name, InodeFileHandles Value)[] InodeFileHandleChoices =
        [("never", InodeFileHandles.Never), ("prefer", InodeFileHandles.Prefer), ("fallback", InodeFileHandles.Prefer), ("mandatory", InodeFileHandles.Mandatory)];

    private static readonly (string Name, CachePolicy Value)[] CacheChoices =
        [("never", CachePolicy.Never), ("none", CachePolicy.Never), ("metadata", CachePolicy.Metadata), ("auto", CachePolicy.Auto), ("always", CachePolicy.Always)];

    private static readonly (string Name, DaemonLogLevel Value)[] LogLevelChoices =
        [("error", DaemonLogLevel.Error), ("err", DaemonLogLevel.Error), ("warn", DaemonLogLevel.Warn), ("warning", DaemonLogLevel.Warn),
         ("info", DaemonLogLevel.Info), ("debug", DaemonLogLevel.Debug), ("trace", DaemonLogLevel.Trace), ("off", DaemonLogLevel.Off)];

    /// <summary>Matches a value case-insensitively against the names of an option's choices.</summary>
    internal static T ParseChoice<T>(string? value, string option, (string Name, T Value)[] choices)
    {
        foreach (var (name, v) in choices)
        {
            if (string.Equals(name, value, StringComparison.OrdinalIgnoreCase))
            {
                return v;
            }
        }
        var names = new StringBuilder();
        foreach (var (name, _) in choices)
        {
            names.Append(names.Length == 0 ? "" : ", ").Append(name);
        }
        throw new UsageException($"invalid value '{value}' for {option} (expected one of: {names})");
    }

    /// <summary>Parses the level names of --log-level (also used for RUST_LOG).</summary>
    internal static bool TryParseLogLevel(string? value, out DaemonLogLevel level)
    {
        foreach (var (name, v) in LogLevelChoices)
        {
            if (string.Equals(name, value?.Trim(), StringComparison.OrdinalIgnoreCase))
            {
                level = v;
                return true;
            }
        }
        level = DaemonLogLevel.Info;
        return false;
    }

    private static ulong ParseUnsigned(string? value, string option, long max)
    {
        if (!ulong.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out ulong n) || n > (ulong)max)
        {
            throw new UsageException($"invalid value '{value}' for {option} (expected a whole number from 0 to {max})");
        }
        return n;
    }

    /// <summary>True when the option appears on the command line (not just a default).</summary>
    private static bool Given(ParseResult result, Option option) => result.GetResult(option) is { Implicit: false };

    private static string? NonEmpty(ParseResult result, Option<string> option)
    {
        if (!Given(result, option))
        {
            return null;
        }
        string? value = result.GetValue(option);
        if (string.IsNullOrEmpty(value))
        {
            throw new UsageException($"{option.Name} needs a non-empty value");
        }
        return value;
    }

    /// <summary>For a --x / --no-x pair: the value of whichever appears last on the line.</summary>
    private static bool LastOfPair(ParseResult result, Option<bool> positive, Option<bool> negative, bool defaultValue)
    {
        int positiveAt = LastIndex(result, positive);
        int negativeAt = LastIndex(result, negative);
        if (positiveAt < 0 && negativeAt < 0)
        {
            return defaultValue;
        }
        return positiveAt > negativeAt ? result.GetValue(positive) : !result.GetValue(negative);
    }

    private static int LastIndex(ParseResult result, Option option)
    {
        int last = -1;
        for (int i = 0; i < result.Tokens.Count; i++)
        {
            var token = result.Tokens[i];
            if (token.Type == System.CommandLine.Parsing.TokenType.Option
                && (token.Value == option.Name || option.Aliases.Contains(token.Value)))
            {
                last = i;
            }
        }
        return last;
    }

    private static string OneLine(string message) =>
        string.Join(' ', message.Split(['\r', '\n', '\t'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));

    internal static string VersionText() => BuildInfo.Version;
}
