using System.Text;
using Vhostfsd.Posix;
using Xunit;

namespace Vhostfsd.Posix.Tests;

public unsafe class FdTextWriterTests
{
    [Fact]
    public void Text_reaches_the_descriptor_as_utf8_when_a_line_ends_or_on_flush()
    {
        int* fds = stackalloc int[2];
        Assert.Equal(0, Libc.Pipe2(fds, Libc.O_CLOEXEC | Libc.O_NONBLOCK));
        using var read = new SafeFd(fds[0]);
        using var write = new SafeFd(fds[1]);
        var writer = new FdTextWriter(write.Fd);

        writer.Write("grüß ");
        writer.Write('{');
        Assert.Equal("", ReadAll(read.Fd));
        writer.WriteLine("line");
        Assert.Equal("grüß {line\n", ReadAll(read.Fd));
        writer.Write("tail");
        writer.Flush();
        Assert.Equal("tail", ReadAll(read.Fd));
    }

    [Fact]
    public void A_descriptor_nobody_reads_loses_the_text_without_throwing()
    {
        int* fds = stackalloc int[2];
        Assert.Equal(0, Libc.Pipe2(fds, Libc.O_CLOEXEC));
        new SafeFd(fds[0]).Dispose();
        using var write = new SafeFd(fds[1]);
        var writer = new FdTextWriter(write.Fd);
        Assert.Null(Record.Exception(() => writer.WriteLine("to a pipe with no reader (EPIPE)")));
        var closed = new FdTextWriter(-1);
        Assert.Null(Record.Exception(() => closed.WriteLine("to no descriptor (EBADF)")));
    }

    private static string ReadAll(int fd)
    {
        var bytes = new List<byte>();
        byte* buffer = stackalloc byte[256];
        nint n;
        while ((n = Libc.Read(fd, buffer, 256)) > 0)
        {
            bytes.AddRange(new ReadOnlySpan<byte>(buffer, (int)n).ToArray());
        }
        return Encoding.UTF8.GetString(bytes.ToArray());
    }
}
