using Conveyor.ServiceDefaults;
using Conveyor.Worker.Messaging;
using Conveyor.Worker.Payments;
using Conveyor.Worker.Reports;
using Conveyor.Worker.Webhooks;
using Microsoft.Extensions.Options;

namespace Conveyor.Tests.Unit;

/// <summary>The start-up check of endpoint settings against RabbitMQ's consumer_timeout, over the whole range it allows.</summary>
public sealed class ConsumerTimeoutValidatorTests
{
    [Theory]
    [InlineData(1_800)]
    [InlineData(31_536_000)]
    public void The_default_retries_pass_against_any_consumer_timeout_up_to_a_year(int consumerTimeoutSeconds)
    {
        var validator = Validator(new RabbitMqOptions { ConsumerTimeoutSeconds = consumerTimeoutSeconds, MaxRetryHoldPercent = 100 });

        // 31,536,000 s × 100 % overflowed an int: a negative limit refused every endpoint.
        var result = validator.Validate(DeliverWebhookConsumerDefinition.ConsumerName, new ConsumerEndpointOptions());

        Assert.True(result.Succeeded, result.FailureMessage);
    }

    [Theory]
    [InlineData(1_800, false)]
    // No consumer_timeout: no deadline a prefetched report's wait could eat into (README, Consumers:<Name>:PrefetchCount).
    [InlineData(0, true)]
    public void A_report_prefetched_beyond_the_concurrency_limit_is_refused_only_with_a_consumer_timeout(int consumerTimeoutSeconds, bool accepted)
    {
        var validator = Validator(new RabbitMqOptions { ConsumerTimeoutSeconds = consumerTimeoutSeconds });

        var result = validator.Validate(GenerateReportConsumerDefinition.ConsumerName, new ConsumerEndpointOptions { PrefetchCount = 2, ConcurrentMessageLimit = 1 });

        Assert.Equal(accepted, result.Succeeded);
    }

    [Theory]
    [InlineData(5, 3, 1_800, false)]
    // 540 parks of at least two thirds of 5 s each: 1,800 s, the consumer timeout itself.
    [InlineData(5, 540, 1_800, true)]
    [InlineData(5, 539, 1_800, false)]
    [InlineData(900, 3, 1_800, true)]
    [InlineData(899, 3, 1_800, false)]
    // No consumer_timeout: nothing bounds a run, and giving up on one that never ends is what the limit is for.
    [InlineData(5, 3, 0, true)]
    public void A_report_endpoint_whose_copies_would_give_up_on_a_lease_within_the_consumer_timeout_is_refused(
        int leaseSeconds, int maxLeaseDeferrals, int consumerTimeoutSeconds, bool accepted)
    {
        var validator = Validator(new RabbitMqOptions { ConsumerTimeoutSeconds = consumerTimeoutSeconds });

        var result = validator.Validate(GenerateReportConsumerDefinition.ConsumerName, Report(leaseSeconds, maxLeaseDeferrals));

        Assert.True(accepted == result.Succeeded, result.FailureMessage);
    }

    [Theory]
    [InlineData(1_800, true)]
    // 100 parks of at least 40 s: 4,000 s.
    [InlineData(4_000, true)]
    [InlineData(4_001, false)]
    public void The_default_lease_and_deferrals_cover_a_consumer_timeout_of_up_to_4000_s(int consumerTimeoutSeconds, bool accepted)
    {
        var defaults = new ConsumerEndpointOptions();
        var validator = Validator(new RabbitMqOptions { ConsumerTimeoutSeconds = consumerTimeoutSeconds });

        var result = validator.Validate(GenerateReportConsumerDefinition.ConsumerName, Report(defaults.LeaseSeconds, defaults.MaxLeaseDeferrals));

        Assert.True(accepted == result.Succeeded, result.FailureMessage);
    }

    [Fact]
    public void A_refused_lease_names_the_settings_their_values_and_what_would_pass()
    {
        var validator = Validator(new RabbitMqOptions { ConsumerTimeoutSeconds = 1_800 });

        var result = validator.Validate(GenerateReportConsumerDefinition.ConsumerName, Report(leaseSeconds: 5, maxLeaseDeferrals: 3));

        Assert.True(result.Failed);
        Assert.Contains("Consumers:GenerateReport:MaxLeaseDeferrals (3)", result.FailureMessage, StringComparison.Ordinal);
        Assert.Contains("Consumers:GenerateReport:LeaseSeconds (5 s)", result.FailureMessage, StringComparison.Ordinal);
        Assert.Contains("RabbitMq:ConsumerTimeoutSeconds (1800 s)", result.FailureMessage, StringComparison.Ordinal);
        Assert.Contains("set Consumers:GenerateReport:MaxLeaseDeferrals to at least 540, or Consumers:GenerateReport:LeaseSeconds to at least 900", result.FailureMessage, StringComparison.Ordinal);
    }

    [Fact]
    public void A_consumer_timeout_of_a_year_is_met_only_by_raising_both_and_the_refusal_says_so()
    {
        var validator = Validator(new RabbitMqOptions { ConsumerTimeoutSeconds = 31_536_000 });

        var refused = validator.Validate(GenerateReportConsumerDefinition.ConsumerName, Report(leaseSeconds: 60, maxLeaseDeferrals: 100));
        var accepted = validator.Validate(GenerateReportConsumerDefinition.ConsumerName, Report(leaseSeconds: 3_600, maxLeaseDeferrals: 13_140));

        // Neither alone can reach 47,304,000 within its range (MaxLeaseDeferrals 100000, LeaseSeconds 3600).
        Assert.Contains("set Consumers:GenerateReport:LeaseSeconds to 3600 and Consumers:GenerateReport:MaxLeaseDeferrals to at least 13140", refused.FailureMessage, StringComparison.Ordinal);
        Assert.True(accepted.Succeeded, accepted.FailureMessage);
    }

    [Fact]
    public void Only_the_lease_inbox_endpoint_is_checked_for_lease_deferrals()
    {
        var validator = Validator(new RabbitMqOptions { ConsumerTimeoutSeconds = 1_800 });

        var result = validator.Validate(DeliverWebhookConsumerDefinition.ConsumerName, new ConsumerEndpointOptions { LeaseSeconds = 5, MaxLeaseDeferrals = 3 });

        Assert.True(result.Succeeded, result.FailureMessage);
    }

    /// <summary>A report endpoint as shipped (one delivery at a time) with the lease settings given.</summary>
    private static ConsumerEndpointOptions Report(int leaseSeconds, int maxLeaseDeferrals) => new()
    {
        PrefetchCount = 1,
        ConcurrentMessageLimit = 1,
        LeaseSeconds = leaseSeconds,
        MaxLeaseDeferrals = maxLeaseDeferrals,
    };

    private static ConsumerTimeoutValidator Validator(RabbitMqOptions broker) =>
        new(Options.Create(broker), Options.Create(new PaymentGatewayOptions()), Options.Create(new WebhookOptions()));
}
