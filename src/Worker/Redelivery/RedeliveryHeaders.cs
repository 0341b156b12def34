using System.Globalization;
using System.Text;

namespace Conveyor.Worker.Redelivery;

/// <summary>The transport headers Conveyor adds to redelivered and dead-lettered messages.</summary>
public static class RedeliveryHeaders
{
    /// <summary>How many delayed redeliveries this copy has had (absent = none).</summary>
    public const string Attempt = "Conveyor-Redelivery-Attempt";

    /// <summary>When the first attempt failed, ISO 8601 UTC.</summary>
    public const string FirstFailureAt = "Conveyor-First-Failure-At";

    /// <summary>The error that caused the latest redelivery.</summary>
    public const string LastError = "Conveyor-Last-Error";

    /// <summary>How many times a long job was deferred because another worker held its lease.</summary>
    public const string Deferrals = "Conveyor-Lease-Deferrals";

    // Broker bookkeeping and fault details that must not travel with a fresh copy.
    private static readonly string[] StrippedPrefixes = ["x-death", "x-first-death", "x-last-death", "x-delivery-count", "MT-Fault-", "MT-Reason", "MT-Redelivery-Count"];

    public static int ReadInt(IEnumerable<KeyValuePair<string, object>> headers, string name) =>
        int.TryParse(ReadString(headers, name), NumberStyles.Integer, CultureInfo.InvariantCulture, out var value) ? value : 0;

    public static string? ReadString(IEnumerable<KeyValuePair<string, object>> headers, string name)
    {
        foreach (var (key, value) in headers)
        {
            if (string.Equals(key, name, StringComparison.OrdinalIgnoreCase))
            {
                return AsText(value);
            }
        }

        return null;
    }

    /// <summary>
    /// The headers worth storing with a copy to publish later: strings only, broker headers removed.
    /// NUL characters are dropped from names and values: PostgreSQL's <c>jsonb</c> refuses them, and a
    /// header a producer filled with them must not make the message impossible to store (it would be
    /// dead-lettered for a transient failure).
    /// </summary>
    public static Dictionary<string, string> ForStorage(IEnumerable<KeyValuePair<string, object>> headers)
    {
        var kept = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (key, value) in headers)
        {
            if (StrippedPrefixes.Any(prefix => key.StartsWith(prefix, StringComparison.OrdinalIgnoreCase)))
            {
                continue;
            }

            if (AsText(value) is { } text && WithoutNul(key) is { Length: > 0 } name)
            {
                kept[name] = WithoutNul(text);
            }
        }

        return kept;
    }

    private static string WithoutNul(string text) => text.Replace("\0", "", StringComparison.Ordinal);

    private static string? AsText(object? value) => value switch
    {
        null => null,
        string text => text,
        byte[] bytes => Encoding.UTF8.GetString(bytes),
        ReadOnlyMemory<byte> memory => Encoding.UTF8.GetString(memory.Span),
        DateTime time => time.ToUniversalTime().ToString("O", CultureInfo.InvariantCulture),
        DateTimeOffset time => time.ToUniversalTime().ToString("O", CultureInfo.InvariantCulture),
        IFormattable formattable => formattable.ToString(null, CultureInfo.InvariantCulture),
        System.Collections.IEnumerable => null,
        _ => value.ToString(),
    };
}
