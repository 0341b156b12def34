using System.Reflection;
using System.Text;
using System.Text.Json;

namespace Conveyor.Contracts;

/// <summary>
/// The field names of the contracts, one rule for every way in (ADR 0008): a field no contract has is
/// refused, not dropped (a misspelt optional field such as <c>account_id</c> would otherwise leave its
/// default, and a report filtered by account would cover every account), and so is a field given twice
/// (which value counts would be a guess; MassTransit's reader, which matches names in any casing, takes
/// the last). Names match in any casing, as on the Api and in MassTransit's reader.
/// </summary>
public static class ContractFields
{
    public const string GivenTwice = "Is given more than once.";

    public const string GivenTwiceInDifferentCasings = "Is given more than once, in different casings.";

    /// <summary>Fields named in one answer at most; a hostile object may hold thousands.</summary>
    public const int MaxReported = 20;

    /// <summary>A field name longer than this is cut short in what is reported.</summary>
    private const int MaxReportedNameLength = 100;

    public static string NotAField(string owner, IEnumerable<string> fields) =>
        $"Is not a field of {owner}; the fields are: {string.Join(", ", fields)}.";

    /// <summary>The camelCase names of <typeparamref name="T"/>'s fields, as on the wire.</summary>
    public static IReadOnlyList<string> Of<T>() where T : class => Names<T>.Text;

    /// <summary>
    /// What is wrong with the field names of the JSON object the reader stands on (its
    /// <see cref="JsonTokenType.StartObject"/>), read as a <typeparamref name="T"/>: names that are none of
    /// its fields, and fields given more than once. The values are skipped; the reader ends on the
    /// object's <see cref="JsonTokenType.EndObject"/>. Allocates nothing for an object whose names are
    /// all written as on the wire.
    /// </summary>
    public static IReadOnlyList<ContractViolation> Check<T>(ref Utf8JsonReader reader) where T : class
    {
        if (reader.TokenType != JsonTokenType.StartObject)
        {
            throw new ArgumentException("The reader must stand on the start of an object.", nameof(reader));
        }

        var utf8 = Names<T>.Utf8;
        // Per field: not seen yet (0), seen as on the wire (1), seen in another casing (2 + index into others).
        Span<int> seen = stackalloc int[utf8.Length];
        seen.Clear();
        List<string>? others = null;
        List<ContractViolation>? found = null;
        while (reader.Read() && reader.TokenType == JsonTokenType.PropertyName)
        {
            var field = IndexOfExact(ref reader, utf8);
            string? name = null;
            if (field < 0)
            {
                name = reader.GetString()!;
                field = IndexOfAnyCasing(name, Names<T>.Text);
            }

            string? problem = null;
            if (field < 0)
            {
                problem = NotAField(typeof(T).Name, Names<T>.Text);
            }
            else if (seen[field] != 0)
            {
                var first = seen[field] == 1 ? Names<T>.Text[field] : others![seen[field] - 2];
                problem = string.Equals(first, name ?? Names<T>.Text[field], StringComparison.Ordinal) ? GivenTwice : GivenTwiceInDifferentCasings;
            }
            else if (name is null)
            {
                seen[field] = 1;
            }
            else
            {
                (others ??= []).Add(name);
                seen[field] = others.Count + 1;
            }

            if (problem is not null && (found ??= []).Count < MaxReported)
            {
                found.Add(new ContractViolation(Shorten(name ?? Names<T>.Text[field]), problem));
            }

            reader.Read();
            reader.Skip();
        }

        return found ?? (IReadOnlyList<ContractViolation>)[];
    }

    private static int IndexOfExact(ref Utf8JsonReader reader, byte[][] names)
    {
        for (var i = 0; i < names.Length; i++)
        {
            if (reader.ValueTextEquals(names[i]))
            {
                return i;
            }
        }

        return -1;
    }

    private static int IndexOfAnyCasing(string name, string[] names)
    {
        for (var i = 0; i < names.Length; i++)
        {
            if (string.Equals(name, names[i], StringComparison.OrdinalIgnoreCase))
            {
                return i;
            }
        }

        return -1;
    }

    private static string Shorten(string name) =>
        name.Length <= MaxReportedNameLength ? name : string.Concat(name.AsSpan(0, MaxReportedNameLength), "…");

    private static class Names<T>
    {
        public static readonly string[] Text = typeof(T)
            .GetProperties(BindingFlags.Public | BindingFlags.Instance)
            .Select(property => JsonNamingPolicy.CamelCase.ConvertName(property.Name))
            .ToArray();

        public static readonly byte[][] Utf8 = Text.Select(Encoding.UTF8.GetBytes).ToArray();
    }
}
