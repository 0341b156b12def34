using System.Globalization;
using System.Security.Cryptography;
using Conveyor.Contracts.Webhooks;
using Conveyor.Storage;
using Conveyor.Worker.Failures;
using Conveyor.Worker.Inbox;
using Conveyor.Worker.Jobs;
using Conveyor.Worker.Redelivery;
using MassTransit;

namespace Conveyor.Worker.Webhooks;

/// <summary>
/// Keeps one slow receiver from holding back every other receiver's webhooks. A delivery takes a slot of its
/// URL's origin for as long as it runs, retries included, counted by this worker (<see cref="WebhookOriginSlots"/>)
/// and by every worker together (<see cref="WebhookOriginLeases"/>); when the origin has
/// <see cref="WebhookOptions.MaxConcurrentPerOrigin"/> in flight, the delivery is set aside instead of
/// waiting in one of the endpoint's slots: a copy is stored (the redelivery store, due after a jittered wait
/// that doubles each time, up to <see cref="MaxDeferralWait"/>) and the message is acked, as a lease deferral
/// is. The copy keeps the message's id and headers, so it comes back as the same command with its retry
/// budget as it was: no attempt is counted (the inbox has not claimed it) and its job stays as it was
/// (<c>queued</c>). Stored before the ack, a crash in between leaves a duplicate, which the inbox absorbs.
/// After <see cref="WebhookOptions.MaxOriginDeferrals"/> times aside (<see cref="RedeliveryHeaders.OriginDeferrals"/>)
/// a delivery goes ahead over the limit, and so does one whose copy could not be stored: the limit shares
/// out the receiver's capacity, it never loses or strands a webhook. Over the limit, a delivery gets one try
/// (no in-memory retries; a transient failure goes to the delayed redelivery at once, if one may follow), so a
/// failing receiver's deliveries over its limit do not keep endpoint slots through retry waits; and the count
/// is of one attempt's times aside: a copy stored for any other reason (a retry, an error-queue move) starts
/// from none. The count counts only when the worker sealed it (<see cref="RedeliverySeal.ReadOriginDeferrals"/>):
/// a producer's own would take its delivery past the limit at once. When the seal cannot be checked (the key
/// ring unreadable) the count is unknown, and a delivery whose origin is at its limit goes ahead over it, as one
/// whose copy cannot be stored does. When the database cannot count the
/// workers' slots, this worker's count alone applies.
/// </summary>
public sealed partial class WebhookOriginLimitFilter(
    WebhookOriginSlots slots, WebhookOriginLeases leases, RedeliveryStore store, RedeliverySeal seal, JobDescriptor<DeliverWebhook> descriptor,
    JobMetrics metrics, WebhookOptions options, ILogger logger) : IFilter<ConsumeContext>
{
    /// <summary>The longest a delivery is set aside at a time.</summary>
    public static readonly TimeSpan MaxDeferralWait = TimeSpan.FromSeconds(30);

    /// <summary>The first time aside: about half a second, doubled each time after.</summary>
    private static readonly TimeSpan FirstDeferralWait = TimeSpan.FromMilliseconds(500);

    public async Task Send(ConsumeContext context, IPipe<ConsumeContext> next)
    {
        if (options.MaxOriginDeferrals == 0 || UrlOf(context) is not { } delivery)
        {
            // A command that cannot be read goes on to the pipeline that refuses it.
            await next.Send(context);
            return;
        }

        var origin = WebhookOriginSlots.OriginOf(delivery.Url);
        var deferrals = DeferralsOf(delivery.Context);
        var overLimit = deferrals >= options.MaxOriginDeferrals;
        // Not the delivery's token: the wait is bounded (WebhookOriginLeases.AnswerTimeout), and a stop while it waits
        // is met by the pipeline after it, as for a delivery that never waited.
        var lease = overLimit ? null : await TakeAsync(origin);
        if (lease is null)
        {
            if (!overLimit && deferrals is { } count && await SetAsideAsync(delivery.Context, origin, count + 1))
            {
                return;
            }

            slots.TryTake(origin, options.MaxConcurrentPerOrigin, overLimit: true);
            // Over the limit, it takes one try: a receiver that fails it does not keep an endpoint slot through retry waits.
            context.GetOrAddPayload(() => new InMemoryRetriesWaived());
        }

        try
        {
            await next.Send(context);
        }
        finally
        {
            if (lease is { } held)
            {
                leases.Release(held);
            }

            slots.Release(origin);
        }
    }

    public void Probe(ProbeContext context) => context.CreateFilterScope("conveyor-webhook-origin-limit");

    /// <summary>
    /// A slot of <paramref name="origin"/> by this worker's count (first: no round trip when this worker alone fills
    /// the origin) and by the workers' together; null, nothing taken, when either is full. The second may be
    /// <see cref="OriginLease.Unknown"/>: the delivery then goes by this worker's count alone.
    /// </summary>
    private async Task<OriginLease?> TakeAsync(string origin)
    {
        if (!slots.TryTake(origin, options.MaxConcurrentPerOrigin))
        {
            return null;
        }

        var lease = await leases.TryTakeAsync(origin, options.MaxConcurrentPerOrigin);
        if (lease.State == OriginLeaseState.Full)
        {
            slots.Release(origin);
            return null;
        }

        return lease;
    }

    /// <summary>
    /// How many times the delivery was set aside in this attempt, as far as its seal vouches (0 for a producer's own
    /// count); null when the seal could not be checked.
    /// </summary>
    private int? DeferralsOf(ConsumeContext<DeliverWebhook> context)
    {
        try
        {
            return seal.ReadOriginDeferrals(context.ReceiveContext, InboxKeys.ConsumerIdOf(context), descriptor.BusinessKey(context.Message));
        }
        catch (Exception exception) when (DatabaseFailures.IsDatabaseError(exception))
        {
            LogDeferralsUnchecked(logger, exception, InboxKeys.ConsumerIdOf(context), context.Message.WebhookId);
            return null;
        }
    }

    /// <summary>How long a delivery set aside for the <paramref name="deferral"/>th time waits: jittered between half and all of a doubling wait.</summary>
    public static TimeSpan DeferralWait(int deferral)
    {
        var full = Math.Min(MaxDeferralWait.TotalMilliseconds, FirstDeferralWait.TotalMilliseconds * Math.Pow(2, Math.Min(deferral - 1, 16)));
        return TimeSpan.FromMilliseconds(full * (0.5 + (Random.Shared.NextDouble() / 2)));
    }

    private static (ConsumeContext<DeliverWebhook> Context, Uri Url)? UrlOf(ConsumeContext context)
    {
        try
        {
            return context.TryGetMessage<DeliverWebhook>(out var typed) && typed.Message.Url is { IsAbsoluteUri: true } url ? (typed, url) : null;
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            return null;
        }
    }

    /// <summary>Stores the copy and settles the message; false when the copy could not be stored (the delivery then goes ahead).</summary>
    private async Task<bool> SetAsideAsync(ConsumeContext<DeliverWebhook> context, string origin, int deferral)
    {
        var consumerId = InboxKeys.ConsumerIdOf(context);
        // One stored copy per message and time aside: the broker's redelivery of this very message is the same
        // row, while another message of the webhook (a second publish, a corrected command) is stored beside it.
        var copy = context.MessageId?.ToString("N") ?? Convert.ToHexString(SHA256.HashData(context.ReceiveContext.Body.GetBytes()));
        DateTimeOffset dueAt;
        try
        {
            // Sealed here, inside the try: a key ring that cannot be read leaves the delivery going ahead, as a store that fails does.
            var headers = new Dictionary<string, string>
            {
                [RedeliveryHeaders.OriginDeferrals] = deferral.ToString(CultureInfo.InvariantCulture),
                [RedeliverySeal.OriginDeferralsHeader] = seal.SealOriginDeferrals(consumerId, descriptor.BusinessKey(context.Message), deferral),
            };
            dueAt = await store.ScheduleAsync(context.ReceiveContext, context.MessageId, consumerId,
                $"{consumerId}:origin-deferred:{copy}:{deferral}", 0, DeferralWait(deferral), headers, CancellationToken.None);
        }
        catch (Exception exception) when (exception is not OutOfMemoryException)
        {
            LogNotSetAside(logger, exception, consumerId, context.Message.WebhookId, origin);
            return false;
        }

        LogSetAside(logger, consumerId, context.Message.WebhookId, origin, options.MaxConcurrentPerOrigin, deferral, dueAt);
        metrics.WebhookSetAside();
        await SettledByInbox.NotifyAsync(context, consumerId);
        return true;
    }

    [LoggerMessage(Level = LogLevel.Debug, Message = "{ConsumerId} webhook {WebhookId}: {Origin} has its {Limit} deliveries in flight; set aside ({Deferral}), back at {DueAt:O}")]
    private static partial void LogSetAside(ILogger logger, string consumerId, Guid webhookId, string origin, int limit, int deferral, DateTimeOffset dueAt);

    [LoggerMessage(Level = LogLevel.Warning, Message = "{ConsumerId} webhook {WebhookId}: could not be set aside while {Origin} is at its limit; delivered over it")]
    private static partial void LogNotSetAside(ILogger logger, Exception exception, string consumerId, Guid webhookId, string origin);

    [LoggerMessage(Level = LogLevel.Warning, Message = "{ConsumerId} webhook {WebhookId}: the seal of its count of times aside could not be checked (the key ring is read " +
        "from the database); delivered over its origin's limit if the origin is at it")]
    private static partial void LogDeferralsUnchecked(ILogger logger, Exception exception, string consumerId, Guid webhookId);
}
