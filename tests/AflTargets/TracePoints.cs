using System.Reflection.Metadata;
using System.Reflection.Metadata.Ecma335;
using System.Reflection.PortableExecutable;

namespace Vhostfsd.AflTargets;

/// <summary>How much code an instrumented assembly exposes to afl-fuzz: SharpFuzz puts one trace point
/// at the head of each basic block it instruments, a load of <c>SharpFuzz.Common.Trace.SharedMem</c>;
/// this counts those loads in every method body. The edges afl-fuzz reports are transitions between
/// these blocks (afl's own total_edges is only its map size).</summary>
public static class TracePoints
{
    public static int Count(string assemblyPath)
    {
        using var stream = File.OpenRead(assemblyPath);
        using var pe = new PEReader(stream);
        var md = pe.GetMetadataReader();
        var sharedMem = new HashSet<int>();
        foreach (var handle in md.MemberReferences)
        {
            var member = md.GetMemberReference(handle);
            if (member.Parent.Kind == HandleKind.TypeReference && md.GetString(member.Name) == "SharedMem")
            {
                var type = md.GetTypeReference((TypeReferenceHandle)member.Parent);
                if (md.GetString(type.Namespace) == "SharpFuzz.Common" && md.GetString(type.Name) == "Trace")
                {
                    sharedMem.Add(MetadataTokens.GetToken(handle));
                }
            }
        }
        int points = 0;
        if (sharedMem.Count == 0)
        {
            return 0;
        }
        foreach (var handle in md.MethodDefinitions)
        {
            var method = md.GetMethodDefinition(handle);
            if (method.RelativeVirtualAddress == 0)
            {
                continue;
            }
            var il = pe.GetMethodBody(method.RelativeVirtualAddress).GetILReader();
            while (il.RemainingBytes > 0)
            {
                int op = il.ReadByte();
                if (op == 0xFE)
                {
                    il.Offset += OperandSize(0xFE00 | il.ReadByte(), ref il);
                }
                else if (op == LoadStaticField)
                {
                    points += sharedMem.Contains(il.ReadInt32()) ? 1 : 0;
                }
                else
                {
                    il.Offset += OperandSize(op, ref il);
                }
            }
        }
        return points;
    }

    private const int LoadStaticField = 0x7E;

    /// <summary>The operand bytes after opcode <paramref name="op"/> (ECMA-335 III); a switch reads its count.</summary>
    private static int OperandSize(int op, ref BlobReader il)
    {
        switch (op)
        {
            case 0x45: // switch: a count, then that many 32-bit targets
                return 4 * il.ReadInt32();
            case >= 0x0E and <= 0x13: // ldarg.s .. stloc.s
            case 0x1F: // ldc.i4.s
            case >= 0x2B and <= 0x37: // short branches
            case 0xDE: // leave.s
            case 0xFE12: // unaligned.
            case 0xFE19: // no.
                return 1;
            case >= 0xFE09 and <= 0xFE0E: // ldarg .. stloc (16-bit index)
                return 2;
            case 0x20: // ldc.i4
            case 0x22: // ldc.r4
            case >= 0x27 and <= 0x29: // jmp, call, calli
            case >= 0x38 and <= 0x44: // long branches
            case 0xDD: // leave
            case 0x6F or 0x70 or 0x71 or 0x72 or 0x73 or 0x74 or 0x75 or 0x79: // callvirt .. unbox
            case >= 0x7B and <= 0x81: // field access
            case 0x8C or 0x8D or 0x8F: // box, newarr, ldelema
            case 0xA3 or 0xA4 or 0xA5: // ldelem, stelem, unbox.any
            case 0xC2 or 0xC6 or 0xD0 or 0xD5: // refanyval, mkrefany, ldtoken
            case 0xFE06 or 0xFE07: // ldftn, ldvirtftn
            case 0xFE15 or 0xFE16 or 0xFE1C or 0xFE1D: // initobj, constrained., sizeof, refanytype
                return 4;
            case 0x21 or 0x23: // ldc.i8, ldc.r8
                return 8;
            default:
                return 0;
        }
    }
}
