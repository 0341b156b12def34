using System.Net;
using Conveyor.Contracts;
using Conveyor.ServiceDefaults;

namespace Conveyor.Api.Jobs;

/// <summary>
/// Value rules for string fields: each returns an error message, or null when the value is fine.
/// The contracts' own rules (<see cref="ContractRules"/>, which the worker applies as well), plus what
/// only the Api checks.
/// </summary>
internal static class FieldRules
{
    public static string? AccountId(string value) => ContractRules.AccountId(value);

    public static string? Currency(string value) => ContractRules.Currency(value);

    /// <summary>Sent as a header and stored as text by the worker: <see cref="Text"/> applies too.</summary>
    public static string? EventType(string value) => ContractRules.EventType(value) ?? Text(value);

    /// <summary>
    /// Text that ends up in a PostgreSQL text or jsonb column, stored or compared (here, or in the
    /// worker's tables): PostgreSQL refuses the character U+0000 in both, so a client's "\u0000" would
    /// otherwise be a 500; and no other control character belongs in a name, type, key or URL either.
    /// </summary>
    public static string? Text(string value) =>
        value.Any(char.IsControl) ? "Must not contain control characters." : null;

    /// <param name="allowPrivateHosts">
    /// False: an address literal that is not public (<see cref="NetworkAddresses.IsPublic"/>) or a
    /// localhost name is refused, as the worker would refuse to deliver there. Other names are left
    /// to the worker, which checks the addresses they resolve to when it connects.
    /// </param>
    public static string? WebhookUrl(string value, bool allowPrivateHosts)
    {
        // A URL accepts a raw control character (it is kept as given), and the worker stores the URL as text.
        if ((Text(value) ?? ContractRules.WebhookUrl(value)) is { } problem)
        {
            return problem;
        }

        var url = new Uri(value, UriKind.Absolute);
        var internalHost = url.HostNameType is UriHostNameType.IPv4 or UriHostNameType.IPv6
            ? IPAddress.TryParse(url.DnsSafeHost, out var address) && !NetworkAddresses.IsPublic(address)
            : NetworkAddresses.IsLocalHostName(url.DnsSafeHost);
        return internalHost && !allowPrivateHosts
            ? "Must not point to a loopback, private, link-local or other internal address (Webhooks:AllowPrivateNetworks allows it)."
            : null;
    }
}
