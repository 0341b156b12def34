using System.ComponentModel.DataAnnotations;
using Conveyor.Worker.Webhooks;

namespace Conveyor.Tests.Unit;

/// <summary>
/// <c>Webhooks:MaxConcurrentPerOrigin</c> and <c>Webhooks:MaxOriginDeferrals</c> are checked at start, each
/// error naming its setting, and the wait of a delivery set aside for its origin's limit stays within bounds.
/// </summary>
public sealed class WebhookOriginLimitOptionsTests
{
    private const string Shared = "shared-signing-secret-0123456789";

    [Fact]
    public void The_defaults_leave_most_of_the_endpoints_slots_to_other_origins()
    {
        var options = new WebhookOptions { SigningSecret = Shared };

        Assert.Empty(Errors(options));
        // Consumers:DeliverWebhook:ConcurrentMessageLimit is 16 in appsettings.json.
        Assert.Equal(4, options.MaxConcurrentPerOrigin);
        Assert.Equal(12, options.MaxOriginDeferrals);
    }

    [Theory]
    [InlineData(0)]
    [InlineData(-1)]
    [InlineData(1_001)]
    public void A_per_origin_limit_out_of_range_is_refused_naming_its_setting(int limit)
    {
        var error = Assert.Single(Errors(new WebhookOptions { SigningSecret = Shared, MaxConcurrentPerOrigin = limit }));

        Assert.Contains(nameof(WebhookOptions.MaxConcurrentPerOrigin), error, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(-1)]
    [InlineData(1_001)]
    public void A_deferral_cap_out_of_range_is_refused_naming_its_setting(int deferrals)
    {
        var error = Assert.Single(Errors(new WebhookOptions { SigningSecret = Shared, MaxOriginDeferrals = deferrals }));

        Assert.Contains(nameof(WebhookOptions.MaxOriginDeferrals), error, StringComparison.Ordinal);
    }

    [Fact]
    public void A_deferral_cap_of_zero_turns_the_limit_off_and_is_accepted()
    {
        Assert.Empty(Errors(new WebhookOptions { SigningSecret = Shared, MaxOriginDeferrals = 0 }));
    }

    [Theory]
    [InlineData(1, 250, 500)]
    [InlineData(2, 500, 1_000)]
    [InlineData(6, 8_000, 16_000)]
    [InlineData(7, 15_000, 30_000)]
    [InlineData(1_000, 15_000, 30_000)]
    public void A_set_aside_delivery_waits_between_half_and_all_of_a_doubling_wait_capped_at_thirty_seconds(int deferral, int fromMs, int toMs)
    {
        for (var i = 0; i < 200; i++)
        {
            var wait = WebhookOriginLimitFilter.DeferralWait(deferral);
            Assert.InRange(wait.TotalMilliseconds, fromMs, toMs);
        }
    }

    /// <summary>
    /// A host's final dot names the same host (the root), as <c>Webhooks:Receivers</c> compares origins: a
    /// submitter writing the receiver's URLs both ways got twice its limit, the slots of each spelling.
    /// </summary>
    [Theory]
    [InlineData("https://hooks.example.com./a", "https://hooks.example.com/b")]
    [InlineData("https://HOOKS.example.com.:443/a", "https://hooks.example.com/b")]
    [InlineData("http://hooks.example.com.:8080/a?b=c", "http://hooks.example.com:8080/")]
    public void A_final_dot_on_the_host_is_the_same_origin_for_the_limit(string dotted, string plain)
    {
        Assert.Equal(WebhookOriginSlots.OriginOf(new Uri(plain)), WebhookOriginSlots.OriginOf(new Uri(dotted)));
        Assert.NotEqual(WebhookOriginSlots.OriginOf(new Uri("https://hooks.example.com/")), WebhookOriginSlots.OriginOf(new Uri("http://hooks.example.com/")));
    }

    private static List<string> Errors(WebhookOptions options)
    {
        var results = new List<ValidationResult>();
        Validator.TryValidateObject(options, new ValidationContext(options), results, validateAllProperties: true);
        return [.. results.Select(r => r.ErrorMessage ?? "")];
    }
}
