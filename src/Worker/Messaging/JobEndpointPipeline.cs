using Conveyor.Worker.Failures;
using Conveyor.Worker.Inbox;
using Conveyor.Worker.Jobs;
using MassTransit;
using Microsoft.Extensions.Options;

namespace Conveyor.Worker.Messaging;

/// <summary>
/// The consume pipeline every job endpoint shares, outermost first: job outcome, in-memory
/// retry (transient failures only), message scope, inbox, consumer.
/// </summary>
public static class JobEndpointPipeline
{
    public static ConsumerEndpointOptions OptionsFor(IServiceProvider services, string consumerName) =>
        services.GetRequiredService<IOptionsMonitor<ConsumerEndpointOptions>>().Get(consumerName);

    public static void Configure<TMessage>(
        IReceiveEndpointConfigurator endpoint,
        IRegistrationContext context,
        ConsumerEndpointOptions options)
        where TMessage : class
    {
        endpoint.PrefetchCount = options.PrefetchCount;
        endpoint.ConcurrentMessageLimit = options.ConcurrentMessageLimit;

        endpoint.UseFilter(new JobOutcomeFilter<TMessage>(
            context.GetRequiredService<JobTracker>(),
            context.GetRequiredService<JobDescriptor<TMessage>>(),
            context.GetRequiredService<ILoggerFactory>().CreateLogger("Conveyor.Worker.Jobs")));

        endpoint.UseMessageRetry(retry =>
        {
            if (options.RetryLimit == 0)
            {
                retry.None();
                return;
            }

            // MassTransit's exponential policy adds a random delta to each interval: the jitter.
            retry.Exponential(
                options.RetryLimit,
                TimeSpan.FromMilliseconds(options.RetryMinIntervalMilliseconds),
                TimeSpan.FromMilliseconds(options.RetryMaxIntervalMilliseconds),
                TimeSpan.FromMilliseconds(options.RetryIntervalDeltaMilliseconds));
            retry.Handle<Exception>(FailureClassifier.IsTransient);
        });

        endpoint.UseMessageScope(context);
        endpoint.UseConsumeFilter(typeof(InboxFilter<>), context);
    }
}
