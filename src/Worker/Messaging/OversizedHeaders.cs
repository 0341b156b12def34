using System.Globalization;
using System.Text;

namespace Conveyor.Worker.Messaging;

/// <summary>
/// Makes a copy's headers fit a byte budget by dropping the largest of them, and says which went in
/// <see cref="DroppedHeader"/>. For copies that must go out whatever a producer put in its headers: to
/// <c>_error</c> and <c>_skipped</c>, and stored for a delayed redelivery. The body is never touched.
/// </summary>
public static class OversizedHeaders
{
    /// <summary>The note on a copy whose headers were dropped: their names and sizes.</summary>
    public const string DroppedHeader = "Conveyor-Dropped-Headers";

    /// <summary>The longest note (in UTF-8 bytes): further names are only counted.</summary>
    public const int MaxNoteBytes = 1_024;

    /// <summary>The most the note's table entry takes, kept free in the budget.</summary>
    private static readonly long NoteEntryBytes = AmqpFrame.EntryBytes(DroppedHeader, new string('x', MaxNoteBytes));

    /// <summary>
    /// Removes the largest entries of <paramref name="headers"/>, but none in <paramref name="kept"/>,
    /// until the table's entries take at most <paramref name="budget"/> bytes with the note, and adds
    /// the note. Returns the note, or null when everything fit as it was. A short note already there
    /// (the copy was trimmed before) begins the new one; a long one is dropped like any other header.
    /// </summary>
    public static string? DropLargest(IDictionary<string, object?> headers, long budget, ICollection<string>? kept = null)
    {
        if (AmqpFrame.TableBytes(headers) <= budget)
        {
            return null;
        }

        var dropped = new List<(string Name, long Bytes)>();
        string? earlier = null;
        if (headers.Remove(DroppedHeader, out var existing))
        {
            earlier = existing switch
            {
                string text => text,
                byte[] bytes => Encoding.UTF8.GetString(bytes),
                _ => null,
            };
            if (earlier is null || Encoding.UTF8.GetByteCount(earlier) > MaxNoteBytes / 2)
            {
                dropped.Add((DroppedHeader, AmqpFrame.EntryBytes(DroppedHeader, existing)));
                earlier = null;
            }
        }

        var total = AmqpFrame.TableBytes(headers);
        var largestFirst = headers
            .Where(h => kept?.Contains(h.Key) != true)
            .Select(h => (Name: h.Key, Bytes: AmqpFrame.EntryBytes(h.Key, h.Value)))
            .OrderByDescending(h => h.Bytes)
            .ThenBy(h => h.Name, StringComparer.Ordinal)
            .ToList();
        foreach (var header in largestFirst)
        {
            if (total + NoteEntryBytes <= budget)
            {
                break;
            }

            headers.Remove(header.Name);
            total -= header.Bytes;
            dropped.Add(header);
        }

        var note = Note(earlier, dropped);
        headers[DroppedHeader] = note;
        return note;
    }

    /// <summary>"X-Pad (130708 bytes), X-Other (70000 bytes)", after the earlier note, within <see cref="MaxNoteBytes"/>.</summary>
    private static string Note(string? earlier, List<(string Name, long Bytes)> dropped)
    {
        // Room for ", and 12345 more".
        const int tail = 32;
        var note = new StringBuilder(earlier);
        var noteBytes = Encoding.UTF8.GetByteCount(note.ToString());
        var left = dropped.Count;
        foreach (var (name, bytes) in dropped)
        {
            var part = string.Create(CultureInfo.InvariantCulture, $"{(note.Length == 0 ? "" : ", ")}{name} ({bytes} bytes)");
            var partBytes = Encoding.UTF8.GetByteCount(part);
            if (noteBytes + partBytes > MaxNoteBytes - tail)
            {
                break;
            }

            note.Append(part);
            noteBytes += partBytes;
            left--;
        }

        if (left > 0)
        {
            note.Append(CultureInfo.InvariantCulture, $"{(note.Length == 0 ? "" : ", ")}and {left} more");
        }

        return note.ToString();
    }
}
