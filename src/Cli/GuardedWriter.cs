using System.Diagnostics.CodeAnalysis;
using System.Text;

namespace Conveyor.Cli;

/// <summary>
/// Writes through to <paramref name="inner"/>, and shows each write's failure to <paramref name="handled"/> first: true
/// drops it (a stderr that cannot be written), false lets it go on (stdout, noting that its write failed). Every write,
/// span ones included (the base class sends them here as arrays), goes through one of these overloads.
/// </summary>
internal sealed class GuardedWriter(TextWriter inner, Func<Exception, bool> handled) : TextWriter
{
    public override Encoding Encoding => inner.Encoding;

    public override IFormatProvider FormatProvider => inner.FormatProvider;

    [AllowNull]
    public override string NewLine
    {
        get => inner.NewLine;
        set => inner.NewLine = value;
    }

    public override void Write(char value) => Guard(() => inner.Write(value));

    public override void Write(string? value) => Guard(() => inner.Write(value));

    public override void Write(char[] buffer, int index, int count) => Guard(() => inner.Write(buffer, index, count));

    public override void WriteLine() => Guard(inner.WriteLine);

    public override void WriteLine(string? value) => Guard(() => inner.WriteLine(value));

    public override void Flush() => Guard(inner.Flush);

    private void Guard(Action write)
    {
        try
        {
            write();
        }
        catch (Exception exception) when (handled(exception))
        {
            // Dropped, as handled asked.
        }
    }
}
