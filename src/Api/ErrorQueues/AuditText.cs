using System.Globalization;
using System.Text;

namespace Conveyor.Api.ErrorQueues;

/// <summary>
/// Broker-supplied text as the audit trail stores it. Any client can put control characters into a
/// message id or a header; PostgreSQL refuses a NUL in text and <c>\u0000</c> in jsonb, and the others
/// are invisible to whoever reads the record. So control characters (and unpaired surrogates, which
/// have no UTF-8 form) are written as the six visible characters <c>\uXXXX</c>; all other text is kept
/// as it came. A message id that already contains such a sequence reads the same as the escaped one.
/// </summary>
public static class AuditText
{
    public static bool NeedsEscaping(string text) => FirstToEscape(text) >= 0;

    public static string Escape(string text)
    {
        var first = FirstToEscape(text);
        if (first < 0)
        {
            return text;
        }

        var escaped = new StringBuilder(text.Length + 10);
        escaped.Append(text, 0, first);
        for (var i = first; i < text.Length; i++)
        {
            var c = text[i];
            if (char.IsHighSurrogate(c) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                escaped.Append(c).Append(text[++i]);
            }
            else if (char.IsControl(c) || char.IsSurrogate(c))
            {
                escaped.Append(CultureInfo.InvariantCulture, $"\\u{(int)c:X4}");
            }
            else
            {
                escaped.Append(c);
            }
        }

        return escaped.ToString();
    }

    /// <summary>At most <paramref name="maxLength"/> characters, without cutting a surrogate pair in half.</summary>
    public static string Clip(string text, int maxLength) => Conveyor.Storage.StoredText.Clip(text, maxLength);

    private static int FirstToEscape(string text)
    {
        for (var i = 0; i < text.Length; i++)
        {
            var c = text[i];
            if (char.IsHighSurrogate(c) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                i++;
            }
            else if (char.IsControl(c) || char.IsSurrogate(c))
            {
                return i;
            }
        }

        return -1;
    }
}
