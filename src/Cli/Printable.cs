using System.Globalization;
using System.Text;

namespace Conveyor.Cli;

/// <summary>
/// Text from the Api made safe to print: a control character (C0, DEL, C1) would otherwise reach the
/// terminal as it is, so an error message or a queue name could clear the screen, retitle the window or
/// forge output; an invisible format character (bidirectional overrides such as U+202E, zero-width
/// characters) or a Unicode line or paragraph separator could reorder or hide what is shown. Each one
/// is shown as its escape, <c>\u001B</c>; the text itself is never lost.
/// </summary>
internal static class Printable
{
    /// <param name="text">Text the Api (or whatever answered in its place) sent.</param>
    /// <param name="keepLineBreaks">Keep line breaks and tabs, for a stack trace or a body shown on lines of its own.</param>
    public static string Text(string text, bool keepLineBreaks = false)
    {
        if (keepLineBreaks)
        {
            text = text.ReplaceLineEndings("\n");
        }

        if (!text.Any(Hidden))
        {
            return text;
        }

        var visible = new StringBuilder(text.Length + 16);
        foreach (var c in text)
        {
            if (!Hidden(c) || (keepLineBreaks && c is '\n' or '\t'))
            {
                visible.Append(c);
            }
            else
            {
                visible.Append(CultureInfo.InvariantCulture, $"\\u{(int)c:X4}");
            }
        }

        return visible.ToString();
    }

    private static bool Hidden(char c) => char.IsControl(c)
        || CharUnicodeInfo.GetUnicodeCategory(c) is UnicodeCategory.Format or UnicodeCategory.LineSeparator or UnicodeCategory.ParagraphSeparator;
}
