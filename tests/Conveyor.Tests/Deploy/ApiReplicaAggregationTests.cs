using System.Text.RegularExpressions;

namespace Conveyor.Tests.Deploy;

/// <summary>
/// Every Api replica exports the same per-queue figures (it reads them from RabbitMQ), so the alert
/// rules and the dashboard in <c>deploy/monitoring</c> must aggregate them by queue: raw, an alert
/// fires once per replica and a panel draws a line per replica.
/// </summary>
public sealed partial class ApiReplicaAggregationTests
{
    private static readonly string[] PerQueueMetrics = ["conveyor_queue_depth", "conveyor_queue_consumers", "conveyor_error_queue_depth"];

    [Theory]
    [InlineData("alerts.yaml")]
    [InlineData("grafana-dashboard.json")]
    public void Queue_figures_of_the_Api_are_aggregated_by_queue(string file)
    {
        // The queries: single-line expr fields (descriptions may name a metric in passing).
        var text = string.Join('\n', File.ReadAllLines(RepositoryRoot.Combine("deploy", "monitoring", file))
            .Where(line => line.Contains("expr", StringComparison.Ordinal)));
        foreach (var metric in PerQueueMetrics)
        {
            Assert.Contains(metric, text, StringComparison.Ordinal);
            // What is left once the aggregated uses are taken out: max by (queue) (m) and max by (queue) (f(m[range])).
            var raw = Regex.Replace(text, $@"max by \(queue\) \((?:[a-z_]+\()?{metric}(?:\[[^\]]+\]\))?\)", "", RegexOptions.None, TimeSpan.FromSeconds(1));
            var rawUses = MetricUse().Matches(raw).Where(m => m.Value == metric).ToList();
            Assert.True(rawUses.Count == 0, $"{file} uses {metric} without max by (queue) ({rawUses.Count} time(s))");
        }
    }

    [Fact]
    public void The_alert_rules_fire_when_the_Api_cannot_read_the_broker_or_a_service_is_not_scraped()
    {
        var alerts = File.ReadAllText(RepositoryRoot.Combine("deploy", "monitoring", "alerts.yaml"));
        Assert.Contains("conveyor_broker_reading_age_seconds) > ", alerts, StringComparison.Ordinal);
        Assert.Contains("absent(conveyor_broker_reading_age_seconds)", alerts, StringComparison.Ordinal);
        Assert.Contains("absent(conveyor_jobs_succeeded_total)", alerts, StringComparison.Ordinal);
    }

    [GeneratedRegex("conveyor_[a-z_]+")]
    private static partial Regex MetricUse();
}
