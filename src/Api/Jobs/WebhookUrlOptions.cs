using System.ComponentModel.DataAnnotations;
using Conveyor.ServiceDefaults;

namespace Conveyor.Api.Jobs;

/// <summary>
/// The Api's reading of the <c>Webhooks</c> section, which it shares with the worker (one setting
/// for both in a deployment): whether a <c>deliver-webhook</c> job may name an internal address, and
/// whether its URL must be a registered receiver's. The signing secrets are the worker's alone.
/// </summary>
public sealed class WebhookUrlOptions : IValidatableObject
{
    public const string SectionName = "Webhooks";

    /// <summary>
    /// False (the default): a URL whose host is a loopback, private, link-local or other non-public
    /// address literal, or a localhost name, is refused at submission (400 naming <c>url</c>). Host
    /// names are not resolved here: the worker checks the addresses it connects to.
    /// </summary>
    public bool AllowPrivateNetworks { get; set; }

    /// <summary>The worker's registered receivers (<c>Webhooks:Receivers</c>), of which the Api reads the origins only.</summary>
    public WebhookReceiverUrlOptions[] Receivers { get; set; } = [];

    /// <summary>Each of <see cref="Receivers"/>' settings as configured, which errors name (as the worker's <c>WebhookOptions</c>); not bound, set after binding.</summary>
    internal string[]? ReceiverSettings { get; set; }

    /// <summary>
    /// True: a URL whose origin is not one of <see cref="Receivers"/> is refused at submission (400
    /// naming <c>url</c>), as the worker would refuse to deliver it.
    /// </summary>
    public bool RequireRegisteredReceivers { get; set; }

    public IEnumerable<ValidationResult> Validate(ValidationContext validationContext)
    {
        // As the worker refuses them at start (WebhookOptions.Validate), in its words.
        WebhookReceiverOrigins.Read([.. Receivers.Select(r => r?.Origin)], out var originErrors, ReceiverSettings);
        for (var i = 0; i < Receivers.Length; i++)
        {
            if (Receivers[i] is null)
            {
                yield return new ValidationResult(
                    $"{WebhookReceiverOrigins.EntrySetting(ReceiverSettings, Receivers.Length, i)} is empty; give its {nameof(WebhookReceiverUrlOptions.Origin)}.", [nameof(Receivers)]);
            }
            else if (originErrors.TryGetValue(i, out var originError))
            {
                yield return new ValidationResult(originError, [nameof(Receivers)]);
            }
        }
    }
}

/// <summary>One entry of <c>Webhooks:Receivers</c> as the Api reads it: the origin, not the worker's secrets.</summary>
public sealed class WebhookReceiverUrlOptions
{
    /// <summary>Scheme, host and port of the receiver's webhook URLs (<see cref="WebhookOrigin"/>).</summary>
    public string Origin { get; set; } = "";
}
