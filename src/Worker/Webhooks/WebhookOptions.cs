using System.ComponentModel.DataAnnotations;

namespace Conveyor.Worker.Webhooks;

/// <summary>Section <c>Webhooks</c>; the signing secret comes from the environment (<c>Webhooks__SigningSecret</c>).</summary>
public sealed class WebhookOptions
{
    public const string SectionName = "Webhooks";

    [Required, MinLength(16)]
    public string SigningSecret { get; set; } = "";

    [Range(1, 120)]
    public int TimeoutSeconds { get; set; } = 10;

    /// <summary>
    /// Whether webhooks may go to loopback, private, link-local and other non-public addresses
    /// (<see cref="WebhookDestinations"/>). Off by default: a job's URL is the submitter's choice.
    /// </summary>
    public bool AllowPrivateNetworks { get; set; }
}
