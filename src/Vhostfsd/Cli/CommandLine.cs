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

    /// <summary>Every option, in the order --help lists them.</summary>
    private sealed class Definition
    {
        public readonly OptionSpec SharedDir = new("--shared-dir", "DIR", "Directory to share with the guest (required; C dialect: -o source=DIR)");
        public readonly OptionSpec Tag = new("--tag", "TAG", "Tag the device reports in its config space (1-36 bytes); enables VHOST_USER_PROTOCOL_F_CONFIG");
        public readonly OptionSpec SocketPath = new("--socket-path", "PATH", "Create and listen on this vhost-user UNIX socket; a lock file PATH.pid guards it");
        public readonly OptionSpec Socket = new("--socket", "PATH", "Deprecated alias of --socket-path") { Hidden = true };
        public readonly OptionSpec SocketGroup = new("--socket-group", "GROUP", "Give this group ownership of the socket and let it connect (not with --fd)");
        public readonly OptionSpec Fd = new("--fd", "N", "Serve an already-listening UNIX stream socket passed as this fd (socket activation, libvirt, Kata)");
        public readonly OptionSpec ThreadPoolSize = new("--thread-pool-size", "N", "Threads started for blocking requests (SETLKW, FSYNC, FLUSH...); one more is added whenever all are busy, up to 64 more; 0 starts one [default: 0]");
        public readonly OptionSpec PollMaxUs = new("--poll-max-us", "N", "How long a queue thread keeps checking its ring for the next request before it sleeps, in microseconds: adapts to how soon requests come (0 to this; after a request that kept it busy longer, up to that long and at most 16 times this), 0 turns polling off [default: 64]");
        public readonly OptionSpec Xattr = new("--xattr", null, "Serve extended attributes (otherwise the xattr requests fail with ENOSYS)");
        public readonly OptionSpec PosixAcl = new("--posix-acl", null, "Support POSIX ACLs; the guest must offer POSIX_ACL (implies --xattr)");
        public readonly OptionSpec XattrMap = new("--xattrmap", "RULES", "Rules that rename extended attributes between guest and host, e.g. :map::user.virtiofs.: (implies --xattr)");
        public readonly OptionSpec Sandbox = new("--sandbox", "namespace|chroot|none", "Isolation: namespace (mount/pid/net namespaces + pivot_root), chroot, or none [default: namespace]");
        public readonly OptionSpec ReadOnly = new("--readonly", null, "Refuse every change to the shared directory (EROFS)");
        public readonly OptionSpec Seccomp = new("--seccomp", "kill|log|trap|none", "What a system call outside the daemon's allow-list does: kill the process, log it (and let it run), trap (SIGSYS, which ends the process), or none (no filter) [default: kill]");
        public readonly OptionSpec AnnounceSubmounts = new("--announce-submounts", null, "Tell the guest which directories are mount points [default]");
        public readonly OptionSpec NoAnnounceSubmounts = new("--no-announce-submounts", null, "Do not tell the guest which directories are mount points");
        public readonly OptionSpec InodeFileHandles = new("--inode-file-handles", "never|prefer|mandatory", "Hold inodes as file handles instead of O_PATH fds: never, prefer, mandatory [default: prefer]");
        public readonly OptionSpec Cache = new("--cache", "auto|always|metadata|never", "Guest caching: never (alias none), metadata, auto, always [default: auto]");
        public readonly OptionSpec AllowMmap = new("--allow-mmap", null, "Allow shared mmap with --cache=never or metadata (only when the guest has the directory to itself)");
        public readonly OptionSpec NoReaddirplus = new("--no-readdirplus", null, "Do not offer READDIRPLUS (never offered with --cache=never)");
        public readonly OptionSpec Writeback = new("--writeback", null, "Let the guest use a writeback cache");
        public readonly OptionSpec AllowDirectIo = new("--allow-direct-io", null, "Honour O_DIRECT from the guest (otherwise it is dropped)");
        public readonly OptionSpec PrintCapabilities = new("--print-capabilities", null, "Print the vhost-user back-end capabilities as JSON and exit");
        public readonly OptionSpec ModCaps = new("--modcaps", "+CAP:-CAP", "Change the capabilities kept after start-up, e.g. +sys_admin:-mknod");
        public readonly OptionSpec LogLevel = new("--log-level", "LEVEL", "error, warn, info, debug, trace or off [default: info]");
        public readonly OptionSpec Syslog = new("--syslog", null, "Log to syslog (/dev/log) instead of stderr");
        public readonly OptionSpec RlimitNofile = new("--rlimit-nofile", "N", "Set RLIMIT_NOFILE; 0 leaves it unchanged [default: min(1000000, fs.nr_open) when lower]");
        public readonly OptionSpec Compat = new("-o", "OPT[,OPT...]", "C virtiofsd options: source=DIR,cache=,sandbox=,xattr,posix_lock,flock,log_level=,... (deprecated form)") { Repeats = true };
        public readonly OptionSpec Debug = new("-d", null, "Same as --log-level=debug (deprecated)");
        public readonly OptionSpec Foreground = new("-f", null, "No effect: vhostfsd always runs in the foreground (deprecated)");
        public readonly OptionSpec KillprivV2 = new("--killpriv-v2", null, "Support FUSE_HANDLE_KILLPRIV_V2");
        public readonly OptionSpec NoKillprivV2 = new("--no-killpriv-v2", null, "Do not support FUSE_HANDLE_KILLPRIV_V2 [default]");
        public readonly OptionSpec SecurityLabel = new("--security-label", null, "Store the security label the guest sends with new files (implies --xattr)");
        public readonly OptionSpec PreserveNoatime = new("--preserve-noatime", null, "Keep the guest's O_NOATIME (otherwise it is dropped to avoid EPERM)");
        public readonly OptionSpec Version = new("--version", null, "Print the version and exit") { Aliases = ["-V"] };
        public readonly OptionSpec PosixLock = new("--posix-lock", null, "Forward the guest's POSIX (fcntl) locks to the host, so they conflict with other guests' and host programs' locks (C dialect: -o posix_lock)");
        public readonly OptionSpec NoPosixLock = new("--no-posix-lock", null, "Keep POSIX locks local to the guest [default]");
        public readonly OptionSpec Flock = new("--flock", null, "Forward the guest's flock() locks to the host (C dialect: -o flock)");
        public readonly OptionSpec NoFlock = new("--no-flock", null, "Keep flock() locks local to the guest [default]");
        public readonly OptionSpec FuseMount = new("--fuse-mount", "MOUNTPOINT", "Instead of serving a vhost-user socket, mount the share on this host directory through the kernel's FUSE (/dev/fuse) and serve it there until unmounted or signalled (needs root)");
        public readonly OptionSpec FuseOptions = new("--fuse-options", "OPT[,OPT]", "With --fuse-mount: allow_other (every user may use the mount, not only root; implies default_permissions and --posix-acl), default_permissions (the kernel checks file modes itself), comma-separated");
        public readonly OptionSpec Help = new("--help", null, "Show help and usage information") { Aliases = ["-?", "-h"] };

        // Recognised so that they get a clear refusal instead of "unrecognized".
        public readonly OptionSpec UidMap = new("--uid-map", "MAP", "") { Repeats = true, Hidden = true };
        public readonly OptionSpec GidMap = new("--gid-map", "MAP", "") { Repeats = true, Hidden = true };
        public readonly OptionSpec TranslateUid = new("--translate-uid", "MAP", "") { Repeats = true, Hidden = true };
        public readonly OptionSpec TranslateGid = new("--translate-gid", "MAP", "") { Repeats = true, Hidden = true };
        public readonly OptionSpec MigrationMode = new("--migration-mode", "MODE", "") { Hidden = true };
        public readonly OptionSpec MigrationOnError = new("--migration-on-error", "ACTION", "") { Hidden = true };
        public readonly OptionSpec MigrationVerifyHandles = new("--migration-verify-handles", null, "") { Hidden = true };
        public readonly OptionSpec MigrationConfirmPaths = new("--migration-confirm-paths", null, "") { Hidden = true };

        public readonly OptionSpec[] All;

        public Definition()
        {
            All =
            [
                SharedDir, Tag, SocketPath, Socket, SocketGroup, Fd, ThreadPoolSize, PollMaxUs, Xattr, PosixAcl, XattrMap,
                Sandbox, ReadOnly, Seccomp, AnnounceSubmounts, NoAnnounceSubmounts, InodeFileHandles, Cache,
                AllowMmap, NoReaddirplus, Writeback, AllowDirectIo, PrintCapabilities, ModCaps, LogLevel, Syslog,
                RlimitNofile, Compat, Debug, Foreground, KillprivV2, NoKillprivV2, SecurityLabel, PreserveNoatime,
                Version, UidMap, GidMap, TranslateUid, TranslateGid, MigrationMode, MigrationOnError,
                MigrationVerifyHandles, MigrationConfirmPaths,
                PosixLock, NoPosixLock, Flock, NoFlock, FuseMount, FuseOptions, Help,
            ];
        }
    }

    /// <summary>Parses <paramref name="args"/>. Prints --help / --version to <paramref name="output"/>.
    /// Throws <see cref="UsageException"/> for anything wrong.</summary>
    public static ParsedCommandLine Parse(IReadOnlyList<string> args, TextWriter output)
    {
        var d = new Definition();
        GivenOptions given;
        try
        {
            given = GivenOptions.Read(args, d.All);
        }
        catch (UsageException) when (AsksForHelp(args, d.Help))
        {
            // Someone who asks for help gets it, even on a line with a mistake in it.
            WriteHelp(d.All, output);
            return new ParsedCommandLine(CommandLineOutcome.Printed, new DaemonOptions());
        }
        if (given.Flag(d.Version))
        {
            output.WriteLine("vhostfsd " + VersionText());
            return new ParsedCommandLine(CommandLineOutcome.Printed, new DaemonOptions());
        }
        if (given.Flag(d.Help))
        {
            WriteHelp(d.All, output);
            return new ParsedCommandLine(CommandLineOutcome.Printed, new DaemonOptions());
        }

        RefuseUnsupported(given, d);

        var o = new DaemonOptions();
        o.SharedDir = NonEmpty(given, d.SharedDir);
        o.Tag = NonEmpty(given, d.Tag);
        if (o.Tag != null && Encoding.UTF8.GetByteCount(o.Tag) > MaxTagBytes)
        {
            throw new UsageException($"--tag '{o.Tag}' is {Encoding.UTF8.GetByteCount(o.Tag)} bytes; the virtio-fs tag holds at most {MaxTagBytes}");
        }

        string? socketPath = NonEmpty(given, d.SocketPath);
        string? socketAlias = NonEmpty(given, d.Socket);
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
        o.SocketGroup = NonEmpty(given, d.SocketGroup);
        if (given.Given(d.Fd))
        {
            o.Fd = (int)ParseUnsigned(given.Value(d.Fd), "--fd", int.MaxValue);
        }
        if (given.Given(d.ThreadPoolSize))
        {
            o.ThreadPoolSize = (int)ParseUnsigned(given.Value(d.ThreadPoolSize), "--thread-pool-size", 1024);
        }
        if (given.Given(d.PollMaxUs))
        {
            o.PollMaxUs = (int)ParseUnsigned(given.Value(d.PollMaxUs), "--poll-max-us", DaemonOptions.MaxPollMaxUs);
        }
        o.Xattr = given.Flag(d.Xattr);
        o.PosixAcl = given.Flag(d.PosixAcl);
        o.XattrMap = NonEmpty(given, d.XattrMap);
        if (given.Given(d.Sandbox))
        {
            o.Sandbox = ParseChoice(given.Value(d.Sandbox), "--sandbox", SandboxChoices);
        }
        o.ReadOnly = given.Flag(d.ReadOnly);
        if (given.Given(d.Seccomp))
        {
            o.Seccomp = ParseChoice(given.Value(d.Seccomp), "--seccomp", SeccompChoices);
        }
        // Last one wins between the pair, as with the reference daemon's overrides_with.
        o.AnnounceSubmounts = LastOfPair(given, d.AnnounceSubmounts, d.NoAnnounceSubmounts, defaultValue: true);
        if (given.Given(d.InodeFileHandles))
        {
            string? value = given.Value(d.InodeFileHandles);
            if (string.Equals(value, "fallback", StringComparison.OrdinalIgnoreCase))
            {
                o.Warnings.Add("--inode-file-handles=fallback is deprecated: use prefer");
            }
            o.InodeFileHandles = ParseChoice(value, "--inode-file-handles", InodeFileHandleChoices);
        }
        if (given.Given(d.Cache))
        {
            o.Cache = ParseChoice(given.Value(d.Cache), "--cache", CacheChoices);
        }
        o.AllowMmap = given.Flag(d.AllowMmap);
        o.NoReaddirplus = given.Flag(d.NoReaddirplus);
        o.Writeback = given.Flag(d.Writeback);
        o.AllowDirectIo = given.Flag(d.AllowDirectIo);
        o.PrintCapabilities = given.Flag(d.PrintCapabilities);
        if (given.Given(d.ModCaps))
        {
            o.ModCaps = given.Value(d.ModCaps) ?? "";
            Capabilities.ParseModCaps(o.ModCaps);
        }
        if (given.Given(d.LogLevel))
        {
            o.LogLevel = ParseChoice(given.Value(d.LogLevel), "--log-level", LogLevelChoices);
        }
        o.Syslog = given.Flag(d.Syslog);
        if (given.Given(d.RlimitNofile))
        {
            o.RlimitNofile = ParseUnsigned(given.Value(d.RlimitNofile), "--rlimit-nofile", long.MaxValue);
        }
        o.KillprivV2 = LastOfPair(given, d.KillprivV2, d.NoKillprivV2, defaultValue: false);
        o.PosixLock = LastOfPair(given, d.PosixLock, d.NoPosixLock, defaultValue: false);
        o.Flock = LastOfPair(given, d.Flock, d.NoFlock, defaultValue: false);
        o.SecurityLabel = given.Flag(d.SecurityLabel);
        o.PreserveNoatime = given.Flag(d.PreserveNoatime);

        if (given.Flag(d.Foreground))
        {
            o.Warnings.Add("-f has no effect (vhostfsd always runs in the foreground); please remove it");
        }
        if (given.Flag(d.Debug))
        {
            o.LogLevel = DaemonLogLevel.Debug;
            o.Warnings.Add("-d is deprecated: use --log-level=debug");
        }
        List<string> compat = given.Values(d.Compat);
        if (compat.Count > 0)
        {
            CompatOptions.Apply(o, compat);
            o.Warnings.Add("the -o option form is deprecated: use the long options (e.g. --cache=auto instead of -o cache=auto)");
        }

        ApplyFuseMount(given, d, o);
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
    private static void ApplyFuseMount(GivenOptions given, Definition d, DaemonOptions o)
    {
        o.FuseMount = NonEmpty(given, d.FuseMount);
        string? fuseOptions = NonEmpty(given, d.FuseOptions);
        if (o.FuseMount == null)
        {
            if (fuseOptions != null)
            {
                throw new UsageException("--fuse-options applies only with --fuse-mount MOUNTPOINT");
            }
            return;
        }
        foreach (OptionSpec vhostUser in new[] { d.SocketPath, d.Socket, d.Fd, d.SocketGroup, d.Tag, d.ThreadPoolSize, d.PollMaxUs })
        {
            if (given.Given(vhostUser))
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
        // enter the kernel has to check their permissions first — ACLs included: without
        // POSIX_ACL granted at INIT it sees none, and a user an ACL entry shuts out gets in.
        if (o.FuseAllowOther)
        {
            o.FuseDefaultPermissions = true;
            o.PosixAcl = true;
        }
    }

    private static void RefuseUnsupported(GivenOptions given, Definition d)
    {
        if (given.Given(d.UidMap) || given.Given(d.GidMap))
        {
            throw new UsageException("--uid-map/--gid-map are not supported: vhostfsd runs as root and does not create a user namespace");
        }
        if (given.Given(d.TranslateUid) || given.Given(d.TranslateGid))
        {
            throw new UsageException("--translate-uid/--translate-gid are not supported: ids are passed through unchanged");
        }
        if (given.Given(d.MigrationMode) || given.Given(d.MigrationOnError)
            || given.Given(d.MigrationVerifyHandles) || given.Given(d.MigrationConfirmPaths))
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

    private static string? NonEmpty(GivenOptions given, OptionSpec option)
    {
        if (!given.Given(option))
        {
            return null;
        }
        string? value = given.Value(option);
        if (string.IsNullOrEmpty(value))
        {
            throw new UsageException($"{option.Name} needs a non-empty value");
        }
        return value;
    }

    /// <summary>For a --x / --no-x pair: the value of whichever appears last on the line.</summary>
    private static bool LastOfPair(GivenOptions given, OptionSpec positive, OptionSpec negative, bool defaultValue)
    {
        int positiveAt = given.LastIndex(positive);
        int negativeAt = given.LastIndex(negative);
        if (positiveAt < 0 && negativeAt < 0)
        {
            return defaultValue;
        }
        return positiveAt > negativeAt ? given.Flag(positive) : !given.Flag(negative);
    }

    /// <summary>One option of the command line: how it is spelled, whether it takes a value, and
    /// its line in --help.</summary>
    private sealed class OptionSpec(string name, string? valueName, string description)
    {
        /// <summary>The main spelling ("--shared-dir", "-o"); messages name the option by it.</summary>
        public string Name { get; } = name;

        /// <summary>What --help shows for the value ("DIR"); null for a flag, which takes none.</summary>
        public string? ValueName { get; } = valueName;

        public string Description { get; } = description;

        /// <summary>Other spellings, listed before <see cref="Name"/> in --help ("-V").</summary>
        public string[] Aliases { get; init; } = [];

        /// <summary>The option may be given more than once and every value counts (-o). Any other
        /// option that takes a value may be given once.</summary>
        public bool Repeats { get; init; }

        /// <summary>Recognised but left out of --help.</summary>
        public bool Hidden { get; init; }

        public bool IsFlag => ValueName == null;

        public bool IsSpelled(string spelling)
        {
            if (spelling == Name)
            {
                return true;
            }
            foreach (string alias in Aliases)
            {
                if (spelling == alias)
                {
                    return true;
                }
            }
            return false;
        }
    }

    /// <summary>An option where it appears on the line, with its value: for a flag, null when it
    /// was given bare, otherwise the "true" or "false" written after it.</summary>
    private readonly struct Occurrence(OptionSpec option, string? value)
    {
        public OptionSpec Option { get; } = option;
        public string? Value { get; } = value;
    }

    /// <summary>The options on the command line in the order given, read in one pass with the
    /// Rust daemon's (clap's) syntax: "--name value", "--name=value", "-o value", "-ovalue",
    /// "-o=value", single-letter flags together ("-df"), and "--" ending the options. vhostfsd
    /// takes no operands, so any other word is an error.</summary>
    private sealed class GivenOptions
    {
        private readonly List<Occurrence> occurrences = new();

        public static GivenOptions Read(IReadOnlyList<string> args, OptionSpec[] all)
        {
            var given = new GivenOptions();
            for (int i = 0; i < args.Count; i++)
            {
                string arg = args[i];
                if (arg == "--")
                {
                    if (i + 1 < args.Count)
                    {
                        throw Unrecognized(args[i + 1]);
                    }
                    break;
                }
                if (arg.StartsWith("--", StringComparison.Ordinal))
                {
                    int equals = arg.IndexOf('=');
                    OptionSpec option = Find(all, equals < 0 ? arg : arg[..equals]) ?? throw Unrecognized(arg);
                    i = given.Add(option, equals < 0 ? null : arg[(equals + 1)..], args, i);
                }
                else if (arg.Length > 1 && arg[0] == '-')
                {
                    for (int at = 1; at < arg.Length; at++)
                    {
                        OptionSpec option = Find(all, "-" + arg[at]) ?? throw Unrecognized(arg);
                        string rest = arg[(at + 1)..];
                        if (option.IsFlag && rest.Length > 0 && rest[0] != '=')
                        {
                            // More single-letter flags follow in the same word.
                            given.occurrences.Add(new Occurrence(option, null));
                            continue;
                        }
                        string? attached = rest.Length == 0 ? null : rest[0] == '=' ? rest[1..] : rest;
                        i = given.Add(option, attached, args, i);
                        break;
                    }
                }
                else
                {
                    throw Unrecognized(arg);
                }
            }
            return given;
        }

        /// <summary>Records one occurrence of <paramref name="option"/>, given as args[i] with
        /// <paramref name="attached"/> written in the same word (null when nothing was). Returns the
        /// index of the last argument it used.</summary>
        private int Add(OptionSpec option, string? attached, IReadOnlyList<string> args, int i)
        {
            string? value = attached;
            if (option.IsFlag)
            {
                // An explicit "true" or "false" ("--xattr=false", "--xattr false"), which earlier
                // releases accepted; any other value is refused.
                if (value == null && i + 1 < args.Count && IsBoolean(args[i + 1]))
                {
                    value = args[++i];
                }
                if (value != null && !IsBoolean(value))
                {
                    throw Refusal($"invalid value '{value}' for {option.Name} (a flag: expected no value, true or false)");
                }
            }
            else
            {
                // The next word is the value whatever it looks like (as getopt_long takes it), so that
                // "--fd -1" gets "invalid value '-1'"; "--" ends the options instead.
                if (value == null && i + 1 < args.Count && args[i + 1] != "--")
                {
                    value = args[++i];
                }
                if (value == null || (attached != null && attached.Length == 0))
                {
                    throw Refusal($"Required argument missing for option: '{option.Name}'.");
                }
                if (!option.Repeats && LastIndex(option) >= 0)
                {
                    throw Refusal($"Option '{option.Name}' expects a single argument but 2 were provided.");
                }
            }
            occurrences.Add(new Occurrence(option, value));
            return i;
        }

        /// <summary>True when the option appears on the command line (not just a default).</summary>
        public bool Given(OptionSpec option) => LastIndex(option) >= 0;

        /// <summary>The value of an option that takes one, or null when it was not given.</summary>
        public string? Value(OptionSpec option)
        {
            int at = LastIndex(option);
            return at < 0 ? null : occurrences[at].Value;
        }

        /// <summary>Every value of a repeatable option, in order.</summary>
        public List<string> Values(OptionSpec option)
        {
            var values = new List<string>();
            foreach (Occurrence occurrence in occurrences)
            {
                if (occurrence.Option == option && occurrence.Value != null)
                {
                    values.Add(occurrence.Value);
                }
            }
            return values;
        }

        /// <summary>Whether a flag is on: given last bare or with "true".</summary>
        public bool Flag(OptionSpec option)
        {
            int at = LastIndex(option);
            return at >= 0 && (occurrences[at].Value == null || string.Equals(occurrences[at].Value, "true", StringComparison.OrdinalIgnoreCase));
        }

        /// <summary>Where the option last appears among the options, -1 when it does not.</summary>
        public int LastIndex(OptionSpec option)
        {
            for (int at = occurrences.Count - 1; at >= 0; at--)
            {
                if (occurrences[at].Option == option)
                {
                    return at;
                }
            }
            return -1;
        }

        private static OptionSpec? Find(OptionSpec[] all, string spelling)
        {
            foreach (OptionSpec option in all)
            {
                if (option.IsSpelled(spelling))
                {
                    return option;
                }
            }
            return null;
        }

        private static bool IsBoolean(string word) =>
            string.Equals(word, "true", StringComparison.OrdinalIgnoreCase) || string.Equals(word, "false", StringComparison.OrdinalIgnoreCase);

        // The wording of earlier releases, which scripts and tests may look for.
        private static UsageException Unrecognized(string arg) => Refusal($"Unrecognized command or argument '{arg}'.");

        /// <summary>A usage error that quotes the command line, kept to one line whatever the quoted words hold.</summary>
        private static UsageException Refusal(string message) =>
            new(string.Join(' ', message.Split(['\r', '\n', '\t'], StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)));
    }

    private static bool AsksForHelp(IReadOnlyList<string> args, OptionSpec help)
    {
        foreach (string arg in args)
        {
            if (help.IsSpelled(arg))
            {
                return true;
            }
        }
        return false;
    }

    /// <summary>Column where --help starts an option's description, and the width it wraps to.</summary>
    private const int HelpDescriptionColumn = 34;
    private const int HelpWidth = 80;

    /// <summary>--help, in the layout help2man turns into the man page (packaging/deb.sh): "Usage:"
    /// with the synopsis on its line, then under "Options:" each option at column 2 with its
    /// description at <see cref="HelpDescriptionColumn"/> (on the next line when the option is longer).</summary>
    private static void WriteHelp(OptionSpec[] all, TextWriter output)
    {
        output.WriteLine(Description);
        output.WriteLine();
        output.WriteLine("Usage: vhostfsd [options]");
        output.WriteLine();
        output.WriteLine("Options:");
        var line = new StringBuilder();
        foreach (OptionSpec option in all)
        {
            if (option.Hidden)
            {
                continue;
            }
            line.Clear().Append("  ");
            foreach (string alias in option.Aliases)
            {
                line.Append(alias).Append(", ");
            }
            line.Append(option.Name);
            if (option.ValueName != null)
            {
                line.Append(" <").Append(option.ValueName).Append('>');
            }
            if (line.Length + 2 > HelpDescriptionColumn)
            {
                output.WriteLine(line.ToString());
                line.Clear();
            }
            WriteDescription(output, line, option.Description);
        }
        output.WriteLine();
        output.WriteLine("Exit status: 0 after a normal disconnect, an unmount (--fuse-mount) or a termination signal, 1 when start-up or serving fails, 2 for a wrong command line.");
        output.WriteLine("See docs/cli.md for every option, the C (-o) dialect and how to run under libvirt, Kata and systemd.");
    }

    /// <summary>Writes <paramref name="text"/> from <see cref="HelpDescriptionColumn"/> after what
    /// <paramref name="line"/> holds, wrapped at <see cref="HelpWidth"/>.</summary>
    private static void WriteDescription(TextWriter output, StringBuilder line, string text)
    {
        line.Append(' ', HelpDescriptionColumn - line.Length);
        int lastWordAt = -1;
        foreach (string word in text.Split(' ', StringSplitOptions.RemoveEmptyEntries))
        {
            bool lineHasText = line.Length > HelpDescriptionColumn;
            if (lineHasText && line.Length + 1 + word.Length > HelpWidth)
            {
                string carried = "";
                if (lastWordAt > HelpDescriptionColumn)
                {
                    string lastWord = line.ToString(lastWordAt, line.Length - lastWordAt);
                    if (KeepTogether(lastWord, word))
                    {
                        carried = lastWord;
                        line.Length = lastWordAt - 1;
                    }
                }
                output.WriteLine(line.ToString());
                line.Clear().Append(' ', HelpDescriptionColumn).Append(carried);
                lineHasText = carried.Length > 0;
            }
            if (lineHasText)
            {
                line.Append(' ');
            }
            lastWordAt = line.Length;
            line.Append(word);
        }
        output.WriteLine(line.ToString());
    }

    /// <summary>Whether a wrapped line should start with <paramref name="previous"/> rather than
    /// between the two words: a line starting with '-' would be read as an option (by help2man, and
    /// by the README check), and "[default: X]" reads best whole.</summary>
    private static bool KeepTogether(string previous, string word) =>
        previous[0] != '-' && (word[0] == '-' || (previous[0] == '[' && previous[^1] == ':'));

    internal static string VersionText() => BuildInfo.Version;
}
