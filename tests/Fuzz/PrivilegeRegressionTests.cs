using System.Text;
using Vhostfsd.Fuzz.Engine;
using Vhostfsd.Fuzz.Targets;
using Xunit;

namespace Vhostfsd.Fuzz;

/// <summary>The privilege escalations the host-state oracles found, kept as fixed requests: each
/// runs through the in-process target under the configuration where it was found, and the oracles
/// must find the host as the requester was entitled to leave it. Before the fixes (commits
/// d2a8db1 and af56122) each of these fails with the oracle's message.</summary>
[Trait("Category", "Fuzz")]
public sealed class PrivilegeRegressionTests
{
    private const uint User = 1000;
    private const uint Create = 35;
    private const uint Mknod = 8;
    private const uint Mkdir = 9;

    /// <summary>CVE-2022-0358's class, as found by the FUSE-server target ("groups", a daemon whose
    /// threads kept group 0): uid/gid 1000 creates mode 02755 in the root:root 2777 setgid directory.
    /// The file takes group 0 from the directory; the kernel may keep S_ISGID only if the thread is in
    /// group 0, and the request's thread must hold no group the request did not bring.</summary>
    [Theory]
    [InlineData(Create)]
    [InlineData(Mknod)]
    public void AUserMakesNoSetgidRootFileInASetgidRootDirectory(uint opcode)
    {
        using var target = new FuseServerTarget(FuzzConfiguration.Groups);
        ulong sgid = target.Fixtures["sgid"];
        var b = Header(opcode, sgid, User, User);
        if (opcode == Create)
        {
            b.U32("flags", 0x42).U32("mode", 0x8000 | 0x5ED).U32("umask", 0x12).U32("open_flags", 0);
        }
        else
        {
            b.U32("mode", 0x8000 | 0x5ED).U32("rdev", 0).U32("umask", 0x12).U32("padding", 0);
        }
        b.Name("name", "setgid-root");
        var (errno, violation) = target.Send(Finish(b, 0));
        Assert.Equal(0, errno);
        Assert.True(violation is null, violation);
    }

    /// <summary>As found by the FUSE-server target ("xattrmap-security-label", --xattrmap
    /// ':map::user.virtiofs.:'): a security context named security.capability (a file capability
    /// granting CAP_SYS_ADMIN) or user.hostile on CREATE, MKNOD or MKDIR must not reach the host under
    /// that name; the daemon refuses it or stores it only as user.virtiofs.*.</summary>
    [Theory]
    [InlineData(Create, "security.capability", User)]
    [InlineData(Mknod, "security.capability", 0u)]
    [InlineData(Mkdir, "user.hostile", 0u)]
    [InlineData(Create, "user.hostile", User)]
    public void ASecurityContextNeverReachesTheHostPastTheXattrMap(uint opcode, string contextName, uint uid)
    {
        using var target = new FuseServerTarget(FuzzConfiguration.XattrMapLabels);
        ulong pub = target.Fixtures["pub"];
        var b = Header(opcode, pub, uid, uid);
        switch (opcode)
        {
            case Create:
                b.U32("flags", 0x42).U32("mode", 0x8000 | 0x1ED).U32("umask", 0x12).U32("open_flags", 0);
                break;
            case Mknod:
                b.U32("mode", 0x8000 | 0x1ED).U32("rdev", 0).U32("umask", 0x12).U32("padding", 0);
                break;
            default:
                b.U32("mode", 0x1ED).U32("umask", 0x12);
                break;
        }
        b.Name("name", "labelled");
        int start = b.Length;
        byte[] value = contextName == "security.capability" ? FuseSeeds.FileCapability : Encoding.ASCII.GetBytes("hostile\0");
        int size = 16 + contextName.Length + 1 + value.Length;
        int padded = (size + 7) & ~7;
        // fuse_secctx_header { size, nr = 1 }, fuse_secctx { size, padding }, name, value, padding.
        b.U32("secctx.size", (uint)padded).U32("secctx.nr", 1).U32("ctx.size", (uint)value.Length).U32("ctx.padding", 0)
            .Name("ctx.name", contextName).Bytes(value).Zeros(padded - size);
        var (errno, violation) = target.Send(Finish(b, (b.Length - start) / 8));
        Assert.True(errno >= 0, "no reply");
        Assert.True(violation is null, violation);
    }

    private static SeedBuilder Header(uint opcode, ulong node, uint uid, uint gid) =>
        new SeedBuilder().U32("len", 0).U32("opcode", opcode).U64("unique", 7).U64("nodeid", node)
            .U32("uid", uid).U32("gid", gid).U32("pid", 4242).U16("total_extlen", 0).U16("padding", 0);

    private static byte[] Finish(SeedBuilder b, int extensionUnits)
    {
        b.PatchU32(36, (uint)extensionUnits);
        byte[] bytes = b.Build("regression").Bytes;
        Mutator.PatchU32(bytes, 0, (uint)bytes.Length);
        return bytes;
    }
}
