using Conveyor.Tests.Infrastructure;
using Microsoft.Extensions.Logging;

namespace Conveyor.Tests.Worker;

/// <summary>
/// RabbitMQ closes the channel of a consumer that holds a delivery unacked past its consumer_timeout
/// (RabbitMq:ConsumerTimeoutSeconds): the worker refuses retry settings that could, and says how
/// long a report may run.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class ConsumerTimeoutTests(ConveyorFixture fixture)
{
    [Fact]
    public async Task A_worker_whose_in_memory_retries_could_outlast_the_consumer_timeout_refuses_to_start()
    {
        // 21 attempts × 5 s + 1410.6 s of waits, twice (32 prefetched, 16 at a time): 3031.2 s, against 50 % of 1800 s.
        var settings = WorkerSettings.With().Override(
            ("Consumers:DeliverWebhook:RetryLimit", "20"),
            ("Consumers:DeliverWebhook:RetryMaxIntervalMilliseconds", "120000"));

        var failure = await Assert.ThrowsAnyAsync<Exception>(async () => await fixture.StartWorkerAsync(settings));

        Assert.Contains("Consumers:DeliverWebhook: in-memory retries can hold a delivery unacked for up to 3031.2 s", failure.Message, StringComparison.Ordinal);
        Assert.Contains("RabbitMq:MaxRetryHoldPercent (50 %) of RabbitMq:ConsumerTimeoutSeconds (1800 s): 900 s", failure.Message, StringComparison.Ordinal);
        Assert.Contains("21 attempt(s) (RetryLimit 20 + 1) × 5 s (Webhooks:TimeoutSeconds) + 1410.6 s of waits", failure.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("Consumers:ChargePayment", failure.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("ConcurrentMessageLimit", "0")]
    [InlineData("PrefetchCount", "0")]
    [InlineData("RetryLimit", "-1")]
    [InlineData("MaxLeaseDeferrals", "0")]
    public async Task A_worker_with_an_endpoint_setting_out_of_range_refuses_to_start_naming_it(string setting, string value)
    {
        var settings = WorkerSettings.With().Override(($"Consumers:ChargePayment:{setting}", value));

        var failure = await Assert.ThrowsAnyAsync<Exception>(async () => await fixture.StartWorkerAsync(settings));

        // The range check's message, not an arithmetic failure of the consumer_timeout check.
        Assert.IsNotType<DivideByZeroException>(failure);
        Assert.Contains(setting, failure.Message, StringComparison.Ordinal);
        Assert.Contains("must be between", failure.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_worker_whose_report_copies_would_give_up_on_a_live_lease_within_the_consumer_timeout_refuses_to_start()
    {
        // A duplicate copy parked 3 times for at least two thirds of a 5 s lease each gives up after 10 s or so, and goes to
        // _error as "lease held by another worker" while the run it waits for may go on for up to 1800 s.
        var settings = WorkerSettings.With().Override(
            ("Consumers:GenerateReport:LeaseSeconds", "5"),
            ("Consumers:GenerateReport:MaxLeaseDeferrals", "3"),
            ("RabbitMq:ConsumerTimeoutSeconds", "1800"));

        var failure = await Assert.ThrowsAnyAsync<Exception>(async () => await fixture.StartWorkerAsync(settings));

        Assert.Contains("Consumers:GenerateReport:MaxLeaseDeferrals (3)", failure.Message, StringComparison.Ordinal);
        Assert.Contains("Consumers:GenerateReport:LeaseSeconds (5 s)", failure.Message, StringComparison.Ordinal);
        Assert.Contains("RabbitMq:ConsumerTimeoutSeconds (1800 s)", failure.Message, StringComparison.Ordinal);
        Assert.Contains("set Consumers:GenerateReport:MaxLeaseDeferrals to at least 540", failure.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task The_same_retries_start_against_a_broker_without_a_consumer_timeout()
    {
        var settings = WorkerSettings.With().Override(
            ("Consumers:DeliverWebhook:RetryLimit", "20"),
            ("Consumers:DeliverWebhook:RetryMaxIntervalMilliseconds", "120000"),
            ("RabbitMq:ConsumerTimeoutSeconds", "0"));

        await using var worker = await fixture.StartWorkerAsync(settings);
    }

    [Fact]
    public async Task A_worker_says_at_start_how_long_a_report_may_run()
    {
        var logs = new CapturedLogs();
        var settings = WorkerSettings.With().Override(("Logging:LogLevel:Conveyor.Worker.Messaging.LongJobRunBudget", "Information"));
        await using var worker = await fixture.StartWorkerAsync(settings, builder => builder.Logging.AddProvider(logs));

        // Runs stop at 1800 s less a 60 s margin; (1740 s - 2.3 s of waits) / 4 attempts (nothing prefetched behind another).
        var budget = Assert.Single(logs.Of(LogLevel.Information, "Conveyor.Worker.Messaging.LongJobRunBudget"));
        Assert.Contains("Consumers:GenerateReport:", budget.Message, StringComparison.Ordinal);
        Assert.Contains("has been unacked for 1740 s (RabbitMq:ConsumerTimeoutSeconds 1800 s less a margin) is stopped", budget.Message, StringComparison.Ordinal);
        Assert.Contains("A run is sure of 434.4 s: one delivery can wait through 4 runs", budget.Message, StringComparison.Ordinal);
    }
}
