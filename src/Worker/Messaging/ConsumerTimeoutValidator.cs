using System.ComponentModel.DataAnnotations;
using System.Globalization;
using Conveyor.ServiceDefaults;
using Conveyor.Worker.Payments;
using Conveyor.Worker.Reports;
using Conveyor.Worker.Webhooks;
using Microsoft.Extensions.Options;

namespace Conveyor.Worker.Messaging;

/// <summary>
/// Refuses an endpoint whose in-memory retries could hold a delivery unacked for
/// <c>RabbitMq:MaxRetryHoldPercent</c> of <c>RabbitMq:ConsumerTimeoutSeconds</c> or more (see
/// <see cref="UnackedHold"/>): RabbitMQ would close the channel mid-retry, cancelling every handling on
/// it, and deliver the message again, to be retried as long again, round after round. Refuses a
/// long-job endpoint (the lease inbox) that prefetches more than it runs at once.
/// </summary>
public sealed class ConsumerTimeoutValidator(
    IOptions<RabbitMqOptions> rabbitMq,
    IOptions<PaymentGatewayOptions> gateway,
    IOptions<WebhookOptions> webhooks) : IValidateOptions<ConsumerEndpointOptions>
{
    public ValidateOptionsResult Validate(string? name, ConsumerEndpointOptions options)
    {
        var broker = rabbitMq.Value;
        if (broker.ConsumerTimeoutSeconds == 0 || name is null)
        {
            return ValidateOptionsResult.Success;
        }

        // A setting out of its range (a limit of 0 would divide by zero below) is the range check's
        // to report, by name.
        if (!Validator.TryValidateObject(options, new ValidationContext(options), null, validateAllProperties: true))
        {
            return ValidateOptionsResult.Skip;
        }

        if (name == GenerateReportConsumerDefinition.ConsumerName && options.PrefetchCount > options.ConcurrentMessageLimit)
        {
            // The lease inbox stops a run by how long its delivery has been unacked (DeliveryDeadline), but it
            // can only count from when the delivery was handed to it: one prefetched beyond the concurrency
            // limit waits unacked inside the client first, unseen, and its run would still get the whole
            // deadline; the broker then closes the channel mid-run and the report starts over, forever.
            var endpoint = $"{ConsumerEndpointOptions.SectionName}:{name}";
            return ValidateOptionsResult.Fail(
                $"{endpoint}:PrefetchCount ({options.PrefetchCount}) must not exceed {endpoint}:ConcurrentMessageLimit ({options.ConcurrentMessageLimit}) " +
                $"while RabbitMq:ConsumerTimeoutSeconds is set ({broker.ConsumerTimeoutSeconds} s): a report prefetched beyond the limit waits unacked " +
                "for the runs ahead of it, which its own run's stop before RabbitMQ's consumer_timeout cannot see. " +
                $"Set {endpoint}:PrefetchCount to at most {options.ConcurrentMessageLimit}.");
        }

        var (attemptTimeout, bySetting) = AttemptTimeout(name);
        var hold = UnackedHold.Of(options, attemptTimeout);
        var limit = TimeSpan.FromSeconds(broker.ConsumerTimeoutSeconds * (long)broker.MaxRetryHoldPercent / 100.0);
        if (hold.Total < limit)
        {
            return ValidateOptionsResult.Success;
        }

        var section = $"{ConsumerEndpointOptions.SectionName}:{name}";
        return ValidateOptionsResult.Fail(
            $"{section}: in-memory retries can hold a delivery unacked for up to {Seconds(hold.Total)}, which reaches " +
            $"RabbitMq:MaxRetryHoldPercent ({broker.MaxRetryHoldPercent} %) of RabbitMq:ConsumerTimeoutSeconds ({broker.ConsumerTimeoutSeconds} s): {Seconds(limit)}. " +
            "RabbitMQ would close the channel mid-retry and deliver the message again, to be retried as long again. " +
            $"The {Seconds(hold.Total)} are {hold.Handlings} handling(s) ({section}:PrefetchCount {options.PrefetchCount} / ConcurrentMessageLimit {options.ConcurrentMessageLimit}, " +
            $"rounded up: a prefetched delivery waits for those ahead of it) of up to {Seconds(hold.Handling)} each: " +
            $"{hold.Attempts} attempt(s) (RetryLimit {options.RetryLimit} + 1) × {Seconds(attemptTimeout)} ({bySetting}) " +
            $"+ {Seconds(hold.RetryWaits)} of waits between them (RetryMinIntervalMilliseconds {options.RetryMinIntervalMilliseconds} doubled per retry, " +
            $"capped at RetryMaxIntervalMilliseconds {options.RetryMaxIntervalMilliseconds}, plus up to RetryIntervalDeltaMilliseconds {options.RetryIntervalDeltaMilliseconds} each). " +
            "Lower these settings, or raise the broker's consumer_timeout and RabbitMq:ConsumerTimeoutSeconds with it.");
    }

    /// <summary>The longest one attempt of <paramref name="consumerName"/> takes, and the setting that says so.</summary>
    private (TimeSpan Timeout, string BySetting) AttemptTimeout(string consumerName) => consumerName switch
    {
        ChargePaymentConsumerDefinition.ConsumerName when !string.IsNullOrWhiteSpace(gateway.Value.BaseUrl) =>
            (TimeSpan.FromSeconds(gateway.Value.TimeoutSeconds), $"{PaymentGatewayOptions.SectionName}:TimeoutSeconds"),
        ChargePaymentConsumerDefinition.ConsumerName => (TimeSpan.Zero, "the simulated gateway makes no HTTP call"),
        DeliverWebhookConsumerDefinition.ConsumerName =>
            (TimeSpan.FromSeconds(webhooks.Value.TimeoutSeconds), $"{WebhookOptions.SectionName}:TimeoutSeconds"),
        _ => (TimeSpan.Zero, "no setting bounds an attempt"),
    };

    private static string Seconds(TimeSpan time) => string.Create(CultureInfo.InvariantCulture, $"{time.TotalSeconds:0.###} s");
}
