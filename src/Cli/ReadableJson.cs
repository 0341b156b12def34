using System.Globalization;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;

namespace Conveyor.Cli;

/// <summary>
/// How <c>--json</c> writes the Api's JSON: text stays readable (<c>Zürich</c>, <c>'id'</c>, <c>a+b</c>,
/// <c>&lt;none&gt;</c> as they are, where System.Text.Json's default writes <c>\u00FC</c>, <c>\u0027</c>,
/// <c>\u002B</c> and <c>\u003C</c>), while every character a terminal would act on or hide is escaped as
/// the views show it (<see cref="Printable.Hidden"/>: control and format characters such as U+202E,
/// line separators, private-use and unassigned code points, lone surrogates). Not for HTML: nothing
/// here is embedded in a page.
/// </summary>
internal static class ReadableJson
{
    public static readonly JsonSerializerOptions Indented = new() { WriteIndented = true, Encoder = Encoder.Instance };

    /// <summary>One value per line, as <c>jobs --follow --json</c> prints its pages.</summary>
    public static readonly JsonSerializerOptions Compact = new() { Encoder = Encoder.Instance };

    /// <summary>
    /// Escapes what JSON requires (<c>"</c>, <c>\</c>, C0 controls) and what <see cref="Printable.Hidden"/> hides;
    /// everything else is written as it is. A scalar beyond U+FFFF is escaped as its surrogate pair, as JSON has it.
    /// </summary>
    internal sealed class Encoder : JavaScriptEncoder
    {
        public static readonly Encoder Instance = new();

        private Encoder()
        {
        }

        /// <summary><c>\uXXXX</c> for one char; a pair's two escapes for its two chars.</summary>
        public override int MaxOutputCharactersPerInputCharacter => 6;

        public override bool WillEncode(int unicodeScalar) =>
            unicodeScalar is '"' or '\\'
            || !Rune.TryCreate(unicodeScalar, out var rune)
            || Printable.Hidden(rune);

        public override unsafe int FindFirstCharacterToEncode(char* text, int textLength) =>
            FirstToEncode(new ReadOnlySpan<char>(text, textLength));

        public override unsafe bool TryEncodeUnicodeScalar(int unicodeScalar, char* buffer, int bufferLength, out int numberOfCharactersWritten) =>
            TryEncode(unicodeScalar, new Span<char>(buffer, bufferLength), out numberOfCharactersWritten);

        private int FirstToEncode(ReadOnlySpan<char> text)
        {
            for (var i = 0; i < text.Length;)
            {
                if (Rune.DecodeFromUtf16(text[i..], out var rune, out var length) != System.Buffers.OperationStatus.Done)
                {
                    return i;
                }

                if (WillEncode(rune.Value))
                {
                    return i;
                }

                i += length;
            }

            return -1;
        }

        private static bool TryEncode(int scalar, Span<char> buffer, out int written)
        {
            // JSON's own short escapes where it has them: a stack trace reads as lines joined by \n.
            var shortForm = scalar switch
            {
                '"' => "\\\"",
                '\\' => "\\\\",
                '\n' => "\\n",
                '\r' => "\\r",
                '\t' => "\\t",
                '\b' => "\\b",
                '\f' => "\\f",
                _ => null,
            };
            if (shortForm is not null)
            {
                var fits = shortForm.TryCopyTo(buffer);
                written = fits ? shortForm.Length : 0;
                return fits;
            }

            Span<char> units = stackalloc char[2];
            var count = Rune.TryCreate(scalar, out var rune) ? rune.EncodeToUtf16(units) : Unit(scalar, units);
            written = 0;
            if (buffer.Length < count * 6)
            {
                return false;
            }

            for (var i = 0; i < count; i++)
            {
                if (!buffer[written..].TryWrite(CultureInfo.InvariantCulture, $"\\u{(int)units[i]:X4}", out var one))
                {
                    written = 0;
                    return false;
                }

                written += one;
            }

            return true;
        }

        /// <summary>A lone surrogate (not a scalar value) as the one char it is.</summary>
        private static int Unit(int value, Span<char> units)
        {
            units[0] = (char)value;
            return 1;
        }
    }
}
