namespace Conveyor.Tests.Cli;

/// <summary>Text written by a CLI command and read by the test at the same time.</summary>
internal sealed class SharedText
{
    private readonly StringWriter _text = new();

    public SharedText() => Writer = TextWriter.Synchronized(_text);

    /// <summary>Locks itself for every write (<see cref="TextWriter.Synchronized"/>).</summary>
    public TextWriter Writer { get; }

    public override string ToString()
    {
        lock (Writer)
        {
            return _text.ToString();
        }
    }
}
