namespace Conveyor.Worker.Webhooks;

/// <summary>
/// One entry of <c>Webhooks:Receivers</c> (<c>Webhooks__Receivers__0__Origin</c>, <c>__SigningSecret</c>,
/// <c>__PreviousSigningSecrets__0</c>, ...): a receiver with a secret of its own. Checked by
/// <see cref="WebhookOptions.Validate"/>, which names the entry's index in its errors.
/// </summary>
public sealed class WebhookReceiverOptions
{
    /// <summary>Scheme, host and port of the receiver's webhook URLs (<see cref="ServiceDefaults.WebhookOrigin"/>).</summary>
    public string Origin { get; set; } = "";

    public string SigningSecret { get; set; } = "";

    /// <summary>This receiver's secrets being rotated out, as <see cref="WebhookOptions.PreviousSigningSecrets"/> for the shared one.</summary>
    public string[] PreviousSigningSecrets { get; set; } = [];

    /// <summary>The secrets this receiver's deliveries are signed with, the current one first.</summary>
    public IReadOnlyList<string> SigningSecrets() => [SigningSecret, .. PreviousSigningSecrets];
}
