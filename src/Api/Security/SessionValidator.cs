using System.Security.Cryptography;
using System.Text;
using Microsoft.AspNetCore.Authentication;
using Microsoft.AspNetCore.Authentication.Cookies;
using Microsoft.Extensions.Options;

namespace Conveyor.Api.Security;

/// <summary>
/// Ends a dashboard session whose key is no longer configured (removed or rotated), or that was signed
/// out or outlived its absolute lifetime (its row in <see cref="DashboardSessionStore"/>), and refreshes
/// its name and scopes from the configuration, so a session never outlives or outranks its key.
/// </summary>
public sealed class SessionValidator(IOptions<ApiKeyOptions> options, DashboardSessionStore sessions)
{
    private readonly Dictionary<string, ApiKeyIdentity> _byFingerprint = options.Value.ApiKeys
        .ToDictionary(k => Fingerprint(k.Key), k => new ApiKeyIdentity(k.Name, k.Scopes), StringComparer.Ordinal);

    /// <summary>A digest naming a key without revealing it (the cookie is encrypted as well).</summary>
    public static string Fingerprint(string key) =>
        Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes("conveyor-dashboard-session:" + key)));

    public async Task ValidateAsync(CookieValidatePrincipalContext context)
    {
        var fingerprint = context.Principal?.FindFirst(AccessControl.KeyFingerprintClaim)?.Value;
        // A cookie issued before sessions had rows names none: it signs in again.
        if (fingerprint is null || !_byFingerprint.TryGetValue(fingerprint, out var identity)
            || !Guid.TryParse(context.Principal!.FindFirst(AccessControl.SessionIdClaim)?.Value, out var sessionId)
            || !await sessions.IsLiveAsync(sessionId, context.HttpContext.RequestAborted))
        {
            context.RejectPrincipal();
            await context.HttpContext.SignOutAsync(AccessControl.SessionScheme);
            return;
        }

        var current = context.Principal!;
        var scopes = current.FindAll(ApiKeyAuthenticationHandler.ScopeClaim).Select(c => c.Value).Order(StringComparer.Ordinal);
        if (current.Identity?.Name != identity.Name || !scopes.SequenceEqual(identity.Scopes.Order(StringComparer.Ordinal), StringComparer.Ordinal))
        {
            context.ReplacePrincipal(AccessControl.SessionPrincipal(identity, fingerprint, sessionId));
            context.ShouldRenew = true;
        }
    }
}
