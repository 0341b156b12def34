using System.Buffers;

namespace Conveyor.Api.Jobs;

/// <summary>Value rules for string fields: each returns an error message, or null when the value is fine.</summary>
internal static class FieldRules
{
    public const int MaxAccountIdLength = 100;
    public const int MaxUrlLength = 2048;
    public const int MaxEventTypeLength = 200;

    private static readonly SearchValues<char> AccountIdChars =
        SearchValues.Create("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-:.");

    public static string? AccountId(string value)
    {
        if (value.Length is 0 or > MaxAccountIdLength)
        {
            return $"Must be 1 to {MaxAccountIdLength} characters long.";
        }

        return value.AsSpan().ContainsAnyExcept(AccountIdChars)
            ? "May contain only letters, digits and the characters _ - : ."
            : null;
    }

    public static string? Currency(string value) =>
        CurrencyCodes.IsActive(value) ? null : "Must be an active ISO 4217 currency code in upper case, such as EUR.";

    public static string? EventType(string value) =>
        string.IsNullOrWhiteSpace(value) || value.Length > MaxEventTypeLength
            ? $"Must be 1 to {MaxEventTypeLength} characters long and not blank."
            : null;

    public static string? WebhookUrl(string value)
    {
        if (value.Length > MaxUrlLength)
        {
            return $"Must be at most {MaxUrlLength} characters long.";
        }

        return Uri.TryCreate(value, UriKind.Absolute, out var url)
            && (url.Scheme == Uri.UriSchemeHttp || url.Scheme == Uri.UriSchemeHttps)
            && url.Host.Length > 0
            ? null
            : "Must be an absolute http or https URL.";
    }
}
