using System.Globalization;
using Conveyor.ServiceDefaults;
using Conveyor.Worker.Reports;
using Microsoft.Extensions.Options;

namespace Conveyor.Worker.Messaging;

/// <summary>
/// Says at start how long a report may run within RabbitMQ's consumer_timeout (as information: it
/// states what the settings allow, not a fault). A long job holds its delivery unacked for its whole
/// run (the lease keeps the database transaction short, not the delivery); a run still going when its
/// delivery nears the timeout is stopped and fails as out of time (<see cref="DeliveryDeadline"/>).
/// How much of that time a run gets depends on what shares the delivery: in the worst case the
/// timeout is split over every run one delivery can see (<see cref="UnackedHold"/>: its in-memory
/// retries; no delivery waits prefetched behind another, <see cref="ConsumerTimeoutValidator"/>).
/// </summary>
internal sealed partial class LongJobRunBudget(
    IOptionsMonitor<ConsumerEndpointOptions> endpoints,
    IOptions<RabbitMqOptions> rabbitMq,
    ILogger<LongJobRunBudget> logger) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        var consumerTimeout = rabbitMq.Value.ConsumerTimeoutSeconds;
        if (DeliveryDeadline.Of(consumerTimeout) is { } deadline)
        {
            var options = endpoints.Get(GenerateReportConsumerDefinition.ConsumerName);
            var hold = UnackedHold.Of(options, TimeSpan.Zero);
            var endpoint = $"{ConsumerEndpointOptions.SectionName}:{GenerateReportConsumerDefinition.ConsumerName}";
            var budget = Seconds(hold.AttemptBudget(deadline));
            var waits = Seconds(hold.RetryWaits * hold.Handlings);
            var stopAt = Seconds(deadline);
            LogRunBudget(endpoint, stopAt, consumerTimeout, budget, hold.Handlings * hold.Attempts, options.RetryLimit, options.PrefetchCount, options.ConcurrentMessageLimit, waits);
        }

        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    private static string Seconds(TimeSpan time) => time.TotalSeconds.ToString("0.#", CultureInfo.InvariantCulture);

    [LoggerMessage(Level = LogLevel.Information,
        Message = "{Endpoint}: a report holds its delivery unacked while it runs. A run still going when its delivery has been unacked for {DeadlineSeconds} s " +
            "(RabbitMq:ConsumerTimeoutSeconds {ConsumerTimeoutSeconds} s less a margin) is stopped and fails as out of time: a delayed redelivery, then _error. " +
            "A run is sure of {BudgetSeconds} s: one delivery can wait through {Runs} runs ((RetryLimit {RetryLimit} + 1) attempts " +
            "× (PrefetchCount {PrefetchCount} / ConcurrentMessageLimit {ConcurrentMessageLimit}, rounded up) handlings, the delivery ahead of it included) " +
            "and {WaitSeconds} s of retry waits. RetryLimit 0 gives a run the whole of it (PrefetchCount may not exceed ConcurrentMessageLimit here)")]
    private partial void LogRunBudget(
        string endpoint, string deadlineSeconds, int consumerTimeoutSeconds, string budgetSeconds, int runs, int retryLimit, int prefetchCount, int concurrentMessageLimit, string waitSeconds);
}
