using System.Buffers;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;

namespace Conveyor.Api.Jobs;

/// <summary>One step of a path into a JSON value: a name in an object, or (with no name) an index in an array.</summary>
internal readonly record struct JsonStep(string? Name, int Index);

/// <summary>
/// A fault in a JSON body that the parser refuses without saying where: a <c>\u</c> escape that is half a surrogate
/// pair (the first, wherever a name is given twice), or else the first object name given twice. The path to it, for
/// a caller to name the field that holds it (a body's top-level field, a batch's job and that job's field).
/// </summary>
internal sealed class JsonFault
{
    private const string GivenTwice = "Is given more than once: each field may appear once.";
    private const string HeldTwice = "Holds an object with a field given more than once: each field may appear once.";
    private const string UnpairedSurrogate = "Must be valid Unicode text: a \\u escape in it is an unpaired surrogate.";

    private readonly JsonStep[] _path;

    private JsonFault(JsonStep[] path, bool isBrokenEscape) => (_path, IsBrokenEscape) = (path, isBrokenEscape);

    /// <summary>A <c>\u</c> escape that is half a surrogate pair; otherwise a name given twice.</summary>
    public bool IsBrokenEscape { get; }

    /// <summary>
    /// From the body down to the fault: to the name given twice, which is the last step (<c>payload</c>, <c>items</c>,
    /// 0, <c>sku</c>); to the string with the broken escape, or to the object whose name has it (a name that cannot
    /// be read), which may be the body itself (no step).
    /// </summary>
    public IReadOnlyList<JsonStep> Path => _path;

    /// <summary>
    /// What is wrong with the field at <paramref name="step"/> of the <see cref="Path"/>: it holds a broken escape,
    /// it is the name given twice, or its value holds the object that gives a name twice.
    /// </summary>
    public string ErrorAt(int step) => IsBrokenEscape ? UnpairedSurrogate : step == _path.Length - 1 ? GivenTwice : HeldTwice;

    /// <summary>
    /// The first string or name whose <c>\u</c> escapes do not form valid UTF-16, such as <c>"\ud800"</c> alone (reading
    /// it throws an exception that is not a <see cref="JsonException"/>); or else the first name given twice in one
    /// object, the names compared as the parser compares them: after their escapes are read (<c>"\u0061"</c> is
    /// <c>"a"</c>), byte for byte. Null when there is neither; and when the body stops being JSON before any broken
    /// escape, even past a repeat (the parser says where). The body is valid UTF-8; the reader's depth limit is
    /// the parser's; the names of the objects open at once are held, as bytes, in one buffer no larger than the body.
    /// </summary>
    public static JsonFault? Find(ReadOnlySpan<byte> body)
    {
        var reader = new Utf8JsonReader(body);
        // Unescaped, a name or a string is never longer than as sent: the names of the open objects, and the string
        // being read, fit in the body's length.
        var text = ArrayPool<byte>.Shared.Rent(Math.Max(body.Length, 1));
        try
        {
            return Walk(ref reader, text);
        }
        catch (JsonException)
        {
            // Not JSON: the parser says where.
            return null;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(text);
        }
    }

    /// <summary>The first broken escape, or else the first repeat, read to the body's end; null if neither.</summary>
    private static JsonFault? Walk(ref Utf8JsonReader reader, byte[] text)
    {
        var open = new List<Container>();
        // The names of the open objects, as read, in the order read; each object's are removed when it ends.
        var names = new List<Name>();
        var seen = new HashSet<Name>(new NameComparer(text));
        var textEnd = 0;
        JsonStep[]? repeat = null;
        while (reader.Read())
        {
            switch (reader.TokenType)
            {
                case JsonTokenType.PropertyName:
                    if (!TryCopy(ref reader, text.AsSpan(textEnd), out var length))
                    {
                        // A name that cannot be read: the object that has it.
                        return new JsonFault(PathTo(null, open, names, text), isBrokenEscape: true);
                    }

                    var name = new Name(open.Count - 1, textEnd, length, Hash(open.Count - 1, text.AsSpan(textEnd, length)));
                    if (!seen.Add(name))
                    {
                        repeat ??= PathTo(name, open, names, text);
                    }

                    names.Add(name);
                    textEnd += length;
                    break;
                case JsonTokenType.EndObject or JsonTokenType.EndArray:
                    var ended = open[^1];
                    open.RemoveAt(open.Count - 1);
                    for (var i = ended.FirstName; i < names.Count; i++)
                    {
                        seen.Remove(names[i]);
                    }

                    names.RemoveRange(ended.FirstName, names.Count - ended.FirstName);
                    textEnd = ended.TextStart;
                    break;
                default:
                    // A value: in an array, the next element.
                    if (open.Count > 0 && !open[^1].IsObject)
                    {
                        CollectionsMarshal.AsSpan(open)[^1].Index++;
                    }

                    if (reader.TokenType is JsonTokenType.StartObject or JsonTokenType.StartArray)
                    {
                        open.Add(new Container(reader.TokenType == JsonTokenType.StartObject, names.Count, textEnd, -1));
                    }
                    else if (reader.TokenType == JsonTokenType.String && reader.ValueIsEscaped && !TryCopy(ref reader, text.AsSpan(textEnd), out _))
                    {
                        // In an object, the name it is the value of; in an array, its index.
                        return new JsonFault(PathTo(open is [.., { IsObject: true }] ? names[^1] : null, open, names, text), isBrokenEscape: true);
                    }

                    break;
            }
        }

        return repeat is null ? null : new JsonFault(repeat, isBrokenEscape: false);
    }

    /// <summary>Unescapes the current name or string into <paramref name="into"/>; false when its escapes are not valid UTF-16.</summary>
    private static bool TryCopy(ref Utf8JsonReader reader, Span<byte> into, out int length)
    {
        try
        {
            length = reader.CopyString(into);
            return true;
        }
        catch (InvalidOperationException)
        {
            length = 0;
            return false;
        }
    }

    /// <summary>
    /// One step per open object or array: each open array's index, the name each open object is in the value of, and
    /// in the innermost object <paramref name="last"/> (the repeated name, or the one whose value is being read), or
    /// no step for it when null (its name cannot be read).
    /// </summary>
    private static JsonStep[] PathTo(Name? last, List<Container> open, List<Name> names, byte[] text)
    {
        var path = new JsonStep[last is null && open is [.., { IsObject: true }] ? open.Count - 1 : open.Count];
        for (var i = 0; i < path.Length; i++)
        {
            // An open object's name being read is the last it was given before the next container opened.
            path[i] = !open[i].IsObject ? new JsonStep(null, open[i].Index)
                : new JsonStep(Text(i == open.Count - 1 ? last!.Value : names[open[i + 1].FirstName - 1], text), -1);
        }

        return path;
    }

    private static string Text(Name name, byte[] text) => Encoding.UTF8.GetString(text, name.Start, name.Length);

    private static int Hash(int depth, ReadOnlySpan<byte> name)
    {
        // Seeded at random per process: a body cannot be made of names that all fall in one bucket.
        var hash = new HashCode();
        hash.Add(depth);
        hash.AddBytes(name);
        return hash.ToHashCode();
    }

    /// <summary>An open object or array: where its names start (in the list and in the buffer), and its last element's index.</summary>
    private record struct Container(bool IsObject, int FirstName, int TextStart, int Index);

    /// <summary>A name of the open object at <paramref name="Depth"/> (its place in the open containers), as bytes in the buffer.</summary>
    private readonly record struct Name(int Depth, int Start, int Length, int Hash);

    /// <summary>Names are equal in one object, with the same bytes.</summary>
    private sealed class NameComparer(byte[] text) : IEqualityComparer<Name>
    {
        public bool Equals(Name x, Name y) =>
            x.Depth == y.Depth && x.Hash == y.Hash
            && text.AsSpan(x.Start, x.Length).SequenceEqual(text.AsSpan(y.Start, y.Length));

        public int GetHashCode(Name name) => name.Hash;
    }
}
