using Vhostfsd.Cli;
using Vhostfsd.FusePassthrough;

namespace Vhostfsd.Tests;

/// <summary>The parser in-process: every option, both dialects, the literal command lines that
/// libvirt and Kata build, and the one-line errors.</summary>
public class CommandLineTests
{
    private static DaemonOptions Parse(params string[] args)
    {
        var parsed = CommandLine.Parse(args, TextWriter.Null);
        Assert.Equal(CommandLineOutcome.Run, parsed.Outcome);
        return parsed.Options;
    }

    private static string Usage(params string[] args)
    {
        var e = Assert.Throws<UsageException>(() => CommandLine.Parse(args, TextWriter.Null));
        Assert.DoesNotContain('\n', e.Message);
        return e.Message;
    }

    [Fact]
    public void Defaults_match_the_rust_daemon()
    {
        var o = Parse("--shared-dir", "/srv", "--socket-path", "/tmp/s");
        Assert.Equal("/srv", o.SharedDir);
        Assert.Equal("/tmp/s", o.SocketPath);
        Assert.Null(o.Fd);
        Assert.Equal(0, o.ThreadPoolSize);
        Assert.Equal(64, o.PollMaxUs);
        Assert.Equal(CachePolicy.Auto, o.Cache);
        Assert.Equal(SandboxMode.Namespace, o.Sandbox);
        Assert.Equal(SeccompMode.Kill, o.Seccomp);
        Assert.Equal(InodeFileHandles.Prefer, o.InodeFileHandles);
        Assert.True(o.AnnounceSubmounts);
        Assert.False(o.KillprivV2);
        Assert.False(o.EffectiveXattr);
        Assert.True(o.EffectiveReaddirplus);
        Assert.Equal(DaemonLogLevel.Info, o.LogLevel);
        Assert.Null(o.RlimitNofile);
        Assert.Null(o.Tag);
        Assert.Empty(o.Warnings);
    }

    [Fact]
    public void Every_long_option_sets_its_value()
    {
        var o = Parse(
            "--shared-dir=/srv/share", "--tag=myfs", "--socket-path=/run/v.sock", "--socket-group=kvm",
            "--thread-pool-size=16", "--poll-max-us=100", "--xattr", "--posix-acl", "--xattrmap=:map::user.virtiofs.:",
            "--sandbox=chroot", "--readonly", "--seccomp=none", "--no-announce-submounts",
            "--inode-file-handles=mandatory", "--cache=metadata", "--allow-mmap", "--no-readdirplus",
            "--writeback", "--allow-direct-io", "--modcaps=+sys_admin:-mknod", "--log-level=trace",
            "--syslog", "--rlimit-nofile=4096", "--killpriv-v2", "--security-label", "--preserve-noatime");
        Assert.Equal("/srv/share", o.SharedDir);
        Assert.Equal("myfs", o.Tag);
        Assert.Equal("/run/v.sock", o.SocketPath);
        Assert.Equal("kvm", o.SocketGroup);
        Assert.Equal(16, o.ThreadPoolSize);
        Assert.Equal(100, o.PollMaxUs);
        Assert.True(o.Xattr);
        Assert.True(o.PosixAcl);
        Assert.Equal(":map::user.virtiofs.:", o.XattrMap);
        Assert.Equal(SandboxMode.Chroot, o.Sandbox);
        Assert.True(o.ReadOnly);
        Assert.Equal(SeccompMode.None, o.Seccomp);
        Assert.False(o.AnnounceSubmounts);
        Assert.Equal(InodeFileHandles.Mandatory, o.InodeFileHandles);
        Assert.Equal(CachePolicy.Metadata, o.Cache);
        Assert.True(o.AllowMmap);
        Assert.True(o.NoReaddirplus);
        Assert.False(o.EffectiveReaddirplus);
        Assert.True(o.Writeback);
        Assert.True(o.AllowDirectIo);
        Assert.Equal("+sys_admin:-mknod", o.ModCaps);
        Assert.Equal(DaemonLogLevel.Trace, o.LogLevel);
        Assert.True(o.Syslog);
        Assert.Equal(4096UL, o.RlimitNofile);
        Assert.True(o.KillprivV2);
        Assert.True(o.SecurityLabel);
        Assert.True(o.PreserveNoatime);
    }

    [Theory]
    [InlineData("kill", SeccompMode.Kill)]
    [InlineData("log", SeccompMode.Log)]
    [InlineData("TRAP", SeccompMode.Trap)]
    [InlineData("none", SeccompMode.None)]
    public void Seccomp_values(string value, SeccompMode expected) =>
        Assert.Equal(expected, Parse("--shared-dir=/a", "--fd=3", "--seccomp=" + value).Seccomp);

    [Theory]
    [InlineData("kill", SeccompMode.Kill)]
    [InlineData("log", SeccompMode.Log)]
    [InlineData("trap", SeccompMode.Trap)]
    [InlineData("none", SeccompMode.None)]
    public void Compat_seccomp_values(string value, SeccompMode expected) =>
        Assert.Equal(expected, Parse("--fd=3", "-o", "source=/a,seccomp=" + value).Seccomp);

    [Fact]
    public void Seccomp_defaults_to_kill_and_the_compat_form_overrides_the_long_one()
    {
        Assert.Equal(SeccompMode.Kill, Parse("--shared-dir=/a", "--fd=3").Seccomp);
        Assert.Equal(SeccompMode.Log, Parse("--seccomp=none", "--fd=3", "-o", "source=/a,seccomp=log").Seccomp);
    }

    [Fact]
    public void Separate_values_work_like_equals()
    {
        var o = Parse("--shared-dir", "/a", "--fd", "7", "--cache", "never", "--thread-pool-size", "2", "--inode-file-handles", "never");
        Assert.Equal(7, o.Fd);
        Assert.Equal(CachePolicy.Never, o.Cache);
        Assert.False(o.EffectiveReaddirplus);
        Assert.Equal(2, o.ThreadPoolSize);
        Assert.Equal(InodeFileHandles.Never, o.InodeFileHandles);
    }

    [Theory]
    [InlineData("never", CachePolicy.Never)]
    [InlineData("none", CachePolicy.Never)]
    [InlineData("metadata", CachePolicy.Metadata)]
    [InlineData("auto", CachePolicy.Auto)]
    [InlineData("ALWAYS", CachePolicy.Always)]
    public void Cache_values(string value, CachePolicy expected) =>
        Assert.Equal(expected, Parse("--shared-dir=/a", "--fd=3", "--cache=" + value).Cache);

    [Fact]
    public void Deprecated_spellings_are_accepted_with_a_warning()
    {
        var o = Parse("--shared-dir=/a", "--socket=/tmp/s", "--inode-file-handles=fallback", "-f");
        Assert.Equal("/tmp/s", o.SocketPath);
        Assert.Equal(InodeFileHandles.Prefer, o.InodeFileHandles);
        Assert.Contains(o.Warnings, w => w.Contains("--socket is deprecated"));
        Assert.Contains(o.Warnings, w => w.Contains("fallback"));
        Assert.Contains(o.Warnings, w => w.Contains("-f has no effect"));
    }

    [Fact]
    public void The_last_of_an_on_off_pair_wins()
    {
        Assert.True(Parse("--shared-dir=/a", "--fd=3", "--no-announce-submounts", "--announce-submounts").AnnounceSubmounts);
        Assert.False(Parse("--shared-dir=/a", "--fd=3", "--announce-submounts", "--no-announce-submounts").AnnounceSubmounts);
        Assert.False(Parse("--shared-dir=/a", "--fd=3", "--killpriv-v2", "--no-killpriv-v2").KillprivV2);
        Assert.True(Parse("--shared-dir=/a", "--fd=3", "--no-killpriv-v2", "--killpriv-v2").KillprivV2);
    }

    [Fact]
    public void Debug_flag_and_log_levels()
    {
        Assert.Equal(DaemonLogLevel.Debug, Parse("--shared-dir=/a", "--fd=3", "-d").LogLevel);
        Assert.Equal(DaemonLogLevel.Off, Parse("--shared-dir=/a", "--fd=3", "--log-level", "off").LogLevel);
        Assert.Equal(DaemonLogLevel.Warn, Parse("--shared-dir=/a", "--fd=3", "--log-level=warn").LogLevel);
        Assert.Equal(DaemonLogLevel.Error, Parse("--shared-dir=/a", "--fd=3", "-o", "log_level=err").LogLevel);
        Assert.Equal(DaemonLogLevel.Debug, Parse("--shared-dir=/a", "--fd=3", "-o", "loglevel=debug").LogLevel);
        Assert.Equal(DaemonLogLevel.Debug, Parse("--shared-dir=/a", "--fd=3", "-o", "debug").LogLevel);
    }

    [Fact]
    public void Xattr_is_implied_by_the_options_that_need_it()
    {
        Assert.True(Parse("--shared-dir=/a", "--fd=3", "--posix-acl").EffectiveXattr);
        Assert.True(Parse("--shared-dir=/a", "--fd=3", "--security-label").EffectiveXattr);
        Assert.True(Parse("--shared-dir=/a", "--fd=3", "--xattrmap=:ok:all::").EffectiveXattr);
        Assert.False(Parse("--shared-dir=/a", "--fd=3").EffectiveXattr);
    }

    [Fact]
    public void Compat_options_cover_every_key_of_the_rust_compat_parser()
    {
        var o = Parse("--fd=3", "-o", "source=/srv/x,cache=always,sandbox=chroot,xattrmap=:map::user.virtiofs.:,modcaps=+sys_admin,loglevel=warn",
            "-o", "xattr,readdirplus,writeback,allow_direct_io,announce_submounts,killpriv_v2,posix_acl,security_label,no_posix_lock,no_flock");
        Assert.Equal("/srv/x", o.SharedDir);
        Assert.Equal(CachePolicy.Always, o.Cache);
        Assert.Equal(SandboxMode.Chroot, o.Sandbox);
        Assert.Equal(":map::user.virtiofs.:", o.XattrMap);
        Assert.Equal("+sys_admin", o.ModCaps);
        Assert.Equal(DaemonLogLevel.Warn, o.LogLevel);
        Assert.True(o.Xattr && o.Writeback && o.AllowDirectIo && o.AnnounceSubmounts && o.KillprivV2 && o.PosixAcl && o.SecurityLabel);
        Assert.False(o.NoReaddirplus);
        Assert.Contains(o.Warnings, w => w.Contains("-o option form is deprecated"));

        var off = Parse("--fd=3", "--xattr", "--writeback", "--allow-direct-io", "--killpriv-v2", "--posix-acl", "--security-label",
            "-o", "source=/a,no_xattr,no_readdirplus,no_writeback,no_allow_direct_io,no_killpriv_v2,no_posix_acl,no_security_label,no_announce_submounts");
        Assert.False(off.Xattr || off.Writeback || off.AllowDirectIo || off.KillprivV2 || off.PosixAcl || off.SecurityLabel || off.AnnounceSubmounts);
        Assert.True(off.NoReaddirplus);
    }

    [Fact]
    public void Compat_values_override_long_options()
    {
        var o = Parse("--shared-dir=/long", "--cache=auto", "--fd=3", "-o", "source=/compat,cache=none");
        Assert.Equal("/compat", o.SharedDir);
        Assert.Equal(CachePolicy.Never, o.Cache);
    }

    [Theory]
    [InlineData("source=/a,,b,cache=auto", "/a,b")]
    [InlineData("source=/a\\,b", "/a,b")]
    [InlineData("source=/plain,", "/plain")]
    public void Compat_commas_can_be_escaped(string argument, string expected) =>
        Assert.Equal(expected, Parse("--fd=3", "-o", argument).SharedDir);

    [Fact]
    public void Libvirt_9_command_line_parses()
    {
        // qemuVirtioFSBuildCommandLine (libvirt >= 9): --fd, then separate "--name=value" options.
        var o = Parse("--fd=23", "--shared-dir=/var/lib/libvirt/shared dir", "--cache=always", "--sandbox=chroot",
            "--xattr", "--thread-pool-size=16", "--log-level=debug");
        Assert.Equal(23, o.Fd);
        Assert.Equal("/var/lib/libvirt/shared dir", o.SharedDir);
        Assert.Equal(CachePolicy.Always, o.Cache);
        Assert.Equal(SandboxMode.Chroot, o.Sandbox);
        Assert.True(o.Xattr);
        Assert.Equal(16, o.ThreadPoolSize);
        Assert.Equal(DaemonLogLevel.Debug, o.LogLevel);
        // libvirt's <driver type='virtiofs'> cache modes: none maps to never.
        Assert.Equal(CachePolicy.Never, Parse("--fd=23", "--shared-dir=/x", "--cache=none").Cache);
    }

    [Fact]
    public void Libvirt_before_9_command_line_parses()
    {
        // The C-daemon form: --fd=N -o source=...,cache=...,sandbox=...,xattr,no_flock,no_posix_lock --thread-pool-size=N -d
        var o = Parse("--fd=23", "-o", "source=/var/lib/libvirt/share,,with comma,cache=none,sandbox=namespace,xattr,no_flock,no_posix_lock",
            "--thread-pool-size=4", "-d");
        Assert.Equal(23, o.Fd);
        Assert.Equal("/var/lib/libvirt/share,with comma", o.SharedDir);
        Assert.Equal(CachePolicy.Never, o.Cache);
        Assert.Equal(SandboxMode.Namespace, o.Sandbox);
        Assert.True(o.Xattr);
        Assert.Equal(4, o.ThreadPoolSize);
        Assert.Equal(DaemonLogLevel.Debug, o.LogLevel);
        Assert.False(o.PosixLock || o.Flock);
    }

    /// <summary>Lock forwarding is opt-in (off by default, as in both reference daemons), in both
    /// dialects; the last of a pair wins. libvirt's &lt;lock posix='on' flock='on'/&gt; becomes
    /// -o posix_lock,flock; Kata passes -o no_posix_lock.</summary>
    [Fact]
    public void Lock_forwarding_is_opt_in_in_both_dialects()
    {
        var none = Parse("--shared-dir=/a", "--fd=3");
        Assert.False(none.PosixLock || none.Flock);
        var libvirt = Parse("--fd=23", "-o", "source=/var/lib/libvirt/share,cache=none,sandbox=namespace,xattr,posix_lock,flock");
        Assert.True(libvirt.PosixLock && libvirt.Flock);
        var kata = Parse("--fd=3", "-o", "source=/a", "-o", "no_posix_lock");
        Assert.False(kata.PosixLock || kata.Flock);
        var longForm = Parse("--shared-dir=/a", "--fd=3", "--posix-lock", "--flock");
        Assert.True(longForm.PosixLock && longForm.Flock);
        var lastWins = Parse("--shared-dir=/a", "--fd=3", "--posix-lock", "--no-posix-lock", "--no-flock", "--flock");
        Assert.False(lastWins.PosixLock);
        Assert.True(lastWins.Flock);
        var undone = Parse("--fd=3", "-o", "source=/a,posix_lock,flock,no_posix_lock,no_flock");
        Assert.False(undone.PosixLock || undone.Flock);
    }

    [Fact]
    public void Kata_2_command_line_with_the_c_dialect_parses()
    {
        // virtiofsd.go args() for the C daemon plus the default virtio_fs_extra_args.
        var o = Parse("--syslog", "-o", "cache=auto", "-o", "no_posix_lock", "-o", "source=/run/kata-containers/shared/sandboxes/abc/shared",
            "--fd=3", "-f", "--thread-pool-size=1", "-o", "announce_submounts");
        Assert.True(o.Syslog);
        Assert.Equal(CachePolicy.Auto, o.Cache);
        Assert.Equal("/run/kata-containers/shared/sandboxes/abc/shared", o.SharedDir);
        Assert.Equal(3, o.Fd);
        Assert.Equal(1, o.ThreadPoolSize);
        Assert.True(o.AnnounceSubmounts);
    }

    [Fact]
    public void Kata_3_command_line_with_the_rust_dialect_parses()
    {
        // virtiofsd.go args() for the Rust daemon plus virtio_fs_extra_args.
        var o = Parse("--syslog", "--cache=never", "--shared-dir=/run/kata-containers/shared/sandboxes/abc/shared", "--fd=3",
            "--inode-file-handles=prefer", "--thread-pool-size=1", "--announce-submounts", "--sandbox=none", "--seccomp=none");
        Assert.True(o.Syslog);
        Assert.Equal(CachePolicy.Never, o.Cache);
        Assert.Equal(3, o.Fd);
        Assert.Equal(InodeFileHandles.Prefer, o.InodeFileHandles);
        Assert.Equal(SandboxMode.None, o.Sandbox);
    }

    [Fact]
    public void Print_capabilities_needs_nothing_else()
    {
        Assert.True(Parse("--print-capabilities").PrintCapabilities);
    }

    [Fact]
    public void Version_and_help_print_and_stop()
    {
        var output = new StringWriter();
        Assert.Equal(CommandLineOutcome.Printed, CommandLine.Parse(["-V"], output).Outcome);
        Assert.StartsWith("vhostfsd ", output.ToString());
        output = new StringWriter();
        Assert.Equal(CommandLineOutcome.Printed, CommandLine.Parse(["--help"], output).Outcome);
        Assert.Contains("--shared-dir", output.ToString());
    }

    [Theory]
    [InlineData("Unrecognized command or argument '--bogus'", "--socket-path=/tmp/s", "--shared-dir=/a", "--bogus")]
    [InlineData("missing --shared-dir", "--socket-path=/tmp/s")]
    [InlineData("both name the listening socket", "--shared-dir=/a", "--socket-path=/tmp/s", "--fd=3")]
    [InlineData("--socket-group only applies", "--shared-dir=/a", "--fd=3", "--socket-group=kvm")]
    [InlineData("standard stream", "--shared-dir=/a", "--fd=1")]
    [InlineData("invalid value 'sometimes' for --cache", "--shared-dir=/a", "--fd=3", "--cache=sometimes")]
    [InlineData("invalid value 'jail' for --sandbox", "--shared-dir=/a", "--fd=3", "--sandbox=jail")]
    [InlineData("invalid value 'maybe' for --inode-file-handles", "--shared-dir=/a", "--fd=3", "--inode-file-handles=maybe")]
    [InlineData("invalid value 'loud' for --log-level", "--shared-dir=/a", "--fd=3", "--log-level=loud")]
    [InlineData("invalid value 'abc' for --thread-pool-size", "--shared-dir=/a", "--fd=3", "--thread-pool-size=abc")]
    [InlineData("invalid value '1001' for --poll-max-us (expected a whole number from 0 to 1000)", "--shared-dir=/a", "--fd=3", "--poll-max-us=1001")]
    [InlineData("invalid value 'fast' for --poll-max-us", "--shared-dir=/a", "--fd=3", "--poll-max-us=fast")]
    [InlineData("invalid value '-1' for --fd", "--shared-dir=/a", "--fd=-1")]
    [InlineData("invalid value 'x' for --rlimit-nofile", "--shared-dir=/a", "--fd=3", "--rlimit-nofile=x")]
    [InlineData("invalid value 'strict' for --seccomp (expected one of: none, kill, log, trap)", "--shared-dir=/a", "--fd=3", "--seccomp=strict")]
    [InlineData("invalid value 'errno' for -o seccomp= (expected one of: kill, log, trap, none)", "--fd=3", "-o", "source=/a,seccomp=errno")]
    [InlineData("at most 36", "--shared-dir=/a", "--fd=3", "--tag=0123456789012345678901234567890123456789")]
    [InlineData("unknown capability 'flying'", "--shared-dir=/a", "--fd=3", "--modcaps=+flying")]
    [InlineData("invalid --modcaps item", "--shared-dir=/a", "--fd=3", "--modcaps=chown")]
    [InlineData("cannot remove dac_read_search", "--shared-dir=/a", "--fd=3", "--modcaps=-dac_read_search")]
    [InlineData("not supported", "--shared-dir=/a", "--fd=3", "--uid-map=:0:1000:1:")]
    [InlineData("not supported", "--shared-dir=/a", "--fd=3", "--translate-gid=map:0:1000:1")]
    [InlineData("not supported", "--shared-dir=/a", "--fd=3", "--migration-mode=file-handles")]
    [InlineData("unknown -o option 'bogus'", "--fd=3", "-o", "source=/a,bogus")]
    [InlineData("unknown -o option 'color=blue'", "--fd=3", "-o", "source=/a,color=blue")]
    [InlineData("-o timeout= is not supported", "--fd=3", "-o", "source=/a,timeout=5")]
    [InlineData("invalid value 'fast' for -o cache=", "--fd=3", "-o", "source=/a,cache=fast")]
    [InlineData("Required argument missing", "--shared-dir=", "--fd=3")]
    [InlineData("needs a non-empty value", "--fd=3", "--tag", "")]
    [InlineData("Required argument missing", "--shared-dir=/a", "--fd")]
    public void Bad_command_lines_give_one_clear_line(string expected, params string[] args) =>
        Assert.Contains(expected, Usage(args));

    [Fact]
    public void Short_option_values_follow_as_the_next_word_attached_or_after_equals()
    {
        Assert.Equal("/a", Parse("--fd=3", "-o", "source=/a").SharedDir);
        Assert.Equal("/a", Parse("--fd=3", "-osource=/a").SharedDir);
        Assert.Equal("/a", Parse("--fd=3", "-o=source=/a").SharedDir);
    }

    [Fact]
    public void Repeated_o_options_apply_in_order()
    {
        var o = Parse("--fd=3", "-o", "source=/a,cache=never", "-osource=/b", "-o=xattr");
        Assert.Equal("/b", o.SharedDir);
        Assert.Equal(CachePolicy.Never, o.Cache);
        Assert.True(o.Xattr);
    }

    [Fact]
    public void The_word_after_an_option_that_takes_a_value_is_its_value()
    {
        Assert.Equal("-dir", Parse("--fd=3", "--shared-dir", "-dir").SharedDir);
        Assert.Equal("--xattr", Parse("--fd=3", "--shared-dir", "--xattr").SharedDir);
        // Response files are not expanded: "@x" is a path.
        Assert.Equal("@share", Parse("--fd=3", "--shared-dir", "@share").SharedDir);
        Assert.Equal("a=b", Parse("--fd=3", "--shared-dir=a=b").SharedDir);
    }

    [Fact]
    public void Flags_take_no_value_or_an_explicit_true_or_false()
    {
        Assert.True(Parse("--shared-dir=/a", "--fd=3", "--xattr=true").Xattr);
        Assert.False(Parse("--shared-dir=/a", "--fd=3", "--xattr=FALSE").Xattr);
        Assert.False(Parse("--shared-dir=/a", "--fd=3", "--xattr", "false").Xattr);
        Assert.True(Parse("--shared-dir=/a", "--fd=3", "--xattr", "--xattr").Xattr);
        Assert.True(Parse("--shared-dir=/a", "--fd=3", "--no-announce-submounts=false").AnnounceSubmounts);
        Assert.Equal(DaemonLogLevel.Debug, Parse("--shared-dir=/a", "--fd=3", "-d=true").LogLevel);
    }

    [Fact]
    public void Single_letter_flags_may_share_a_word()
    {
        var o = Parse("--shared-dir=/a", "--fd=3", "-df");
        Assert.Equal(DaemonLogLevel.Debug, o.LogLevel);
        Assert.Contains(o.Warnings, w => w.Contains("-f has no effect"));
        Assert.Equal("/b", Parse("--fd=3", "-dosource=/b").SharedDir);
    }

    [Fact]
    public void Double_dash_ends_the_options()
    {
        Assert.Equal("/a", Parse("--shared-dir=/a", "--fd=3", "--").SharedDir);
        Assert.Contains("Unrecognized command or argument 'x'", Usage("--shared-dir=/a", "--fd=3", "--", "x"));
    }

    [Theory]
    [InlineData("Unrecognized command or argument 'stray'.", "--shared-dir=/a", "--fd=3", "stray")]
    [InlineData("Unrecognized command or argument '-x'.", "--shared-dir=/a", "--fd=3", "-x")]
    [InlineData("Unrecognized command or argument '-dx'.", "--shared-dir=/a", "--fd=3", "-dx")]
    [InlineData("Unrecognized command or argument '--bogus=1'.", "--shared-dir=/a", "--fd=3", "--bogus=1")]
    [InlineData("Unrecognized command or argument '--SHARED-DIR=/a'.", "--fd=3", "--SHARED-DIR=/a")]
    [InlineData("Unrecognized command or argument '--fd:3'.", "--shared-dir=/a", "--fd:3")]
    [InlineData("Unrecognized command or argument '/?'.", "/?")]
    [InlineData("Unrecognized command or argument '--bo gus'.", "--shared-dir=/a", "--fd=3", "--bo\ngus")]
    [InlineData("Unrecognized command or argument 'source=/b'.", "--fd=3", "-o", "source=/a", "source=/b")]
    [InlineData("Required argument missing for option: '--shared-dir'.", "--fd=3", "--shared-dir", "--")]
    [InlineData("Required argument missing for option: '--tag'.", "--shared-dir=/a", "--fd=3", "--tag=")]
    [InlineData("Required argument missing for option: '-o'.", "--fd=3", "-o")]
    [InlineData("Required argument missing for option: '-o'.", "--fd=3", "-o=")]
    [InlineData("Option '--shared-dir' expects a single argument but 2 were provided.", "--fd=3", "--shared-dir=/a", "--shared-dir=/a")]
    [InlineData("Option '--cache' expects a single argument but 2 were provided.", "--shared-dir=/a", "--fd=3", "--cache=auto", "--cache", "never")]
    [InlineData("invalid value 'yes' for --xattr (a flag: expected no value, true or false)", "--shared-dir=/a", "--fd=3", "--xattr=yes")]
    [InlineData("invalid value '' for -d", "--shared-dir=/a", "--fd=3", "-d=")]
    [InlineData("--uid-map/--gid-map are not supported", "--shared-dir=/a", "--fd=3", "--gid-map=:0:1:1:", "--gid-map=:1:2:1:")]
    [InlineData("the --migration-* options are not supported", "--shared-dir=/a", "--fd=3", "--migration-verify-handles=false")]
    public void Malformed_option_syntax_is_refused(string expected, params string[] args) =>
        Assert.StartsWith(expected, Usage(args));

    [Theory]
    [InlineData("-h")]
    [InlineData("-?")]
    [InlineData("--help")]
    public void Every_help_spelling_prints_help(string spelling)
    {
        var output = new StringWriter();
        Assert.Equal(CommandLineOutcome.Printed, CommandLine.Parse(["--shared-dir=/a", spelling], output).Outcome);
        Assert.Contains("Options:", output.ToString());
    }

    [Fact]
    public void Help_answers_a_line_with_a_mistake_and_version_wins_over_help()
    {
        var output = new StringWriter();
        Assert.Equal(CommandLineOutcome.Printed, CommandLine.Parse(["--bogus", "--help"], output).Outcome);
        Assert.Contains("Options:", output.ToString());
        output = new StringWriter();
        Assert.Equal(CommandLineOutcome.Printed, CommandLine.Parse(["--help", "-V"], output).Outcome);
        Assert.StartsWith("vhostfsd ", output.ToString());
        Assert.DoesNotContain("Options:", output.ToString());
        Assert.Contains("Unrecognized command or argument '--bogus'", Usage("-V", "--bogus"));
    }

    /// <summary>help2man builds the man page from --help: "Usage:" with the synopsis on its line,
    /// "Options:", then each option at column 2 with its description at column 34 (on the next line
    /// when the option is longer), wrapped lines never starting with '-'.</summary>
    [Fact]
    public void Help_lists_the_visible_options_in_two_columns()
    {
        var output = new StringWriter();
        CommandLine.Parse(["--help"], output);
        string text = output.ToString();
        string[] lines = text.Split('\n');
        Assert.Equal(CommandLine.Description, lines[0]);
        Assert.Contains("Usage: vhostfsd [options]", lines);
        int options = Array.IndexOf(lines, "Options:");
        Assert.True(options > 0, text);
        Assert.Equal("  --shared-dir <DIR>              Directory to share with the guest (required; C", lines[options + 1]);
        Assert.Contains("\n  -V, --version                   Print the version and exit\n", text);
        Assert.Contains("\n  -?, -h, --help                  Show help and usage information\n", text);
        Assert.Contains("\n  --sandbox <namespace|chroot|none>\n" + new string(' ', 34) + "Isolation:", text);
        int end = options + 1;
        for (; lines[end].Length > 0; end++)
        {
            string line = lines[end];
            Assert.True(line.StartsWith("  -", StringComparison.Ordinal)
                || (line.StartsWith(new string(' ', 34), StringComparison.Ordinal) && line[34] != ' ' && line[34] != '-'), line);
            Assert.True(line.Length <= 80 || !line.Trim().Contains(' '), line);
        }
        Assert.StartsWith("Exit status: ", lines[end + 1]);
        Assert.StartsWith("See docs/cli.md", lines[end + 2]);
        Assert.DoesNotContain("--socket ", text);
        Assert.DoesNotContain("--uid-map", text);
        Assert.DoesNotContain("--migration", text);
    }

    [Fact]
    public void Inode_file_handles_never_allows_removing_dac_read_search()
    {
        var o = Parse("--shared-dir=/a", "--fd=3", "--inode-file-handles=never", "--modcaps=-dac_read_search");
        Assert.Equal("-dac_read_search", o.ModCaps);
    }
}
