using System.Text;
using Vhostfsd.Hosting;
using Vhostfsd.FusePassthrough;

namespace Vhostfsd.Cli;

/// <summary>The C virtiofsd's "-o key[=value],..." dialect, as libvirt (before 9.x), Kata (2.x)
/// and old scripts pass it. Every key the Rust daemon's compatibility parser knows is
/// accepted with the same meaning, plus the C spellings it dropped ("log_level=", "cache=never",
/// "debug"). Keys that ask for something vhostfsd does not do are refused with a reason;
/// unknown keys are refused.</summary>
internal static class CompatOptions
{
    /// <summary>Applies every "-o" argument, in order, on top of <paramref name="options"/>.</summary>
    public static void Apply(DaemonOptions options, IEnumerable<string> arguments)
    {
        foreach (string argument in arguments)
        {
            foreach (string item in Split(argument))
            {
                int eq = item.IndexOf('=');
                if (eq >= 0)
                {
                    ApplyPair(options, item[..eq], item[(eq + 1)..]);
                }
                else
                {
                    ApplyFlag(options, item);
                }
            }
        }
    }

    /// <summary>Splits on commas. A doubled comma (",,", QEMU's escape, which libvirt uses for
    /// paths) and a backslash-escaped comma ("\,", FUSE's escape) stand for one literal comma.
    /// Empty items are dropped.</summary>
    public static List<string> Split(string argument)
    {
        var items = new List<string>();
        var current = new StringBuilder();
        for (int i = 0; i < argument.Length; i++)
        {
            char c = argument[i];
            if (c == '\\' && i + 1 < argument.Length && argument[i + 1] == ',')
            {
                current.Append(',');
                i++;
            }
            else if (c == ',' && i + 1 < argument.Length && argument[i + 1] == ',')
            {
                current.Append(',');
                i++;
            }
            else if (c == ',')
            {
                if (current.Length > 0)
                {
                    items.Add(current.ToString());
                }
                current.Clear();
            }
            else
            {
                current.Append(c);
            }
        }
        if (current.Length > 0)
        {
            items.Add(current.ToString());
        }
        return items;
    }

    private static void ApplyPair(DaemonOptions options, string key, string value)
    {
        switch (key)
        {
            case "source":
                if (value.Length == 0)
                {
                    throw new UsageException("-o source= needs a directory");
                }
                options.SharedDir = value;
                break;
            case "cache":
                options.Cache = value switch
                {
                    "none" or "never" => CachePolicy.Never,
                    "metadata" => CachePolicy.Metadata,
                    "auto" => CachePolicy.Auto,
                    "always" => CachePolicy.Always,
                    _ => throw Invalid(key, value, "none, never, metadata, auto, always"),
                };
                break;
            case "sandbox":
                options.Sandbox = value switch
                {
                    "namespace" => SandboxMode.Namespace,
                    "chroot" => SandboxMode.Chroot,
                    "none" => SandboxMode.None,
                    _ => throw Invalid(key, value, "namespace, chroot, none"),
                };
                break;
            case "seccomp":
                options.Seccomp = value switch
                {
                    "kill" => SeccompMode.Kill,
                    "log" => SeccompMode.Log,
                    "trap" => SeccompMode.Trap,
                    "none" => SeccompMode.None,
                    _ => throw Invalid(key, value, "kill, log, trap, none"),
                };
                break;
            case "xattrmap":
                if (value.Length == 0)
                {
                    throw new UsageException("-o xattrmap= needs a rule list, e.g. :map::user.virtiofs.:");
                }
                options.XattrMap = value;
                break;
            case "modcaps":
                Capabilities.ParseModCaps(value);
                options.ModCaps = value;
                break;
            case "loglevel":
            case "log_level":
                options.LogLevel = value switch
                {
                    "err" or "error" => DaemonLogLevel.Error,
                    "warn" or "warning" => DaemonLogLevel.Warn,
                    "info" => DaemonLogLevel.Info,
                    "debug" => DaemonLogLevel.Debug,
                    "trace" => DaemonLogLevel.Trace,
                    "off" => DaemonLogLevel.Off,
                    _ => throw Invalid(key, value, "err, warn, info, debug, trace, off"),
                };
                break;
            case "timeout":
                throw new UsageException("-o timeout= is not supported: the entry and attribute timeouts follow -o cache= (never 0 s, auto 1 s, metadata/always 1 day)");
            case "max_idle_threads":
                throw new UsageException("-o max_idle_threads= is not supported: use --thread-pool-size=N");
            default:
                throw new UsageException($"unknown -o option '{key}={value}'");
        }
    }

    private static void ApplyFlag(DaemonOptions options, string flag)
    {
        switch (flag)
        {
            case "xattr": options.Xattr = true; break;
            case "no_xattr": options.Xattr = false; break;
            case "readdirplus": options.NoReaddirplus = false; break;
            case "no_readdirplus": options.NoReaddirplus = true; break;
            case "writeback": options.Writeback = true; break;
            case "no_writeback": options.Writeback = false; break;
            case "allow_direct_io": options.AllowDirectIo = true; break;
            case "no_allow_direct_io": options.AllowDirectIo = false; break;
            case "announce_submounts": options.AnnounceSubmounts = true; break;
            case "no_announce_submounts": options.AnnounceSubmounts = false; break;
            case "killpriv_v2": options.KillprivV2 = true; break;
            case "no_killpriv_v2": options.KillprivV2 = false; break;
            case "posix_acl": options.PosixAcl = true; break;
            case "no_posix_acl": options.PosixAcl = false; break;
            case "security_label": options.SecurityLabel = true; break;
            case "no_security_label": options.SecurityLabel = false; break;
            case "debug": options.LogLevel = DaemonLogLevel.Debug; break;
            case "posix_lock": options.PosixLock = true; break;
            case "no_posix_lock": options.PosixLock = false; break;
            case "flock": options.Flock = true; break;
            case "no_flock": options.Flock = false; break;
            case "allow_root":
                options.Warnings.Add("-o allow_root has no effect with virtio-fs and is ignored");
                break;
            default:
                throw new UsageException($"unknown -o option '{flag}'");
        }
    }

    private static UsageException Invalid(string key, string value, string allowed) =>
        new($"invalid value '{value}' for -o {key}= (expected one of: {allowed})");
}
