using System.Globalization;
using System.Text;

namespace Conveyor.Cli;

/// <summary>
/// Text from the Api made safe to print: a control character (C0, DEL, C1) would otherwise reach the
/// terminal as it is, so an error message or a queue name could clear the screen, retitle the window or
/// forge output. Each one is shown as its escape, <c>\u001B</c>; the text itself is never lost.
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

        if (!text.Any(char.IsControl))
        {
            return text;
        }

        var visible = new StringBuilder(text.Length + 16);
        foreach (var c in text)
        {
            if (!char.IsControl(c) || (keepLineBreaks && c is '\n' or '\t'))
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
}
