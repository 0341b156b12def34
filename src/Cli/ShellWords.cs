namespace Conveyor.Cli;

/// <summary>
/// Values put into a command the operator is told to run (<c>conveyor operations --queue Q ...</c>), quoted for a POSIX
/// shell where they need it. RabbitMQ takes almost any characters in a queue name, and the Api's text is the Api's: a
/// queue named <c>orders error;rm x</c> pasted as it is would run another command. A value of only letters, digits and
/// <c>_ - . / : , @ % +</c> is shown as it is; any other is put in single quotes, inside which a shell reads nothing,
/// and a single quote in it as <c>'\''</c>.
/// </summary>
internal static class ShellWords
{
    public static string Quote(string value) =>
        value.Length > 0 && value.All(IsPlain) ? value : $"'{value.Replace("'", "'\\''", StringComparison.Ordinal)}'";

    /// <summary>
    /// An option and its value as the CLI reads them back: <c>--queue Q</c>, or <c>--queue=Q</c> for a value beginning with
    /// <c>-</c>, which the CLI's parser would read as another option when it stands as a word of its own.
    /// </summary>
    public static string Option(string option, string value) =>
        value.StartsWith('-') ? $"{option}={Quote(value)}" : $"{option} {Quote(value)}";

    /// <summary>
    /// A queue as the argument of <c>move</c>, <c>purge</c>, <c>messages</c> or <c>groups</c>: the name, or <c>--queue=NAME</c>
    /// for one beginning with <c>-</c>, which as an argument would be read as an option (and the parser takes no argument
    /// after a <c>--</c>).
    /// </summary>
    public static string Queue(string queue) => queue.StartsWith('-') ? Option("--queue", queue) : Quote(queue);

    /// <summary>Characters no POSIX shell (nor zsh, which expands a leading <c>=</c>) reads as anything but themselves.</summary>
    private static bool IsPlain(char c) => char.IsAsciiLetterOrDigit(c) || c is '_' or '-' or '.' or '/' or ':' or ',' or '@' or '%' or '+';
}
