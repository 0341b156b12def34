using System.Diagnostics.Metrics;
using System.Text.RegularExpressions;
using Conveyor.Contracts;
using Conveyor.Worker.Jobs;
using Microsoft.Extensions.DependencyInjection;

namespace Conveyor.Tests.Deploy;

/// <summary>
/// The series the alert rules in <c>deploy/monitoring</c> compute with exist before the first event they count.
/// A counter's series with a tag value appears when that value is first counted, and Prometheus cannot see
/// what a series counted before its first sample: <c>rate()</c> and <c>increase()</c> miss a worker's first
/// burst of dead letters, and in vector arithmetic a kind with no series drops out. So
/// <c>ConveyorHighFailureRate</c> (failed / (succeeded + failed) by kind) was silent for a kind that had not
/// succeeded once since the workers started, which is when every attempt fails: a gateway refusing every charge,
/// or the prod overlay's <c>.invalid</c> placeholder gateway URL left in place.
/// </summary>
public sealed partial class AlertSeriesTests
{
    [Fact]
    public void Every_job_counter_the_alerts_read_reports_every_kind_from_the_start()
    {
        var rules = File.ReadAllText(RepositoryRoot.Combine("deploy", "monitoring", "alerts.yaml"));
        var read = CounterRead().Matches(rules).Select(m => m.Groups["name"].Value).ToHashSet(StringComparer.Ordinal);
        Assert.True(read.Count >= 3, $"found only {string.Join(", ", read)} in the alert rules");

        var meters = new ServiceCollection().AddMetrics().BuildServiceProvider().GetRequiredService<IMeterFactory>();
        var counters = new HashSet<string>(StringComparer.Ordinal);
        var reported = new HashSet<(string Series, string? Kind)>();
        using var listener = new MeterListener();
        listener.InstrumentPublished = (instrument, l) =>
        {
            if (instrument.Meter.Scope == meters && instrument is Counter<long>)
            {
                counters.Add(Series(instrument));
                l.EnableMeasurementEvents(instrument);
            }
        };
        listener.SetMeasurementEventCallback<long>((instrument, _, tags, _) =>
        {
            foreach (var (key, value) in tags)
            {
                if (key == "kind")
                {
                    reported.Add((Series(instrument), value as string));
                }
            }
        });
        listener.Start();

        new JobMetrics(meters).ExportEveryKind();

        var missing = read.Where(counters.Contains)
            .SelectMany(series => JobKinds.All.Where(kind => !reported.Contains((series, kind))).Select(kind => $"{series}{{kind=\"{kind}\"}}"))
            .ToList();
        Assert.True(read.Any(counters.Contains), $"none of {string.Join(", ", read)} is a counter of JobMetrics ({string.Join(", ", counters)})");
        Assert.True(missing.Count == 0, $"absent until first counted, so the alerts cannot see them: {string.Join(", ", missing)}");
    }

    /// <summary>The Prometheus name of a counter: dots to underscores, <c>_total</c> (a braced unit adds nothing).</summary>
    private static string Series(Instrument instrument) => instrument.Name.Replace('.', '_') + "_total";

    [GeneratedRegex(@"(?:rate|increase)\((?<name>conveyor_[a-z_]+_total)\[")]
    private static partial Regex CounterRead();
}
