using System.Runtime.InteropServices;
using System.Text;
using Microsoft.Win32.SafeHandles;

namespace Conveyor.Cli;

/// <summary>
/// The process's stdout, written so that a reader that went away is noticed: <c>conveyor jobs --follow | head -1</c> must
/// end once <c>head</c> has its line. .NET's console stream drops a write to a pipe whose reader has gone (EPIPE) without a
/// word, and the runtime ignores SIGPIPE, so the follower went on polling, writing to nobody, until killed. Written
/// through a stream of its own on file descriptor 1, such a write fails (an <see cref="IOException"/>), and
/// <see cref="IsClosed"/> says so even while nothing is written (a feed with no new job). On Windows, where no such
/// descriptor is read here, and for a file, which no reader closes, it is the console's writer, never reported closed.
/// </summary>
internal sealed partial class StandardOutput : IDisposable
{
    /// <summary>poll(2)'s events for an error on the descriptor (a pipe without a reader) and a hang-up (a closed terminal or socket).</summary>
    private const short PollError = 0x8;
    private const short PollHangUp = 0x10;

    private const int OutputDescriptor = 1;

    private readonly StreamWriter? _own;

    private StandardOutput(TextWriter writer, StreamWriter? own)
    {
        Writer = new GuardedWriter(writer, NoteFailure);
        _own = own;
    }

    /// <summary>What stdout is written through: each write goes out at once, as the console's does.</summary>
    public TextWriter Writer { get; }

    /// <summary>
    /// Whether a write to stdout failed (an <see cref="IOException"/>: a pipe without a reader, or a full disk, <c>&gt; /dev/full</c>),
    /// so that an IOException is known to be stdout's, not one of a file the command reads.
    /// </summary>
    public bool WriteFailed { get; private set; }

    /// <summary>stdout as this process has it: on Linux and macOS through its descriptor, else the console's writer.</summary>
    public static StandardOutput Open()
    {
        if (OperatingSystem.IsLinux() || OperatingSystem.IsMacOS())
        {
            try
            {
                // Not owned: the descriptor stays open for the runtime's own console, which may still write to it.
                var stream = new FileStream(new SafeFileHandle(OutputDescriptor, ownsHandle: false), FileAccess.Write, bufferSize: 0);
                if (stream.CanSeek)
                {
                    // A file (`> report.txt`), which no reader closes: a FileStream writes it at a position of its own and
                    // leaves the file's shared one where it was, so the next writer (the shell, or this process's stderr
                    // under `2>&1`) would write over what it wrote. The console's writer writes at the shared position.
                    stream.Dispose();
                    return new StandardOutput(Console.Out, own: null);
                }

                var own = new StreamWriter(stream, new UTF8Encoding(encoderShouldEmitUTF8Identifier: false)) { AutoFlush = true };
                return new StandardOutput(TextWriter.Synchronized(own), own);
            }
            catch (Exception exception) when (exception is IOException or UnauthorizedAccessException or ArgumentException)
            {
                // No stdout to open (started with it closed): the console's writer, which drops what is written.
            }
        }

        return new StandardOutput(Console.Out, own: null);
    }

    /// <summary>
    /// Whether stdout can no longer be written: a pipe whose reader has gone, a terminal or socket hung up. Asked without
    /// writing, with poll(2) and no wait; false where that cannot be asked (Windows, or a descriptor of its own kind).
    /// </summary>
    public bool IsClosed()
    {
        if (_own is null)
        {
            return false;
        }

        try
        {
            var descriptor = new PollDescriptor { Descriptor = OutputDescriptor, Events = 0, ReturnedEvents = 0 };
            return Poll(ref descriptor, 1, 0) == 1 && (descriptor.ReturnedEvents & (PollError | PollHangUp)) != 0;
        }
        catch (Exception exception) when (exception is DllNotFoundException or EntryPointNotFoundException)
        {
            // A system without a C library by that name: a closed stdout is then noticed at the next write only.
            return false;
        }
    }

    /// <summary>Notes a write that failed (<see cref="WriteFailed"/>); never drops it: the failure is thrown on.</summary>
    private bool NoteFailure(Exception exception)
    {
        if (exception is IOException)
        {
            WriteFailed = true;
        }

        return false;
    }

    public void Dispose()
    {
        try
        {
            _own?.Dispose();
        }
        catch (IOException)
        {
            // Nothing is left to write (each write went out at once): a reader that has gone is no failure here.
        }
    }

    [StructLayout(LayoutKind.Sequential)]
    private struct PollDescriptor
    {
        public int Descriptor;
        public short Events;
        public short ReturnedEvents;
    }

    [LibraryImport("libc", EntryPoint = "poll")]
    private static partial int Poll(ref PollDescriptor descriptors, nuint count, int timeoutMilliseconds);
}
