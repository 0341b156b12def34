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

    private static ConsumerTimeoutValidator Validator(RabbitMqOptions broker) =>
        new(Options.Create(broker), Options.Create(new PaymentGatewayOptions()), Options.Create(new WebhookOptions()));
}
