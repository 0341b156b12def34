namespace Conveyor.Api.Jobs;

/// <summary>
/// The Api's reading of the <c>Webhooks</c> section, which it shares with the worker (one setting
/// for both in a deployment): whether a <c>deliver-webhook</c> job may name an internal address.
/// </summary>
public sealed class WebhookUrlOptions
{
    public const string SectionName = "Webhooks";

    /// <summary>
    /// False (the default): a URL whose host is a loopback, private, link-local or other non-public
    /// address literal, or a localhost name, is refused at submission (400 naming <c>url</c>). Host
    /// names are not resolved here: the worker checks the addresses it connects to.
    /// </summary>
    public bool AllowPrivateNetworks { get; set; }
}
