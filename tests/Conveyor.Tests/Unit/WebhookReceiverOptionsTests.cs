using System.ComponentModel.DataAnnotations;
using Conveyor.Worker.Failures;
using Conveyor.Worker.Webhooks;
using Microsoft.Extensions.Options;

namespace Conveyor.Tests.Unit;

/// <summary>
/// <c>Webhooks:Receivers</c> is checked at start, each error naming the entry's setting, and a delivery
/// URL finds its receiver by origin however either is spelt.
/// </summary>
public sealed class WebhookReceiverOptionsTests
{
    private const string Shared = "shared-signing-secret-0123456789";
    private const string Own = "receiver-a-secret-0123456789";

    [Fact]
    public void Receivers_with_readable_origins_and_long_secrets_are_accepted()
    {
        var errors = Errors(
            Receiver("https://hooks.example.com", Own, "receiver-a-old-secret-0123"),
            Receiver("HTTP://Hooks.Example.com:8080/", "receiver-b-secret-0123456789"),
            Receiver("https://[2001:db8::1]", "receiver-c-secret-0123456789", Shared));

        Assert.Empty(errors);
    }

    [Theory]
    [InlineData("", "Webhooks:Receivers:1:Origin is required")]
    [InlineData("hooks.example.com", "Webhooks:Receivers:1:Origin 'hooks.example.com' is not an absolute http or https URL")]
    [InlineData("ftp://hooks.example.com", "Webhooks:Receivers:1:Origin 'ftp://hooks.example.com' is not an absolute http or https URL")]
    [InlineData("https://hooks.example.com/customer-b", "Webhooks:Receivers:1:Origin 'https://hooks.example.com/customer-b' has a path, query or fragment")]
    [InlineData("https://hooks.example.com?customer=b", "has a path, query or fragment")]
    [InlineData("https://hooks.example.com/#b", "has a path, query or fragment")]
    [InlineData("https://user:pass@hooks.example.com", "Webhooks:Receivers:1:Origin 'https://user:pass@hooks.example.com' has user information")]
    // The same origin as entry 0 (https://a.example.com), spelt otherwise.
    [InlineData("HTTPS://A.Example.COM:443/", "Webhooks:Receivers:1:Origin is https://a.example.com:443, as Webhooks:Receivers:0:Origin")]
    public void A_bad_or_repeated_origin_is_refused_naming_its_setting(string origin, string expected)
    {
        var errors = Errors(Receiver("https://a.example.com", Own), Receiver(origin, "receiver-b-secret-0123456789"));

        var error = Assert.Single(errors);
        Assert.Contains(expected, error, StringComparison.Ordinal);
    }

    [Fact]
    public void Short_missing_or_shared_receiver_secrets_are_refused_naming_their_settings()
    {
        var errors = Errors(
            Receiver("https://a.example.com", "too-short"),
            Receiver("https://b.example.com", ""),
            Receiver("https://c.example.com", Own, "too-short"),
            Receiver("https://d.example.com", Shared));

        Assert.Collection(
            errors,
            e => Assert.StartsWith("Webhooks:Receivers:0:SigningSecret is required and must be at least 16 characters long", e, StringComparison.Ordinal),
            e => Assert.StartsWith("Webhooks:Receivers:1:SigningSecret is required and must be at least 16 characters long", e, StringComparison.Ordinal),
            e => Assert.StartsWith("Each of Webhooks:Receivers:2:PreviousSigningSecrets must be at least 16 characters long", e, StringComparison.Ordinal),
            e => Assert.StartsWith("Webhooks:Receivers:3:SigningSecret is Webhooks:SigningSecret; a registered receiver needs a secret of its own", e, StringComparison.Ordinal));
    }

    /// <summary>
    /// A shared secret being rotated out is held by every unregistered receiver that has not switched yet, as the
    /// current one is: a registered receiver signed with it alone could be sent deliveries forged by any of them.
    /// </summary>
    [Fact]
    public void A_receiver_secret_that_is_a_previous_shared_secret_is_refused_naming_its_setting()
    {
        const string OldShared = "old-shared-signing-secret-0123";
        var options = new WebhookOptions
        {
            SigningSecret = Shared,
            PreviousSigningSecrets = [OldShared],
            Receivers = [Receiver("https://a.example.com", Own, OldShared), Receiver("https://b.example.com", OldShared)],
        };
        var results = new List<ValidationResult>();
        Validator.TryValidateObject(options, new ValidationContext(options), results, validateAllProperties: true);

        var error = Assert.Single(results).ErrorMessage;
        Assert.StartsWith("Webhooks:Receivers:1:SigningSecret is one of Webhooks:PreviousSigningSecrets; a registered receiver needs a secret of its own", error, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("https://hooks.example.com/customers/7/events?x=1", true)]
    [InlineData("https://HOOKS.example.com:443/", true)]
    [InlineData("https://hooks.example.com./", true)]
    [InlineData("https://hooks.example.com:8443/", false)]
    [InlineData("http://hooks.example.com/", false)]
    [InlineData("https://other.example.com/", false)]
    [InlineData("https://hooks.example.com.evil.example/", false)]
    public void A_delivery_is_signed_with_its_receivers_secrets_only_when_its_origin_is_registered(string url, bool registered)
    {
        var keys = new WebhookSigningKeys(Options.Create(new WebhookOptions
        {
            SigningSecret = Shared,
            Receivers = [Receiver("https://hooks.example.com", Own, "receiver-a-old-secret-0123")],
        }));

        Assert.Equal(registered ? [Own, "receiver-a-old-secret-0123"] : [Shared], keys.For(new Uri(url)));
    }

    [Fact]
    public void An_international_host_is_one_origin_in_either_spelling()
    {
        var keys = new WebhookSigningKeys(Options.Create(new WebhookOptions
        {
            SigningSecret = Shared,
            Receivers = [Receiver("https://bücher.example", Own)],
        }));

        Assert.Equal([Own], keys.For(new Uri("https://xn--bcher-kva.example/hooks")));
    }

    [Fact]
    public void When_registration_is_required_an_unregistered_origin_is_refused_permanently_naming_it_and_the_setting()
    {
        var keys = new WebhookSigningKeys(Options.Create(new WebhookOptions
        {
            SigningSecret = Shared,
            Receivers = [Receiver("https://hooks.example.com", Own)],
            RequireRegisteredReceivers = true,
        }));

        Assert.Equal([Own], keys.For(new Uri("https://hooks.example.com/a")));
        var refused = Assert.Throws<PermanentFailureException>(() => keys.For(new Uri("https://other.example.com/a")));
        Assert.Contains("https://other.example.com:443", refused.Message, StringComparison.Ordinal);
        Assert.Contains("Webhooks:RequireRegisteredReceivers", refused.Message, StringComparison.Ordinal);
    }

    /// <summary>
    /// A secret taken from a file keeps the file's last newline (<c>kubectl create secret --from-file</c>): signed with
    /// it, every delivery failed verification at receivers that hold the secret as written, and the worker had started.
    /// </summary>
    [Theory]
    [InlineData("shared", "Webhooks:SigningSecret")]
    [InlineData("previous", "Webhooks:PreviousSigningSecrets:0")]
    [InlineData("receiver", "Webhooks:Receivers:0:SigningSecret")]
    [InlineData("receiver-previous", "Webhooks:Receivers:0:PreviousSigningSecrets:1")]
    public void A_secret_with_whitespace_at_an_end_is_refused_naming_its_setting(string which, string setting)
    {
        const string Padded = "padded-signing-secret-0123456789\n";
        var options = new WebhookOptions
        {
            SigningSecret = which == "shared" ? Padded : Shared,
            PreviousSigningSecrets = which == "previous" ? [" " + Padded.Trim()] : [],
            Receivers = [Receiver("https://a.example.com", which == "receiver" ? Padded + "\r" : Own, which == "receiver-previous" ? [Shared, Padded] : [])],
        };
        var results = new List<ValidationResult>();
        Validator.TryValidateObject(options, new ValidationContext(options), results, validateAllProperties: true);

        var error = Assert.Single(results).ErrorMessage;
        Assert.StartsWith($"{setting} begins or ends with whitespace", error, StringComparison.Ordinal);
    }

    private static WebhookReceiverOptions Receiver(string origin, string secret, params string[] previous) =>
        new() { Origin = origin, SigningSecret = secret, PreviousSigningSecrets = previous };

    private static List<string> Errors(params WebhookReceiverOptions[] receivers)
    {
        var options = new WebhookOptions { SigningSecret = Shared, Receivers = receivers };
        var results = new List<ValidationResult>();
        Validator.TryValidateObject(options, new ValidationContext(options), results, validateAllProperties: true);
        return [.. results.Select(r => r.ErrorMessage ?? "")];
    }
}
