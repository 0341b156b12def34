using System.ComponentModel.DataAnnotations;

namespace Conveyor.Worker.Webhooks;

/// <summary>Section <c>Webhooks</c>; the signing secrets come from the environment (<c>Webhooks__SigningSecret</c>).</summary>
public sealed class WebhookOptions : IValidatableObject
{
    public const string SectionName = "Webhooks";

    /// <summary>The shortest signing secret, current or previous, the worker starts with.</summary>
    public const int MinSecretLength = 16;

    [Required, MinLength(MinSecretLength)]
    public string SigningSecret { get; set; } = "";

    /// <summary>
    /// Secrets being rotated out (<c>Webhooks__PreviousSigningSecrets__0</c>, ...): every delivery is signed
    /// with each of them too, after <see cref="SigningSecret"/>. One secret signs every receiver's
    /// webhooks, and receivers cannot all change theirs at the moment the worker does: without this
    /// overlap a rotation made every delivery fail verification at each receiver not yet changed (and
    /// at every receiver while pods with either secret deliver), which a receiver answering 400 or 401
    /// sent to <c>_error</c>.
    /// </summary>
    public string[] PreviousSigningSecrets { get; set; } = [];

    [Range(1, 120)]
    public int TimeoutSeconds { get; set; } = 10;

    /// <summary>
    /// Whether webhooks may go to loopback, private, link-local and other non-public addresses
    /// (<see cref="WebhookDestinations"/>). Off by default: a job's URL is the submitter's choice.
    /// </summary>
    public bool AllowPrivateNetworks { get; set; }

    /// <summary>The secrets every delivery is signed with, the current one first.</summary>
    public IReadOnlyList<string> SigningSecrets() => [SigningSecret, .. PreviousSigningSecrets];

    public IEnumerable<ValidationResult> Validate(ValidationContext validationContext)
    {
        if (PreviousSigningSecrets.Any(secret => secret is null || secret.Length < MinSecretLength))
        {
            yield return new ValidationResult(
                $"Each of {SectionName}:{nameof(PreviousSigningSecrets)} must be at least {MinSecretLength} characters long, as {SectionName}:{nameof(SigningSecret)}.",
                [nameof(PreviousSigningSecrets)]);
        }
    }
}
