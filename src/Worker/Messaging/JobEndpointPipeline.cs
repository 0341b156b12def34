using Conveyor.ServiceDefaults;
using Conveyor.Worker.Failures;
using Conveyor.Worker.Inbox;
using Conveyor.Worker.Jobs;
using Conveyor.Worker.Redelivery;
using MassTransit;
using MassTransit.Middleware;
using MassTransit.Transports.Components;
using Microsoft.Extensions.Options;

namespace Conveyor.Worker.Messaging;

/// <summary>How a job's effect is made idempotent.</summary>
public enum InboxMode
{
    /// <summary>
    /// One transaction around the consumer (seconds); messages handled at the same time share it
    /// when <see cref="ConsumerEndpointOptions.InboxBatchSize"/> is above 1.
    /// </summary>
    Transaction,

    /// <summary>Lease + heartbeat, results committed at the end (minutes).</summary>
    Lease,
}

/// <summary>
/// The consume pipeline every job endpoint shares, outermost first: kill switch and rate limit,
/// job outcome (dead-lettering), size limits (body and headers), the endpoint's own admission (webhooks: a limit
/// per receiver origin), delayed redelivery, in-memory retry
/// (transient failures only), message scope + inbox, consumer. The error pipe adds Conveyor's headers to
/// <c>_error</c> copies; it and the dead-letter pipe keep every copy within a frame.
/// </summary>
public static class JobEndpointPipeline
{
    public static ConsumerEndpointOptions OptionsFor(IServiceProvider services, string consumerName) =>
        services.GetRequiredService<IOptionsMonitor<ConsumerEndpointOptions>>().Get(consumerName);

    public static void Configure<TMessage>(
        IReceiveEndpointConfigurator endpoint,
        IRegistrationContext context,
        string consumerName,
        InboxMode inbox = InboxMode.Transaction,
        IFilter<ConsumeContext>? admission = null)
        where TMessage : class
    {
        var options = OptionsFor(context, consumerName);
        var time = context.GetRequiredService<TimeProvider>();
        var tracker = context.GetRequiredService<JobTracker>();
        var metrics = context.GetRequiredService<JobMetrics>();
        var descriptor = context.GetRequiredService<JobDescriptor<TMessage>>();
        var logger = context.GetRequiredService<ILoggerFactory>().CreateLogger("Conveyor.Worker.Jobs");

        var rabbitMq = context.GetRequiredService<IOptions<RabbitMqOptions>>().Value;
        var queue = endpoint.InputAddress.AbsolutePath.Split('/')[^1];
        if (endpoint is IRabbitMqReceiveEndpointConfigurator rabbit)
        {
            if (rabbitMq.QuorumQueues)
            {
                rabbit.SetQuorumQueue();
                // Before anything consumes: what the existing job, _error and _skipped queues are.
                if (context.GetRequiredService<QueueModeProbe>().MayGuardQuorum(queue))
                {
                    foreach (var (name, value) in rabbitMq.QuorumGuard(queue))
                    {
                        rabbit.SetQueueArgument(name, value);
                    }
                }
            }
            else if (rabbitMq.LazyQueues)
            {
                if (context.GetRequiredService<QueueModeProbe>().MayDeclareLazy(queue))
                {
                    // Only ever true: false would declare x-queue-mode=default, which an existing queue
                    // without the argument refuses as well.
                    rabbit.Lazy = true;
                }
            }
        }

        endpoint.PrefetchCount = options.PrefetchCount;
        endpoint.ConcurrentMessageLimit = options.ConcurrentMessageLimit;

        var frameFit = new FrameFitFilter(logger);
        endpoint.ConfigureError(error =>
        {
            // The database is away: back to the queue, not to _error (see RedeliveryFilter).
            error.UseFilter(new RequeueFilter());
            error.UseFilter(new DeadLetterHeadersFilter(time, body => EnvelopeReader.CommandReadFailure<TMessage>(body.Span)));
            error.UseFilter(new GenerateFaultFilter());
            // A copy that would not fit in a frame would cost the worker its connection (see FrameFitFilter).
            error.UseFilter(frameFit);
            error.UseFilter(new ErrorTransportFilter());
        });
        endpoint.ConfigureDeadLetter(skipped =>
        {
            skipped.UseFilter(new SkippedReasonFilter());
            skipped.UseFilter(frameFit);
            skipped.UseFilter(new DeadLetterTransportFilter());
        });

        IConsumeObserver? killSwitch = null;
        if (options.KillSwitchTripPercent > 0)
        {
            // A downstream outage pauses the endpoint (messages wait in the queue) instead of
            // burning every message's attempts in seconds. MassTransit's kill switch counts only
            // faults that escape the consume pipe; the redelivery filter swallows transient ones
            // after storing them, so it reports those to the kill switch itself. An endpoint whose
            // messages go to many independent remote sides (webhooks) counts only the worker's own
            // outage: one failing receiver is no reason to stop delivering to the others.
            Func<Exception, bool> counts = options.KillSwitchCountsRemoteFailures ? FailureClassifier.IsTransient : FailureClassifier.IsWorkerOutage;
            var killSwitchOptions = new KillSwitchOptions()
                .SetActivationThreshold(options.KillSwitchActivationThreshold)
                .SetTripThreshold(options.KillSwitchTripPercent)
                .SetTrackingPeriod(TimeSpan.FromSeconds(options.KillSwitchTrackingPeriodSeconds))
                .SetRestartTimeout(TimeSpan.FromSeconds(options.KillSwitchRestartSeconds))
                .SetExceptionFilter(filter => filter.Handle<Exception>(counts));
            var endpointKillSwitch = new StopAwareKillSwitch(
                killSwitchOptions, queue, logger, context.GetRequiredService<IHostApplicationLifetime>().ApplicationStopping);
            endpoint.ConnectReceiveEndpointObserver(endpointKillSwitch);
            killSwitch = endpointKillSwitch;
        }

        if (options.RateLimitPerSecond > 0)
        {
            endpoint.UseRateLimit(options.RateLimitPerSecond, TimeSpan.FromSeconds(1));
        }

        endpoint.UseFilter(new JobOutcomeFilter<TMessage>(tracker, metrics, descriptor, logger));
        endpoint.UseFilter(new MessageSizeLimitFilter(options.MaxMessageBytes, options.MaxHeaderBytes));
        if (admission is not null)
        {
            // Before any attempt is counted: a message it sets aside has not been tried (WebhookOriginLimitFilter).
            endpoint.UseFilter(admission);
        }

        endpoint.UseFilter(new RedeliveryFilter<TMessage>(
            context.GetRequiredService<RedeliveryStore>(), context.GetRequiredService<RedeliverySeal>(), RedeliveryPolicy.From(options),
            tracker, metrics, descriptor, killSwitch, time, logger));

        endpoint.UseFilter(new TransientRetryFilter(RetryIntervals.From(options), time));

        // A scoped filter: it opens the message scope (one per attempt) that the consumer then shares.
        var inboxFilter = inbox switch
        {
            InboxMode.Lease => typeof(LeaseInboxFilter<>),
            _ when options.InboxBatchSize > 1 => typeof(BatchedInboxFilter<>),
            _ => typeof(InboxFilter<>),
        };
        endpoint.UseConsumeFilter(inboxFilter, context);
    }
}
