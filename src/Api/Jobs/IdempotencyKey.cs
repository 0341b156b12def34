using Microsoft.Extensions.Primitives;

namespace Conveyor.Api.Jobs;

/// <summary>The optional <c>Idempotency-Key</c> request header: 1 to 200 printable ASCII characters.</summary>
internal static class IdempotencyKey
{
    public const string HeaderName = "Idempotency-Key";
    public const int MaxLength = 200;

    /// <summary>The key, or null when the header is absent; records an error when it is malformed.</summary>
    public static string? Read(IHeaderDictionary headers, FieldErrors errors)
    {
        if (!headers.TryGetValue(HeaderName, out var values))
        {
            return null;
        }

        if (values.Count != 1 || !IsValid(values))
        {
            errors.Add(HeaderName, $"Must be sent once, as 1 to {MaxLength} printable ASCII characters.");
            return null;
        }

        return values.ToString();
    }

    private static bool IsValid(StringValues values)
    {
        var key = values.ToString();
        return key.Length is > 0 and <= MaxLength && key.All(c => c is >= ' ' and <= '~');
    }
}
