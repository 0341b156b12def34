using System.ComponentModel.DataAnnotations;
using Conveyor.ServiceDefaults;

namespace Conveyor.Worker.Webhooks;

/// <summary>
/// Section <c>Webhooks</c>; the signing secrets come from the environment (<c>Webhooks__SigningSecret</c>,
/// <c>Webhooks__Receivers__0__SigningSecret</c>).
/// </summary>
public sealed class WebhookOptions : IValidatableObject
{
    public const string SectionName = "Webhooks";

    /// <summary>The shortest signing secret, current or previous, the worker starts with.</summary>
    public const int MinSecretLength = 16;

    [Required, MinLength(MinSecretLength)]
    public string SigningSecret { get; set; } = "";

    /// <summary>
    /// Secrets being rotated out (<c>Webhooks__PreviousSigningSecrets__0</c>, ...): every delivery the shared
    /// secret signs is signed with each of them too, after <see cref="SigningSecret"/>. One secret signs
    /// every unregistered receiver's webhooks, and receivers cannot all change theirs at the moment the
    /// worker does: without this overlap a rotation made every delivery fail verification at each receiver not yet changed (and
    /// at every receiver while pods with either secret deliver), which a receiver answering 400 or 401
    /// sent to <c>_error</c>.
    /// </summary>
    public string[] PreviousSigningSecrets { get; set; } = [];

    [Range(1, 120)]
    public int TimeoutSeconds { get; set; } = 10;

    /// <summary>
    /// Deliveries to one origin (scheme, host and port) made at once, by all workers together (each
    /// holds its slots as advisory locks in the database, <see cref="WebhookOriginLeases"/>). A delivery
    /// whose origin has this many in flight does not wait for one to end while holding a slot of the
    /// endpoint: it is set aside and comes back a moment later (<see cref="WebhookOriginLimitFilter"/>), so
    /// a receiver that answers slowly, or not at all until its timeout, takes at most this many of a
    /// worker's <c>Consumers:DeliverWebhook:ConcurrentMessageLimit</c>, the other receivers' webhooks go
    /// on, and adding workers does not multiply the load on a receiver. While the database cannot count
    /// the slots, each worker counts its own.
    /// </summary>
    [Range(1, 1_000)]
    public int MaxConcurrentPerOrigin { get; set; } = 4;

    /// <summary>
    /// How many times one delivery is set aside for its origin's limit before it is delivered over it, so
    /// that a webhook to a busy origin cannot be put off without end (each time it waits longer, up to
    /// <see cref="WebhookOriginLimitFilter.MaxDeferralWait"/>; 12 times wait at most about 3.5 minutes in all, well within the Api's
    /// stranded-job check, <c>Jobs:StrandedAfterSeconds</c>, which would publish a job left <c>queued</c> again). 0 sets nothing aside: the limit is off.
    /// </summary>
    [Range(0, 1_000)]
    public int MaxOriginDeferrals { get; set; } = 12;

    /// <summary>
    /// Whether webhooks may go to loopback, private, link-local and other non-public addresses
    /// (<see cref="WebhookDestinations"/>). Off by default: a job's URL is the submitter's choice.
    /// </summary>
    public bool AllowPrivateNetworks { get; set; }

    /// <summary>
    /// Receivers with secrets of their own (<see cref="WebhookSigningKeys"/>). The shared secret is known to
    /// every receiver that verifies with it, so any of them could sign a delivery that another accepts;
    /// a delivery to a registered origin is signed with its receiver's secrets only.
    /// </summary>
    public WebhookReceiverOptions[] Receivers { get; set; } = [];

    /// <summary>
    /// Each of <see cref="Receivers"/>' settings as configured (<see cref="WebhookReceiverOrigins.EntrySettings"/>), which
    /// errors name: .NET binds the entries one after another, so the entry configured as <c>Webhooks:Receivers:5</c>
    /// with none before it is <c>Receivers[0]</c>, and an error naming <c>Webhooks:Receivers:0</c> sent the operator to
    /// a setting nobody wrote. Not bound (internal); set after binding.
    /// </summary>
    internal string[]? ReceiverSettings { get; set; }

    /// <summary>
    /// Whether a delivery to an origin not in <see cref="Receivers"/> is refused (permanently, to
    /// <c>_error</c>, before any request) instead of signed with the shared secret.
    /// </summary>
    public bool RequireRegisteredReceivers { get; set; }

    /// <summary>The secrets a delivery to an unregistered receiver is signed with, the current one first.</summary>
    public IReadOnlyList<string> SigningSecrets() => [SigningSecret, .. PreviousSigningSecrets];

    public IEnumerable<ValidationResult> Validate(ValidationContext validationContext)
    {
        if (PreviousSigningSecrets.Any(IsTooShort))
        {
            yield return new ValidationResult(
                $"Each of {SectionName}:{nameof(PreviousSigningSecrets)} must be at least {MinSecretLength} characters long, as {SectionName}:{nameof(SigningSecret)}.",
                [nameof(PreviousSigningSecrets)]);
        }

        foreach (var padded in Padded(SectionName, SigningSecret, PreviousSigningSecrets))
        {
            yield return padded;
        }

        // The Api reads the origins the same way (WebhookReceiverOrigins), and refuses the same ones at start.
        WebhookReceiverOrigins.Read([.. Receivers.Select(r => r?.Origin)], out var originErrors, ReceiverSettings);
        for (var i = 0; i < Receivers.Length; i++)
        {
            var setting = WebhookReceiverOrigins.EntrySetting(ReceiverSettings, Receivers.Length, i);
            var receiver = Receivers[i];
            if (receiver is null)
            {
                yield return new ValidationResult($"{setting} is empty; give its {nameof(WebhookReceiverOptions.Origin)} and {nameof(WebhookReceiverOptions.SigningSecret)}.", [nameof(Receivers)]);
                continue;
            }

            if (originErrors.TryGetValue(i, out var originError))
            {
                yield return new ValidationResult(originError, [nameof(Receivers)]);
            }

            if (IsTooShort(receiver.SigningSecret))
            {
                yield return new ValidationResult(
                    $"{setting}:{nameof(WebhookReceiverOptions.SigningSecret)} is required and must be at least {MinSecretLength} characters long.", [nameof(Receivers)]);
            }
            else if (receiver.SigningSecret == SigningSecret)
            {
                // Every unregistered receiver holds the shared secret: the receiver would be no safer than before.
                yield return new ValidationResult(
                    $"{setting}:{nameof(WebhookReceiverOptions.SigningSecret)} is {SectionName}:{nameof(SigningSecret)}; a registered receiver needs a secret of its own (the shared one may be among its {nameof(WebhookReceiverOptions.PreviousSigningSecrets)} while it moves over).",
                    [nameof(Receivers)]);
            }
            else if (PreviousSigningSecrets.Contains(receiver.SigningSecret, StringComparer.Ordinal))
            {
                // Held by every unregistered receiver that has not moved to the new shared secret yet, as the current one is.
                yield return new ValidationResult(
                    $"{setting}:{nameof(WebhookReceiverOptions.SigningSecret)} is one of {SectionName}:{nameof(PreviousSigningSecrets)}; a registered receiver needs a secret of its own (a shared one may be among its {nameof(WebhookReceiverOptions.PreviousSigningSecrets)} while it moves over).",
                    [nameof(Receivers)]);
            }

            if ((receiver.PreviousSigningSecrets ?? []).Any(IsTooShort))
            {
                yield return new ValidationResult(
                    $"Each of {setting}:{nameof(WebhookReceiverOptions.PreviousSigningSecrets)} must be at least {MinSecretLength} characters long.", [nameof(Receivers)]);
            }

            foreach (var padded in Padded(setting, receiver.SigningSecret, receiver.PreviousSigningSecrets ?? []))
            {
                yield return padded;
            }
        }
    }

    /// <summary>
    /// Refuses each of <paramref name="current"/> and <paramref name="previous"/> (the <c>SigningSecret</c> and
    /// <c>PreviousSigningSecrets</c> under <paramref name="owner"/>: the shared ones, or a receiver's) with whitespace at
    /// either end, naming its setting. A secret taken from a file keeps its last newline (<c>kubectl create secret
    /// --from-file</c>); the worker signed with it, receivers verified with the secret as written, and every delivery
    /// failed verification (a 400 or 401, so <c>_error</c>) after a start that looked fine. Not trimmed: a receiver
    /// that does hold the padded secret would then fail instead.
    /// </summary>
    private static IEnumerable<ValidationResult> Padded(string owner, string? current, string[] previous)
    {
        var named = previous.Select((secret, i) => (Name: $"{owner}:{nameof(PreviousSigningSecrets)}:{i}", Secret: (string?)secret))
            .Prepend(($"{owner}:{nameof(SigningSecret)}", current));
        foreach (var (name, secret) in named)
        {
            if (secret is { Length: > 0 } && (char.IsWhiteSpace(secret[0]) || char.IsWhiteSpace(secret[^1])))
            {
                yield return new ValidationResult(
                    $"{name} begins or ends with whitespace (a secret file's last newline?): deliveries would be signed with it, and receivers holding the secret without it would refuse every one.",
                    [nameof(SigningSecret)]);
            }
        }
    }

    /// <summary>Missing or shorter than <see cref="MinSecretLength"/>: the one rule for every secret, shared or a receiver's, current or previous.</summary>
    private static bool IsTooShort(string? secret) => secret is null || secret.Length < MinSecretLength;
}
