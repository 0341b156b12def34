using System.Buffers;
using System.Net;
using Conveyor.ServiceDefaults;

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

    /// <param name="allowPrivateHosts">
    /// False: an address literal that is not public (<see cref="NetworkAddresses.IsPublic"/>) or a
    /// localhost name is refused, as the worker would refuse to deliver there. Other names are left
    /// to the worker, which checks the addresses they resolve to when it connects.
    /// </param>
    public static string? WebhookUrl(string value, bool allowPrivateHosts)
    {
        if (value.Length > MaxUrlLength)
        {
            return $"Must be at most {MaxUrlLength} characters long.";
        }

        if (!Uri.TryCreate(value, UriKind.Absolute, out var url)
            || (url.Scheme != Uri.UriSchemeHttp && url.Scheme != Uri.UriSchemeHttps)
            || url.Host.Length == 0)
        {
            return "Must be an absolute http or https URL.";
        }

        var internalHost = url.HostNameType is UriHostNameType.IPv4 or UriHostNameType.IPv6
            ? IPAddress.TryParse(url.DnsSafeHost, out var address) && !NetworkAddresses.IsPublic(address)
            : NetworkAddresses.IsLocalHostName(url.DnsSafeHost);
        return internalHost && !allowPrivateHosts
            ? "Must not point to a loopback, private, link-local or other internal address (Webhooks:AllowPrivateNetworks allows it)."
            : null;
    }
}
