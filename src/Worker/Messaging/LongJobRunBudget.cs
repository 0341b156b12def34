using System.Globalization;
using Conveyor.ServiceDefaults;
using Conveyor.Worker.Reports;
using Microsoft.Extensions.Options;

namespace Conveyor.Worker.Messaging;

/// <summary>
/// Says at start how long a report may run before RabbitMQ's consumer_timeout takes it away (as
/// information: it states what the settings allow, not a fault). A long job
/// holds its delivery unacked for its whole run (the lease keeps the database transaction short, not
/// the delivery), and nothing bounds a run: a report whose delivery outlives consumer_timeout has its
/// channel closed, which cancels the run, and is delivered again to start over, every time. The
/// budget is the timeout shared by every run one delivery can see (<see cref="UnackedHold"/>: its
/// in-memory retries, and the runs of the delivery prefetched ahead of it).
/// </summary>
internal sealed partial class LongJobRunBudget(
    IOptionsMonitor<ConsumerEndpointOptions> endpoints,
    IOptions<RabbitMqOptions> rabbitMq,
    ILogger<LongJobRunBudget> logger) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        var consumerTimeout = rabbitMq.Value.ConsumerTimeoutSeconds;
        if (consumerTimeout > 0)
        {
            var options = endpoints.Get(GenerateReportConsumerDefinition.ConsumerName);
            var hold = UnackedHold.Of(options, TimeSpan.Zero);
            var endpoint = $"{ConsumerEndpointOptions.SectionName}:{GenerateReportConsumerDefinition.ConsumerName}";
            var budget = Seconds(hold.AttemptBudget(TimeSpan.FromSeconds(consumerTimeout)));
            var waits = Seconds(hold.RetryWaits * hold.Handlings);
            LogRunBudget(endpoint, budget, consumerTimeout, hold.Handlings * hold.Attempts, options.RetryLimit, options.PrefetchCount, options.ConcurrentMessageLimit, waits);
        }

        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    private static string Seconds(TimeSpan time) => time.TotalSeconds.ToString("0.#", CultureInfo.InvariantCulture);

    [LoggerMessage(Level = LogLevel.Information,
        Message = "{Endpoint}: a report holds its delivery unacked while it runs, and nothing limits a run. A run longer than {BudgetSeconds} s " +
            "can outlast RabbitMQ's consumer_timeout (RabbitMq:ConsumerTimeoutSeconds {ConsumerTimeoutSeconds} s), which closes the channel, cancels the run " +
            "and delivers the report again, to start over: one delivery can wait through {Runs} runs ((RetryLimit {RetryLimit} + 1) attempts " +
            "× (PrefetchCount {PrefetchCount} / ConcurrentMessageLimit {ConcurrentMessageLimit}, rounded up) handlings, the delivery ahead of it included) " +
            "and {WaitSeconds} s of retry waits. PrefetchCount 1 and RetryLimit 0 give a run the whole timeout")]
    private partial void LogRunBudget(
        string endpoint, string budgetSeconds, int consumerTimeoutSeconds, int runs, int retryLimit, int prefetchCount, int concurrentMessageLimit, string waitSeconds);
}
