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
/// long-job endpoint (the lease inbox) that prefetches more than it runs at once, or whose copies parked
/// behind another run's lease could give up on it (<see cref="ConsumerEndpointOptions.MaxLeaseDeferrals"/>)
/// before the consumer timeout would end that run. Checks nothing when the broker has no consumer_timeout.
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

        if (name == GenerateReportConsumerDefinition.ConsumerName && TooFewLeaseDeferrals(name, options, broker.ConsumerTimeoutSeconds) is { } tooFew)
        {
            return ValidateOptionsResult.Fail(tooFew);
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

    /// <summary>
    /// Why a copy that meets another run's live lease could give up on that run while it is still within its time, or
    /// null when it cannot. Such a copy is parked until the lease would lapse (<see cref="Inbox.LeaseInboxFilter{T}"/>):
    /// the time the lease has left, which the run renews every third of <c>LeaseSeconds</c>, so at least two thirds of
    /// it, plus 0.25 to 1.5 s of jitter (left out here, a margin for a late renewal). After <c>MaxLeaseDeferrals</c>
    /// parks it goes to <c>_error</c> unrun. A run holds its delivery, and so its lease, until it ends or its delivery
    /// nears the consumer timeout (<see cref="DeliveryDeadline"/>): the parks must last that long, that is
    /// MaxLeaseDeferrals × LeaseSeconds × 2/3 ≥ ConsumerTimeoutSeconds, compared in whole numbers as
    /// 2 × MaxLeaseDeferrals × LeaseSeconds ≥ 3 × ConsumerTimeoutSeconds.
    /// </summary>
    private static string? TooFewLeaseDeferrals(string consumerName, ConsumerEndpointOptions options, int consumerTimeoutSeconds)
    {
        var needed = 3L * consumerTimeoutSeconds;
        if (2L * options.MaxLeaseDeferrals * options.LeaseSeconds >= needed)
        {
            return null;
        }

        var endpoint = $"{ConsumerEndpointOptions.SectionName}:{consumerName}";
        var maxDeferrals = $"{endpoint}:{nameof(ConsumerEndpointOptions.MaxLeaseDeferrals)}";
        var leaseSeconds = $"{endpoint}:{nameof(ConsumerEndpointOptions.LeaseSeconds)}";
        var park = TimeSpan.FromSeconds(options.LeaseSeconds * 2 / 3.0);
        var leastDeferrals = CeilingOf(needed, 2L * options.LeaseSeconds);
        var leastLease = CeilingOf(needed, 2L * options.MaxLeaseDeferrals);
        var remedies = new List<string>();
        if (leastDeferrals <= ConsumerEndpointOptions.MostLeaseDeferrals)
        {
            remedies.Add($"set {maxDeferrals} to at least {leastDeferrals}");
        }

        if (leastLease <= ConsumerEndpointOptions.MostLeaseSeconds)
        {
            remedies.Add($"{(remedies.Count == 0 ? "set " : "")}{leaseSeconds} to at least {leastLease} (a lease left by a worker that died is taken over only once it lapses)");
        }

        if (remedies.Count == 0)
        {
            remedies.Add($"set {leaseSeconds} to {ConsumerEndpointOptions.MostLeaseSeconds} and {maxDeferrals} to at least " +
                CeilingOf(needed, 2L * ConsumerEndpointOptions.MostLeaseSeconds).ToString(CultureInfo.InvariantCulture));
        }

        remedies.Add("lower RabbitMq:ConsumerTimeoutSeconds with the broker's consumer_timeout");
        return $"{maxDeferrals} ({options.MaxLeaseDeferrals}) parks of a copy behind another run's live lease may end after " +
            $"{Seconds(park * options.MaxLeaseDeferrals)} (each lasts at least two thirds of {leaseSeconds} ({options.LeaseSeconds} s), {Seconds(park)}: " +
            $"the run renews its lease every third of it), sooner than RabbitMq:ConsumerTimeoutSeconds ({consumerTimeoutSeconds} s), for which a run may " +
            "hold its delivery and its lease. A duplicate copy of a command would go to _error unrun (\"lease held by another worker\") while the run it " +
            $"waits for is still within its time. {nameof(ConsumerEndpointOptions.MaxLeaseDeferrals)} × {nameof(ConsumerEndpointOptions.LeaseSeconds)} must be at least " +
            $"1.5 × ConsumerTimeoutSeconds ({(needed / 2.0).ToString("0.#", CultureInfo.InvariantCulture)}): {string.Join(", or ", remedies)}.";
    }

    private static long CeilingOf(long dividend, long divisor) => (dividend + divisor - 1) / divisor;

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
