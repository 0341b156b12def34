using System.Collections.Frozen;
using Conveyor.Worker.Failures;
using Microsoft.Extensions.Options;

namespace Conveyor.Worker.Webhooks;

/// <summary>
/// Which secrets sign a delivery: its receiver's own when the URL's origin is one of
/// <see cref="WebhookOptions.Receivers"/>, never the shared one then (a receiver holding the shared
/// secret could otherwise sign deliveries this one accepts); the shared secret for any other URL, or a
/// refusal when <see cref="WebhookOptions.RequireRegisteredReceivers"/> is set.
/// </summary>
public sealed class WebhookSigningKeys
{
    private readonly FrozenDictionary<string, IReadOnlyList<string>> _byOrigin;
    private readonly IReadOnlyList<string> _shared;
    private readonly bool _requireRegistered;

    public WebhookSigningKeys(IOptions<WebhookOptions> options)
    {
        var webhooks = options.Value;
        _shared = webhooks.SigningSecrets();
        _requireRegistered = webhooks.RequireRegisteredReceivers;
        var byOrigin = new Dictionary<string, IReadOnlyList<string>>(StringComparer.OrdinalIgnoreCase);
        foreach (var receiver in webhooks.Receivers)
        {
            // The options were validated at start; this only keeps an unreadable entry from matching anything.
            if (WebhookOrigin.Read(receiver.Origin, out var origin) is null)
            {
                byOrigin.TryAdd(origin, receiver.SigningSecrets());
            }
        }

        _byOrigin = byOrigin.ToFrozenDictionary(StringComparer.OrdinalIgnoreCase);
    }

    /// <summary>The secrets to sign a delivery to <paramref name="url"/> with, the current one first.</summary>
    /// <exception cref="PermanentFailureException">The origin is not registered and registration is required.</exception>
    public IReadOnlyList<string> For(Uri url)
    {
        var origin = WebhookOrigin.Of(url);
        if (_byOrigin.TryGetValue(origin, out var secrets))
        {
            return secrets;
        }

        return _requireRegistered
            ? throw new PermanentFailureException(
                $"The webhook URL's origin {origin} is not a registered receiver ({WebhookOptions.SectionName}:{nameof(WebhookOptions.Receivers)}), and {WebhookOptions.SectionName}:{nameof(WebhookOptions.RequireRegisteredReceivers)} refuses deliveries to any other; no request was made.")
            : _shared;
    }
}
