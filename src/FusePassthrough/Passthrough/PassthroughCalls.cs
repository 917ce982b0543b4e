using Vhostfsd.FuseProtocol;

namespace Vhostfsd.FusePassthrough;

/// <summary><see cref="PassthroughFs"/> as the <see cref="IFileSystem"/> the server is generic over: a
/// struct holding the one reference, so the server specialised for it calls the file system's
/// methods directly (no interface dispatch on the request path).</summary>
public readonly struct PassthroughCalls(PassthroughFs fs) : IFileSystem
{
    public PassthroughFs Fs => fs;

    public bool IsReadOnly => fs.IsReadOnly;
    public int Init(FuseInitFlags offered, out FuseInitFlags wanted) => fs.Init(offered, out wanted);
    public void Negotiated(FuseInitFlags granted) => fs.Negotiated(granted);
    public void Destroy() => fs.Destroy();
    public void Forget(ulong node, ulong lookups) => fs.Forget(node, lookups);
    public void Interrupt(ulong unique) => fs.Interrupt(unique);
    public int Lookup(in RequestContext context, ulong parent, ReadOnlySpan<byte> name, out FuseEntryOut entry) => fs.Lookup(in context, parent, name, out entry);
    public int Getattr(in RequestContext context, ulong node, out FuseAttrOut attr) => fs.Getattr(in context, node, out attr);
    public int Setattr(in RequestContext context, ulong node, in FuseSetattrIn change, out FuseAttrOut attr) => fs.Setattr(in context, node, in change, out attr);
    public int Readlink(in RequestContext context, ulong node, Span<byte> target, out int length) => fs.Readlink(in context, node, target, out length);
    public int Symlink(in RequestContext context, ulong parent, ReadOnlySpan<byte> name, ReadOnlySpan<byte> target, in SecurityLabel label, out FuseEntryOut entry)
        => fs.Symlink(in context, parent, name, target, in label, out entry);
    public int Mknod(in RequestContext context, ulong parent, ReadOnlySpan<byte> name, in FuseMknodIn arguments, in SecurityLabel label, out FuseEntryOut entry)
        => fs.Mknod(in context, parent, name, in arguments, in label, out entry);
    public int Mkdir(in RequestContext context, ulong parent, ReadOnlySpan<byte> name, in FuseMkdirIn arguments, in SecurityLabel label, out FuseEntryOut entry)
        => fs.Mkdir(in context, parent, name, in arguments, in label, out entry);
    public int Unlink(in RequestContext context, ulong parent, ReadOnlySpan<byte> name) => fs.Unlink(in context, parent, name);
    public int Rmdir(in RequestContext context, ulong parent, ReadOnlySpan<byte> name) => fs.Rmdir(in context, parent, name);
    public int Rename(in RequestContext context, ulong parent, ReadOnlySpan<byte> name, ulong newParent, ReadOnlySpan<byte> newName, uint flags)
        => fs.Rename(in context, parent, name, newParent, newName, flags);
    public int Link(in RequestContext context, ulong node, ulong newParent, ReadOnlySpan<byte> newName, out FuseEntryOut entry) => fs.Link(in context, node, newParent, newName, out entry);
    public int Open(in RequestContext context, ulong node, in FuseOpenIn arguments, out FuseOpenOut open) => fs.Open(in context, node, in arguments, out open);
    public int Create(in RequestContext context, ulong parent, ReadOnlySpan<byte> name, in FuseCreateIn arguments, in SecurityLabel label, bool tmpfile, out FuseEntryOut entry, out FuseOpenOut open)
        => fs.Create(in context, parent, name, in arguments, in label, tmpfile, out entry, out open);
    public int Read(scoped in RequestContext context, ulong node, in FuseReadIn arguments, ref ReplyWriter data) => fs.Read(in context, node, in arguments, ref data);
    public int Write(scoped in RequestContext context, ulong node, in FuseWriteIn arguments, ref RequestReader data, out uint written) => fs.Write(in context, node, in arguments, ref data, out written);
    public int Flush(in RequestContext context, ulong node, in FuseFlushIn arguments) => fs.Flush(in context, node, in arguments);
    public int Release(in RequestContext context, ulong node, in FuseReleaseIn arguments, bool directory) => fs.Release(in context, node, in arguments, directory);
    public int Fsync(in RequestContext context, ulong node, in FuseFsyncIn arguments, bool directory) => fs.Fsync(in context, node, in arguments, directory);
    public int Opendir(in RequestContext context, ulong node, in FuseOpenIn arguments, out FuseOpenOut open) => fs.Opendir(in context, node, in arguments, out open);
    public int Readdir(scoped in RequestContext context, ulong node, in FuseReadIn arguments, ref DirentWriter entries) => fs.Readdir(in context, node, in arguments, ref entries);
    public int Statfs(in RequestContext context, ulong node, out FuseStatfsOut statfs) => fs.Statfs(in context, node, out statfs);
    public int Statx(in RequestContext context, ulong node, in FuseStatxIn arguments, out FuseStatxOut statx) => fs.Statx(in context, node, in arguments, out statx);
    public int Access(in RequestContext context, ulong node, uint mask) => fs.Access(in context, node, mask);
    public int Setxattr(in RequestContext context, ulong node, ReadOnlySpan<byte> name, ReadOnlySpan<byte> value, uint flags, uint setxattrFlags)
        => fs.Setxattr(in context, node, name, value, flags, setxattrFlags);
    public int Getxattr(in RequestContext context, ulong node, ReadOnlySpan<byte> name, Span<byte> value, out int length) => fs.Getxattr(in context, node, name, value, out length);
    public int Listxattr(in RequestContext context, ulong node, Span<byte> list, out int length) => fs.Listxattr(in context, node, list, out length);
    public int Removexattr(in RequestContext context, ulong node, ReadOnlySpan<byte> name) => fs.Removexattr(in context, node, name);
    public int Getlk(in RequestContext context, ulong node, in FuseLkIn arguments, out FuseFileLock conflict) => fs.Getlk(in context, node, in arguments, out conflict);
    public int Setlk(in RequestContext context, ulong node, in FuseLkIn arguments, bool wait) => fs.Setlk(in context, node, in arguments, wait);
    public int Fallocate(in RequestContext context, ulong node, in FuseFallocateIn arguments) => fs.Fallocate(in context, node, in arguments);
    public int Lseek(in RequestContext context, ulong node, in FuseLseekIn arguments, out ulong offset) => fs.Lseek(in context, node, in arguments, out offset);
    public int CopyFileRange(in RequestContext context, ulong node, in FuseCopyFileRangeIn arguments, out uint copied) => fs.CopyFileRange(in context, node, in arguments, out copied);
    public int Syncfs(in RequestContext context, ulong node) => fs.Syncfs(in context, node);
}
