using Conveyor.ServiceDefaults;
using Microsoft.Extensions.Options;

namespace Conveyor.Api.Jobs;

/// <summary>
/// What <see cref="WebhookUrlOptions"/> allows as a <c>deliver-webhook</c> job's URL, beyond the
/// contract's rules (<see cref="FieldRules.WebhookUrl"/> applies both).
/// </summary>
public sealed class WebhookUrlRules
{
    private readonly WebhookReceiverOrigins _receivers;
    private readonly bool _requireRegistered;

    public WebhookUrlRules(IOptions<WebhookUrlOptions> options)
    {
        var webhooks = options.Value;
        AllowPrivateNetworks = webhooks.AllowPrivateNetworks;
        _requireRegistered = webhooks.RequireRegisteredReceivers;
        // Validated at start; an unreadable entry matches nothing.
        _receivers = WebhookReceiverOrigins.Read([.. webhooks.Receivers.Select(r => r?.Origin)], out _);
    }

    /// <summary><see cref="WebhookUrlOptions.AllowPrivateNetworks"/>.</summary>
    public bool AllowPrivateNetworks { get; }

    /// <summary>
    /// Why <paramref name="url"/> (absolute, http or https) is refused for its origin: not a registered
    /// receiver while registration is required, which the worker would dead-letter without a request.
    /// Null when it is allowed.
    /// </summary>
    public string? UnregisteredReceiver(Uri url) =>
        _requireRegistered && _receivers.IndexOf(url) is null
            ? $"Must be a URL of a registered webhook receiver: its origin {WebhookOrigin.Of(url)} is not one of {WebhookReceiverOrigins.Setting}, and {WebhookUrlOptions.SectionName}:{nameof(WebhookUrlOptions.RequireRegisteredReceivers)} refuses any other."
            : null;
}
