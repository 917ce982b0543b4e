using System.Runtime.InteropServices;
using System.Text.RegularExpressions;
using Vhostfsd.Hosting;
using Vhostfsd.Posix;

namespace Vhostfsd.Tests;

/// <summary>The BPF program <see cref="SeccompPolicy.Build"/> makes, run through a classic-BPF
/// interpreter that checks what the kernel's loader checks, and the allow-list's bookkeeping
/// (one number table, checked against the kernel headers where they are installed).</summary>
public class SeccompPolicyTests
{
    private static readonly Architecture[] Architectures = [Architecture.X64, Architecture.Arm64];
    private static readonly SeccompMode[] Modes = [SeccompMode.Kill, SeccompMode.Log, SeccompMode.Trap];

    /// <summary>What the daemon tests make to show a refused call (SeccompTests).</summary>
    internal const string ProbeCall = "getppid";
    internal static readonly int ProbeCallX64 = 110;

    /// <summary>struct seccomp_data as the kernel fills it for one call.</summary>
    private readonly record struct Call(uint Arch, uint Nr, ulong Arg0 = 0);

    /// <summary>Runs <paramref name="program"/> on <paramref name="call"/> as the kernel's
    /// classic-BPF interpreter would, after the checks of its loader (bpf_check_classic and
    /// seccomp_check_filter): only the instructions seccomp accepts, word loads inside
    /// seccomp_data, jumps that stay inside the program, a return at the end.</summary>
    private static uint Run(SockFilter[] program, Call call)
    {
        Assert.InRange(program.Length, 1, Libc.BPF_MAXINSNS);
        Assert.Equal(Libc.BPF_RET | Libc.BPF_K, program[^1].Code);
        uint a = 0;
        for (int pc = 0; pc < program.Length; pc++)
        {
            SockFilter insn = program[pc];
            switch (insn.Code)
            {
                case Libc.BPF_LD | Libc.BPF_W | Libc.BPF_ABS:
                    Assert.True(insn.K % 4 == 0 && insn.K < 64, $"load at {insn.K} is outside seccomp_data");
                    a = insn.K switch
                    {
                        Libc.SECCOMP_DATA_NR => call.Nr,
                        Libc.SECCOMP_DATA_ARCH => call.Arch,
                        Libc.SECCOMP_DATA_ARGS => (uint)call.Arg0,
                        Libc.SECCOMP_DATA_ARGS + 4 => (uint)(call.Arg0 >> 32),
                        _ => 0,
                    };
                    break;
                case Libc.BPF_JMP | Libc.BPF_JA:
                    Assert.True(pc + 1 + insn.K < program.Length, $"jump at {pc} leaves the program");
                    pc += (int)insn.K;
                    break;
                case Libc.BPF_JMP | Libc.BPF_JEQ | Libc.BPF_K:
                case Libc.BPF_JMP | Libc.BPF_JGE | Libc.BPF_K:
                case Libc.BPF_JMP | Libc.BPF_JGT | Libc.BPF_K:
                case Libc.BPF_JMP | Libc.BPF_JSET | Libc.BPF_K:
                    Assert.True(pc + 1 + insn.JumpTrue < program.Length && pc + 1 + insn.JumpFalse < program.Length, $"jump at {pc} leaves the program");
                    bool taken = (insn.Code & 0xf0) switch
                    {
                        Libc.BPF_JEQ => a == insn.K,
                        Libc.BPF_JGE => a >= insn.K,
                        Libc.BPF_JGT => a > insn.K,
                        _ => (a & insn.K) != 0,
                    };
                    pc += taken ? insn.JumpTrue : insn.JumpFalse;
                    break;
                case Libc.BPF_RET | Libc.BPF_K:
                    return insn.K;
                default:
                    Assert.Fail($"instruction {pc} has code 0x{insn.Code:x}, which the program should not need");
                    break;
            }
        }
        Assert.Fail("the program ran off its end");
        return 0;
    }

    private static uint Native(Architecture architecture) => SeccompPolicy.AuditArch(architecture);

    /// <summary>Every call the policy allows, for any argument or some.</summary>
    private static HashSet<string> ListedNames() =>
        SeccompPolicy.Groups.SelectMany(g => g.Calls).Concat(SeccompPolicy.ArgumentRules.Select(r => r.Call)).ToHashSet(StringComparer.Ordinal);

    private static HashSet<string> UnconditionalNames() =>
        SeccompPolicy.Groups.SelectMany(g => g.Calls).ToHashSet(StringComparer.Ordinal);

    [Fact]
    public void Every_listed_call_is_allowed_on_both_architectures_in_every_mode()
    {
        foreach (Architecture architecture in Architectures)
        {
            foreach (SeccompMode mode in Modes)
            {
                SockFilter[] program = SeccompPolicy.Build(mode, architecture);
                foreach (string name in UnconditionalNames())
                {
                    int nr = SeccompPolicy.Number(name, architecture);
                    if (nr >= 0)
                    {
                        Assert.True(Run(program, new Call(Native(architecture), (uint)nr)) == Libc.SECCOMP_RET_ALLOW, $"{name} ({nr}) on {architecture}");
                    }
                }
            }
        }
    }

    [Fact]
    public void Every_other_number_gets_the_action_of_the_mode()
    {
        foreach (Architecture architecture in Architectures)
        {
            var allowed = SeccompPolicy.AllowedNumbers(architecture).ToHashSet();
            // With an argument no rule allows, a rule's call gets the default too.
            Assert.DoesNotContain(SeccompPolicy.Number("prctl", architecture), allowed);
            foreach (SeccompMode mode in Modes)
            {
                SockFilter[] program = SeccompPolicy.Build(mode, architecture);
                uint expected = SeccompPolicy.DefaultAction(mode);
                // Beyond every number either kernel defines today, and arguments never matter.
                for (uint nr = 0; nr < 1024; nr++)
                {
                    uint action = Run(program, new Call(Native(architecture), nr, Arg0: 0xdead_beef_0000_0001));
                    Assert.True(action == (allowed.Contains((int)nr) ? Libc.SECCOMP_RET_ALLOW : expected), $"{architecture} {mode} nr {nr}: 0x{action:x}");
                }
                // -1, which no kernel defines: on x86_64 the x32 check catches it first.
                Assert.Equal(architecture == Architecture.X64 ? Libc.SECCOMP_RET_KILL_PROCESS : expected,
                    Run(program, new Call(Native(architecture), uint.MaxValue)));
            }
        }
    }

    [Fact]
    public void Prctl_is_allowed_to_name_a_thread_and_nothing_else()
    {
        const uint PrSetDumpable = 4, PrCapAmbient = 47, PrSetMm = 35;
        foreach (Architecture architecture in Architectures)
        {
            uint prctl = (uint)SeccompPolicy.Number("prctl", architecture);
            foreach (SeccompMode mode in Modes)
            {
                SockFilter[] program = SeccompPolicy.Build(mode, architecture);
                uint refused = SeccompPolicy.DefaultAction(mode);
                Assert.Equal(Libc.SECCOMP_RET_ALLOW, Run(program, new Call(Native(architecture), prctl, Libc.PR_SET_NAME)));
                // The option is a C int: the kernel ignores the upper half of the register.
                Assert.Equal(Libc.SECCOMP_RET_ALLOW, Run(program, new Call(Native(architecture), prctl, 0xffff_ffff_0000_0000 | Libc.PR_SET_NAME)));
                foreach (uint option in new uint[] { 0, PrSetDumpable, Libc.PR_SET_NO_NEW_PRIVS, PrCapAmbient, PrSetMm, Libc.PR_SET_NAME + 1, uint.MaxValue })
                {
                    Assert.Equal(refused, Run(program, new Call(Native(architecture), prctl, option)));
                }
                // The check reads the argument: the call after it in the table is unaffected.
                Assert.Equal(refused, Run(program, new Call(Native(architecture), prctl + 1000, Libc.PR_SET_NAME)));
            }
        }
    }

    /// <summary>unshare only gives a thread its own fs_struct (its umask and working directory):
    /// CLONE_FS alone; any namespace flag, alone or with it, gets the mode's action.</summary>
    [Fact]
    public void Unshare_is_allowed_for_a_threads_own_fs_struct_and_nothing_else()
    {
        const uint CloneNewNs = 0x00020000, CloneNewUser = 0x10000000, CloneNewPid = 0x20000000, CloneNewNet = 0x40000000, CloneFiles = 0x400;
        foreach (Architecture architecture in Architectures)
        {
            uint unshare = (uint)SeccompPolicy.Number("unshare", architecture);
            Assert.DoesNotContain((int)unshare, SeccompPolicy.AllowedNumbers(architecture));
            foreach (SeccompMode mode in Modes)
            {
                SockFilter[] program = SeccompPolicy.Build(mode, architecture);
                uint refused = SeccompPolicy.DefaultAction(mode);
                Assert.Equal(Libc.SECCOMP_RET_ALLOW, Run(program, new Call(Native(architecture), unshare, (ulong)Libc.CLONE_FS)));
                foreach (uint flags in new uint[] { 0, CloneNewNs, CloneNewUser, CloneNewPid, CloneNewNet, CloneFiles, (uint)Libc.CLONE_FS | CloneNewNs, (uint)Libc.CLONE_FS | CloneNewUser })
                {
                    Assert.Equal(refused, Run(program, new Call(Native(architecture), unshare, flags)));
                }
            }
        }
    }

    [Fact]
    public void Modes_map_to_their_seccomp_actions()
    {
        Assert.Equal(Libc.SECCOMP_RET_KILL_PROCESS, SeccompPolicy.DefaultAction(SeccompMode.Kill));
        Assert.Equal(Libc.SECCOMP_RET_LOG, SeccompPolicy.DefaultAction(SeccompMode.Log));
        Assert.Equal(Libc.SECCOMP_RET_TRAP, SeccompPolicy.DefaultAction(SeccompMode.Trap));
        Assert.Throws<ArgumentOutOfRangeException>(() => SeccompPolicy.Build(SeccompMode.None, Architecture.X64));
    }

    [Fact]
    public void A_call_through_another_abi_is_killed_in_every_mode()
    {
        foreach (SeccompMode mode in Modes)
        {
            SockFilter[] x64 = SeccompPolicy.Build(mode, Architecture.X64);
            // int 0x80 from a 64-bit process: i386 numbers (3 is i386's read, 11 its execve).
            foreach (uint nr in new uint[] { 3, 11, 0, 110 })
            {
                Assert.Equal(Libc.SECCOMP_RET_KILL_PROCESS, Run(x64, new Call(Libc.AUDIT_ARCH_I386, nr)));
            }
            Assert.Equal(Libc.SECCOMP_RET_KILL_PROCESS, Run(x64, new Call(Libc.AUDIT_ARCH_AARCH64, 63)));
            SockFilter[] arm64 = SeccompPolicy.Build(mode, Architecture.Arm64);
            Assert.Equal(Libc.SECCOMP_RET_KILL_PROCESS, Run(arm64, new Call(Libc.AUDIT_ARCH_X86_64, 0)));
            // 32-bit ARM (compat) from an aarch64 process.
            Assert.Equal(Libc.SECCOMP_RET_KILL_PROCESS, Run(arm64, new Call(0x40000028, 3)));
        }
    }

    [Fact]
    public void An_x32_call_is_killed_in_every_mode_even_for_a_listed_number()
    {
        int read = SeccompPolicy.Number("read", Architecture.X64);
        foreach (SeccompMode mode in Modes)
        {
            SockFilter[] program = SeccompPolicy.Build(mode, Architecture.X64);
            Assert.Equal(Libc.SECCOMP_RET_ALLOW, Run(program, new Call(Libc.AUDIT_ARCH_X86_64, (uint)read)));
            Assert.Equal(Libc.SECCOMP_RET_KILL_PROCESS, Run(program, new Call(Libc.AUDIT_ARCH_X86_64, Libc.__X32_SYSCALL_BIT | (uint)read)));
            // x32's own numbers (512 and up: its rt_sigaction, ioctl, readv, ...).
            Assert.Equal(Libc.SECCOMP_RET_KILL_PROCESS, Run(program, new Call(Libc.AUDIT_ARCH_X86_64, Libc.__X32_SYSCALL_BIT | 514)));
        }
    }

    [Fact]
    public void The_list_is_consistent_with_its_number_table()
    {
        var seen = new HashSet<string>(StringComparer.Ordinal);
        foreach (SeccompPolicy.Group group in SeccompPolicy.Groups)
        {
            Assert.False(string.IsNullOrWhiteSpace(group.Reason));
            Assert.NotEmpty(group.Calls);
            foreach (string name in group.Calls)
            {
                Assert.True(seen.Add(name), $"{name} is listed twice");
                Assert.Contains(SeccompPolicy.Table, c => c.Name == name);
            }
        }
        foreach (SeccompPolicy.ArgumentRule rule in SeccompPolicy.ArgumentRules)
        {
            Assert.False(string.IsNullOrWhiteSpace(rule.Reason));
            Assert.NotEmpty(rule.Values);
            Assert.InRange(rule.Argument, 0, 5);
            Assert.True(seen.Add(rule.Call), $"{rule.Call} is both listed and restricted");
            Assert.Contains(SeccompPolicy.Table, c => c.Name == rule.Call);
        }
        var tableNames = new HashSet<string>(StringComparer.Ordinal);
        foreach (SeccompPolicy.Syscall call in SeccompPolicy.Table)
        {
            Assert.True(tableNames.Add(call.Name), $"{call.Name} has two table entries");
            Assert.True(seen.Contains(call.Name), $"{call.Name} has a number but is not in the list");
            Assert.True(call.X64 >= 0 || call.Arm64 >= 0, call.Name);
            // A number of either architecture must be unique among the table's.
            if (call.X64 >= 0)
            {
                Assert.Single(SeccompPolicy.Table, c => c.X64 == call.X64);
            }
            if (call.Arm64 >= 0)
            {
                Assert.Single(SeccompPolicy.Table, c => c.Arm64 == call.Arm64);
            }
        }
    }

    /// <summary>Calls that would let a compromised daemon leave or widen its sandbox, run other
    /// code, or reach kernel interfaces a file server has no use for.</summary>
    [Theory]
    [InlineData("execve")]
    [InlineData("execveat")]
    [InlineData("fork")]
    [InlineData("vfork")]
    [InlineData("ptrace")]
    [InlineData("process_vm_readv")]
    [InlineData("process_vm_writev")]
    [InlineData("mount")]
    [InlineData("umount2")]
    [InlineData("fsopen")]
    [InlineData("open_tree")]
    [InlineData("move_mount")]
    [InlineData("setns")]
    [InlineData("pivot_root")]
    [InlineData("chroot")]
    [InlineData("socket")]
    [InlineData("connect")]
    [InlineData("bind")]
    [InlineData("bpf")]
    [InlineData("perf_event_open")]
    [InlineData("userfaultfd")]
    [InlineData("io_uring_setup")]
    [InlineData("keyctl")]
    [InlineData("add_key")]
    [InlineData("init_module")]
    [InlineData("finit_module")]
    [InlineData("kexec_load")]
    [InlineData("personality")]
    [InlineData("seccomp")]
    [InlineData("kill")]
    [InlineData("ioctl")]
    [InlineData(ProbeCall)]
    public void The_list_leaves_out(string name) =>
        Assert.DoesNotContain(name, ListedNames());

    [Fact]
    public void The_probe_call_of_the_daemon_tests_has_its_x86_64_number() =>
        Assert.Equal(110, ProbeCallX64);

    /// <summary>docs/seccomp.md names exactly the calls of the list, so the reviewed file and the
    /// page the operators read cannot drift apart.</summary>
    [Fact]
    public void The_documentation_names_exactly_the_listed_calls()
    {
        var root = new DirectoryInfo(AppContext.BaseDirectory);
        while (root != null && !File.Exists(Path.Combine(root.FullName, "vhostfsd.sln")))
        {
            root = root.Parent;
        }
        Assert.True(root != null, "vhostfsd.sln not found above " + AppContext.BaseDirectory);
        string page = File.ReadAllText(Path.Combine(root.FullName, "docs", "seccomp.md"));
        int begin = page.IndexOf("<!-- allow-list:begin -->", StringComparison.Ordinal);
        int end = page.IndexOf("<!-- allow-list:end -->", StringComparison.Ordinal);
        Assert.True(begin >= 0 && end > begin, "docs/seccomp.md has no allow-list:begin/end markers");
        var documented = Regex.Matches(page[begin..end], @"`([a-z_0-9]+)`").Select(m => m.Groups[1].Value).ToHashSet(StringComparer.Ordinal);
        var listed = ListedNames();
        Assert.True(documented.SetEquals(listed),
            $"docs/seccomp.md and SeccompPolicy differ. Only in the page: {string.Join(' ', documented.Except(listed))}; "
            + $"only in the policy: {string.Join(' ', listed.Except(documented))}");
    }

    /// <summary>The numbers against the kernel's own headers (linux-libc-dev): x86_64's unistd_64.h
    /// and the generic table aarch64 uses. Calls newer than the installed headers are left out.</summary>
    [Fact]
    public void Table_numbers_match_the_kernel_headers()
    {
        var x64 = Defines("/usr/include/x86_64-linux-gnu/asm/unistd_64.h");
        var generic = Defines("/usr/include/asm-generic/unistd.h");
        int compared = 0;
        foreach (SeccompPolicy.Syscall call in SeccompPolicy.Table)
        {
            if (x64.TryGetValue(call.Name, out int x) && call.X64 >= 0)
            {
                Assert.True(x == call.X64, $"{call.Name}: x86_64 {call.X64} in the table, {x} in the header");
                compared++;
            }
            else if (x64.Count > 0)
            {
                // Newer than the headers: only the unified numbers (424 and up) can be missing.
                Assert.True(call.X64 >= 424, $"{call.Name} is not in the x86_64 header");
            }
            if (generic.TryGetValue(call.Name, out int g))
            {
                Assert.True(g == call.Arm64, $"{call.Name}: aarch64 {call.Arm64} in the table, {g} in the header");
                compared++;
            }
            else if (generic.Count > 0)
            {
                Assert.True(call.Arm64 == -1 || call.Arm64 >= 424, $"{call.Name}: aarch64 {call.Arm64}, not in the header");
            }
        }
        if (x64.Count > 0 && generic.Count > 0)
        {
            Assert.True(compared > SeccompPolicy.Table.Length, $"only {compared} numbers compared");
        }
    }

    /// <summary>"#define __NR_name N" lines, with the generic header's __NR3264_ aliases resolved
    /// as a 64-bit architecture sees them; empty when the header is not installed.</summary>
    private static Dictionary<string, int> Defines(string header)
    {
        var numbers = new Dictionary<string, int>(StringComparer.Ordinal);
        if (!File.Exists(header))
        {
            return numbers;
        }
        var aliases = new Dictionary<string, int>(StringComparer.Ordinal);
        var pending = new List<(string Name, string Alias)>();
        foreach (string line in File.ReadLines(header))
        {
            var match = Regex.Match(line, @"^#define __NR(3264)?_(\w+)\s+(\d+|__NR3264_\w+)\s*$");
            if (!match.Success)
            {
                continue;
            }
            string name = match.Groups[2].Value;
            string value = match.Groups[3].Value;
            if (match.Groups[1].Success)
            {
                aliases[name] = int.Parse(value);
            }
            else if (value.StartsWith("__NR3264_", StringComparison.Ordinal))
            {
                pending.Add((name, value["__NR3264_".Length..]));
            }
            else
            {
                numbers.TryAdd(name, int.Parse(value));
            }
        }
        foreach (var (name, alias) in pending)
        {
            // The 32-bit names (fcntl64, fstatat64...) sit under #else; a 64-bit kernel uses these.
            if (aliases.TryGetValue(alias, out int n) && !name.EndsWith("64", StringComparison.Ordinal))
            {
                numbers[name] = n;
            }
        }
        return numbers;
    }
}
