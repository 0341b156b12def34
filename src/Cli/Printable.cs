using System.Buffers;
using System.Globalization;
using System.Text;

namespace Conveyor.Cli;

/// <summary>
/// Text from the Api made safe to print: a control character (C0, DEL, C1) would otherwise reach the
/// terminal as it is, so an error message or a queue name could clear the screen, retitle the window or
/// forge output; an invisible format character (bidirectional overrides such as U+202E, zero-width
/// characters) or a Unicode line or paragraph separator could reorder or hide what is shown. Each one
/// is shown as its escape, <c>\u001B</c> (<c>\U000E0041</c> beyond U+FFFF); the text itself is never lost.
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

        // By code point, not by char: the tag characters (U+E0001..U+E007F) are format characters stored as
        // surrogate pairs, whose halves alone are not. A lone surrogate is escaped as the char it is.
        var visible = new StringBuilder(text.Length + 16);
        var changed = false;
        for (var i = 0; i < text.Length;)
        {
            var decoded = Rune.DecodeFromUtf16(text.AsSpan(i), out var rune, out var length) == OperationStatus.Done;
            if (decoded && (!Hidden(rune) || (keepLineBreaks && rune.Value is '\n' or '\t')))
            {
                visible.Append(text, i, length);
            }
            else
            {
                changed = true;
                if (decoded && !rune.IsBmp)
                {
                    visible.Append(CultureInfo.InvariantCulture, $"\\U{rune.Value:X8}");
                }
                else
                {
                    visible.Append(CultureInfo.InvariantCulture, $"\\u{(int)text[i]:X4}");
                }
            }

            i += decoded ? length : 1;
        }

        return changed ? visible.ToString() : text;
    }

    /// <summary>
    /// Control and format characters, line and paragraph separators, and what no terminal can be trusted to
    /// show as itself: code points not yet assigned (a later Unicode may make them format characters) and private use.
    /// </summary>
    internal static bool Hidden(Rune rune) => Rune.GetUnicodeCategory(rune)
        is UnicodeCategory.Control or UnicodeCategory.Format or UnicodeCategory.LineSeparator or UnicodeCategory.ParagraphSeparator
        or UnicodeCategory.OtherNotAssigned or UnicodeCategory.PrivateUse or UnicodeCategory.Surrogate;
}
