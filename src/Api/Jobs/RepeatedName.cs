using System.Buffers;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;

namespace Conveyor.Api.Jobs;

/// <summary>One step of a path into a JSON value: a name in an object, or (with no name) an index in an array.</summary>
internal readonly record struct JsonStep(string? Name, int Index);

/// <summary>
/// The first object name given twice in a JSON body, which the parser refuses without saying where: the path to it,
/// for a caller to name the field that holds it (a body's top-level field, a batch's job and that job's field).
/// </summary>
internal sealed class RepeatedName
{
    private const string GivenTwice = "Is given more than once: each field may appear once.";
    private const string HeldTwice = "Holds an object with a field given more than once: each field may appear once.";

    private readonly JsonStep[] _path;

    private RepeatedName(JsonStep[] path) => _path = path;

    /// <summary>From the body down to the name given twice, which is the last step (<c>payload</c>, <c>items</c>, 0, <c>sku</c>).</summary>
    public IReadOnlyList<JsonStep> Path => _path;

    /// <summary>
    /// What is wrong with the field at <paramref name="step"/> of the <see cref="Path"/>: it is the name given
    /// twice, or its value holds the object that gives a name twice.
    /// </summary>
    public string ErrorAt(int step) => step == _path.Length - 1 ? GivenTwice : HeldTwice;

    /// <summary>
    /// The first name given twice in one object, the names compared as the parser compares them: after their escapes
    /// are read (<c>"\u0061"</c> is <c>"a"</c>), byte for byte. Null when no name repeats, when the body is not JSON
    /// apart from that (read to its end, so that a syntax error is reported where the parser stops), or when a name's
    /// escapes are not valid UTF-16. The reader's depth limit is the parser's; the names of the objects open at once
    /// are held, as bytes, in one buffer no larger than the body.
    /// </summary>
    public static RepeatedName? Find(ReadOnlySpan<byte> body)
    {
        var reader = new Utf8JsonReader(body);
        // Unescaped, a name is never longer than as sent: the names of the open objects fit in the body's length.
        var text = ArrayPool<byte>.Shared.Rent(Math.Max(body.Length, 1));
        try
        {
            var path = FirstRepeat(ref reader, text);
            if (path is null)
            {
                return null;
            }

            while (reader.Read())
            {
                // To the end: the body may not be JSON further on.
            }

            return new RepeatedName(path);
        }
        catch (Exception exception) when (exception is JsonException or InvalidOperationException)
        {
            // Not JSON (the parser says where), or a name whose escapes cannot be read (refused for that, first).
            return null;
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(text);
        }
    }

    /// <summary>The path to the first name given twice, the reader left just past it; null at the body's end.</summary>
    private static JsonStep[]? FirstRepeat(ref Utf8JsonReader reader, byte[] text)
    {
        var open = new List<Container>();
        // The names of the open objects, as read, in the order read; each object's are removed when it ends.
        var names = new List<Name>();
        var seen = new HashSet<Name>(new NameComparer(text));
        var textEnd = 0;
        while (reader.Read())
        {
            switch (reader.TokenType)
            {
                case JsonTokenType.PropertyName:
                    var length = reader.CopyString(text.AsSpan(textEnd));
                    var name = new Name(open.Count - 1, textEnd, length, Hash(open.Count - 1, text.AsSpan(textEnd, length)));
                    if (!seen.Add(name))
                    {
                        return PathTo(name, open, names, text);
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

                    break;
            }
        }

        return null;
    }

    /// <summary>One step per open object or array: the name each open object is in the value of, the repeated one last.</summary>
    private static JsonStep[] PathTo(Name repeated, List<Container> open, List<Name> names, byte[] text)
    {
        var path = new JsonStep[open.Count];
        for (var i = 0; i < path.Length; i++)
        {
            // An open object's name being read is the last it was given before the next container opened.
            path[i] = !open[i].IsObject ? new JsonStep(null, open[i].Index)
                : new JsonStep(Text(i == path.Length - 1 ? repeated : names[open[i + 1].FirstName - 1], text), -1);
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
