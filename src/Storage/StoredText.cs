using System.Text;

namespace Conveyor.Storage;

/// <summary>
/// Text from outside (a remote side's error body, an exception's message, a broker's reason) as a
/// PostgreSQL <c>text</c> or <c>jsonb</c> value can hold it. PostgreSQL refuses a NUL in either, and
/// Npgsql refuses to encode an unpaired surrogate, which has no UTF-8 form: a write carrying either
/// fails, and a status that write was to record is never recorded.
/// </summary>
public static class StoredText
{
    /// <summary>
    /// <paramref name="text"/> without NUL characters, with each unpaired surrogate replaced by U+FFFD,
    /// at most <paramref name="maxLength"/> characters long and not cut inside a surrogate pair.
    /// </summary>
    public static string Storable(string text, int maxLength = int.MaxValue)
    {
        var clipped = Clip(text, maxLength);
        var first = FirstUnstorable(clipped);
        if (first < 0)
        {
            return clipped;
        }

        var kept = new StringBuilder(clipped.Length);
        kept.Append(clipped, 0, first);
        for (var i = first; i < clipped.Length; i++)
        {
            var c = clipped[i];
            if (char.IsHighSurrogate(c) && i + 1 < clipped.Length && char.IsLowSurrogate(clipped[i + 1]))
            {
                kept.Append(c).Append(clipped[++i]);
            }
            else if (char.IsSurrogate(c))
            {
                kept.Append('\uFFFD');
            }
            else if (c != '\0')
            {
                kept.Append(c);
            }
        }

        return kept.ToString();
    }

    /// <summary>At most <paramref name="maxLength"/> characters, without cutting a surrogate pair in half.</summary>
    public static string Clip(string text, int maxLength)
    {
        if (text.Length <= maxLength)
        {
            return text;
        }

        var end = char.IsHighSurrogate(text[maxLength - 1]) && char.IsLowSurrogate(text[maxLength]) ? maxLength - 1 : maxLength;
        return text[..end];
    }

    private static int FirstUnstorable(string text)
    {
        for (var i = 0; i < text.Length; i++)
        {
            var c = text[i];
            if (char.IsHighSurrogate(c) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                i++;
            }
            else if (c == '\0' || char.IsSurrogate(c))
            {
                return i;
            }
        }

        return -1;
    }
}
