using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Jobs;
using Microsoft.Extensions.DependencyInjection;

namespace Conveyor.Tests.Unit;

/// <summary>
/// Each worker host's <see cref="JobMetrics"/> is on that host's meter factory, so a test counts its own
/// worker's measurements while other lanes' workers record theirs in the same process.
/// </summary>
public sealed class WorkerMetricTests
{
    [Fact]
    public void A_count_keeps_to_the_hosts_it_watches_while_another_host_records_the_same_instrument()
    {
        using var watchedHost = Host();
        using var otherHost = Host();
        using var duplicates = WorkerMetric.Duplicates("ChargePayment");
        duplicates.Watch(watchedHost);

        // Recorded before and after the watch, by both hosts, and for another consumer.
        watchedHost.GetRequiredService<JobMetrics>().DuplicateSkipped("ChargePayment");
        otherHost.GetRequiredService<JobMetrics>().DuplicateSkipped("ChargePayment");
        otherHost.GetRequiredService<JobMetrics>().DuplicateSkipped("ChargePayment");
        watchedHost.GetRequiredService<JobMetrics>().DuplicateSkipped("ChargePayment");
        watchedHost.GetRequiredService<JobMetrics>().DuplicateSkipped("DeliverWebhook");

        Assert.Equal(2, duplicates.Count);
        duplicates.Watch(otherHost);
        Assert.Equal(4, duplicates.Count);
    }

    [Fact]
    public void A_count_with_no_host_watched_is_refused_rather_than_read_as_zero()
    {
        using var host = Host();
        using var failed = WorkerMetric.AttemptsFailed("charge-payment");
        host.GetRequiredService<JobMetrics>().AttemptFailed("charge-payment");

        Assert.Throws<InvalidOperationException>(() => failed.Count);
    }

    /// <summary>As the worker registers them: the host's meter factory and one <see cref="JobMetrics"/> on it.</summary>
    private static ServiceProvider Host() => new ServiceCollection().AddMetrics().AddSingleton<JobMetrics>().BuildServiceProvider();
}
