using Conveyor.ServiceDefaults;
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
    private readonly WebhookReceiverOrigins _receivers;
    private readonly IReadOnlyList<string>[] _receiverSecrets;
    private readonly IReadOnlyList<string> _shared;
    private readonly bool _requireRegistered;

    public WebhookSigningKeys(IOptions<WebhookOptions> options)
    {
        var webhooks = options.Value;
        _shared = webhooks.SigningSecrets();
        _requireRegistered = webhooks.RequireRegisteredReceivers;
        // The options were validated at start; an unreadable entry matches nothing.
        _receivers = WebhookReceiverOrigins.Read([.. webhooks.Receivers.Select(r => r?.Origin)], out _);
        _receiverSecrets = [.. webhooks.Receivers.Select(r => r?.SigningSecrets() ?? [])];
    }

    /// <summary>The secrets to sign a delivery to <paramref name="url"/> with, the current one first.</summary>
    /// <exception cref="PermanentFailureException">The origin is not registered and registration is required.</exception>
    public IReadOnlyList<string> For(Uri url)
    {
        if (_receivers.IndexOf(url) is { } receiver)
        {
            return _receiverSecrets[receiver];
        }

        return _requireRegistered
            ? throw new PermanentFailureException(
                $"The webhook URL's origin {WebhookOrigin.Of(url)} is not a registered receiver ({WebhookOptions.SectionName}:{nameof(WebhookOptions.Receivers)}), and {WebhookOptions.SectionName}:{nameof(WebhookOptions.RequireRegisteredReceivers)} refuses deliveries to any other; no request was made.")
            : _shared;
    }
}
