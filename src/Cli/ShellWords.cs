using System.Buffers;
using System.Globalization;
using System.Text;

namespace Conveyor.Cli;

/// <summary>
/// Values put into a command the operator is told to run (<c>conveyor operations --queue Q ...</c>), quoted for a POSIX
/// shell where they need it. RabbitMQ takes almost any characters in a queue name, and the Api's text is the Api's: a
/// queue named <c>orders error;rm x</c> pasted as it is would run another command. A value of only letters, digits and
/// <c>_ - . / : , @ % +</c> is shown as it is; any other is put in single quotes, inside which a shell reads nothing,
/// and a single quote in it as <c>'\''</c>. A value with a character that <see cref="Printable"/> would show as an escape
/// (a control or format character, such as ESC, a line break or U+202E) is put in <c>$'...'</c> quotes instead, each such
/// character as the <c>\xHH</c> escapes of its UTF-8 bytes: single quotes would hold the escape's text, <c>\u001B</c>, and
/// the pasted command would name another queue, while the character itself would reach the terminal.
/// </summary>
internal static class ShellWords
{
    public static string Quote(string value) =>
        value.Length > 0 && value.All(IsPlain) ? value
        : NeedsEscapes(value) ? Escaped(value)
        : $"'{value.Replace("'", "'\\''", StringComparison.Ordinal)}'";

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

    /// <summary>Whether <paramref name="value"/> holds a character that <see cref="Printable.Text"/> shows as an escape.</summary>
    private static bool NeedsEscapes(string value) => Printable.Text(value) != value;

    /// <summary>
    /// <paramref name="value"/> in <c>$'...'</c> quotes (bash, zsh, ksh; POSIX since 2024): a hidden character as its UTF-8
    /// bytes (<c>\x1B</c>), which the shell passes on as they are, whatever its locale; a backslash as <c>\\</c> and a single
    /// quote as <c>\x27</c> (not <c>\'</c>, which bash's history expansion reads as the end of the quotes). A NUL or an
    /// unpaired surrogate cannot be passed at all: a NUL ends an argument (in the shell and in the kernel's argument list),
    /// and a lone surrogate has no UTF-8 form; either would name another queue, so such a value is an answer no Conveyor
    /// Api gives (none of its names, ids or cursors holds one), and the command ends with
    /// <see cref="ExitCodes.UnexpectedAnswer"/> instead of printing a command that would do something else.
    /// </summary>
    private static string Escaped(string value)
    {
        var word = new StringBuilder("$'", value.Length + 16);
        Span<byte> utf8 = stackalloc byte[4];
        for (var i = 0; i < value.Length;)
        {
            if (Rune.DecodeFromUtf16(value.AsSpan(i), out var rune, out var length) != OperationStatus.Done || rune.Value == 0)
            {
                throw Answers.Unexpected(
                    $"'{Printable.Text(value)}' holds {(rune.Value == 0 ? "a NUL character" : "an unpaired surrogate")}, which no command line can pass on, "
                    + "so no command naming it can be given to run");
            }

            if (Printable.Hidden(rune) || rune.Value == '\'')
            {
                var bytes = rune.EncodeToUtf8(utf8);
                foreach (var b in utf8[..bytes])
                {
                    word.Append(CultureInfo.InvariantCulture, $"\\x{b:X2}");
                }
            }
            else if (rune.Value == '\\')
            {
                word.Append(@"\\");
            }
            else
            {
                word.Append(value, i, length);
            }

            i += length;
        }

        return word.Append('\'').ToString();
    }
}
