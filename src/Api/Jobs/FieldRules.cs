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

    /// <summary>Sent as a header: printable ASCII only, which leaves no control character either, and no space at either end.</summary>
    public static string? EventType(string value) => ContractRules.EventType(value);

    /// <summary>
    /// Client text compared with or stored in a PostgreSQL text or jsonb column (here, or in the
    /// worker's tables): a client's "\u0000" would otherwise be a 500 (<see cref="ContractRules.NoControlCharacters"/>).
    /// </summary>
    public static string? Text(string value) => ContractRules.NoControlCharacters(value);

    /// <param name="rules">
    /// Unless private networks are allowed, an address literal that is not public
    /// (<see cref="NetworkAddresses.IsPublic"/>) or a localhost name is refused, as the worker would
    /// refuse to deliver there. Other names are left to the worker, which checks the addresses they
    /// resolve to when it connects. When registration is required, so is an unregistered origin.
    /// </param>
    public static string? WebhookUrl(string value, WebhookUrlRules rules)
    {
        // The contract's rule refuses control characters too: a URL keeps them as given, and the worker stores it as text.
        if (ContractRules.WebhookUrl(value) is { } problem)
        {
            return problem;
        }

        var url = new Uri(value, UriKind.Absolute);
        var internalHost = url.HostNameType is UriHostNameType.IPv4 or UriHostNameType.IPv6
            ? IPAddress.TryParse(url.DnsSafeHost, out var address) && !NetworkAddresses.IsPublic(address)
            // The name the worker connects to ('。' read as '.'), which may be an address after all (NetworkAddresses.LiteralOf).
            : NetworkAddresses.IsLocalHostName(url.IdnHost) || (NetworkAddresses.LiteralOf(url.IdnHost) is { } literal && !NetworkAddresses.IsPublic(literal));
        return internalHost && !rules.AllowPrivateNetworks
            ? "Must not point to a loopback, private, link-local or other internal address (Webhooks:AllowPrivateNetworks allows it)."
            : rules.UnregisteredReceiver(url);
    }
}
