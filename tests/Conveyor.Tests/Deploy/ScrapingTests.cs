using System.Text.RegularExpressions;

namespace Conveyor.Tests.Deploy;

/// <summary>
/// The Prometheus Operator's PodMonitors (component <c>prometheus-operator</c>): where an overlay has
/// any, every Deployment is scraped on a port its container declares, at <c>/metrics</c>, under the
/// job name the Grafana dashboard filters on; and the production overlay has them.
/// </summary>
public sealed partial class ScrapingTests
{
    [Fact]
    public void The_production_overlay_scrapes_its_pods()
    {
        Assert.NotEmpty(RenderedOverlay.Load("prod").PodMonitors);
    }

    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Every_Deployment_is_scraped_at_metrics_on_a_declared_port_under_the_dashboards_job_name(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);
        Overlays.AssertNone(rendered, "a PodMonitor must select exactly one Deployment's pods and name a port it declares", Problems());

        IEnumerable<string> Problems()
        {
            var monitors = rendered.PodMonitors.ToList();
            if (monitors.Count == 0)
            {
                yield break;
            }

            foreach (var deployment in rendered.Deployments)
            {
                var labels = deployment.Spec.Template.Metadata.Labels;
                var scraping = monitors.Where(m => m.Spec.Selector.Matches(labels)).ToList();
                if (scraping.Count != 1)
                {
                    yield return $"Deployment/{deployment.Metadata.Name} is selected by {scraping.Count} PodMonitors";
                    continue;
                }

                var monitor = scraping[0];
                var ports = deployment.Spec.Template.Spec.Containers.SelectMany(c => c.Ports ?? []).Select(p => p.Name).ToHashSet(StringComparer.Ordinal);
                foreach (var endpoint in monitor.Spec.PodMetricsEndpoints)
                {
                    if (endpoint.Port is null || !ports.Contains(endpoint.Port))
                    {
                        yield return $"PodMonitor/{monitor.Metadata.Name} scrapes port {endpoint.Port ?? "(none)"}, which Deployment/{deployment.Metadata.Name} does not declare";
                    }

                    if (endpoint.Path != "/metrics")
                    {
                        yield return $"PodMonitor/{monitor.Metadata.Name} scrapes {endpoint.Path ?? "(default)"}; the services serve /metrics";
                    }
                }

                var job = monitor.Spec.JobLabel is { } jobLabel && labels?.TryGetValue(jobLabel, out var value) == true ? value : null;
                if (job != deployment.Metadata.Name)
                {
                    yield return $"PodMonitor/{monitor.Metadata.Name} gives Deployment/{deployment.Metadata.Name} the job {job ?? "(the PodMonitor's namespace/name)"}; deploy/monitoring expects the Deployment's name";
                }
            }
        }
    }

    [Fact]
    public void The_dashboards_job_filters_match_the_scrape_job_names()
    {
        var dashboard = File.ReadAllText(RepositoryRoot.Combine("deploy", "monitoring", "grafana-dashboard.json"));
        var filters = JobFilter().Matches(dashboard).Select(m => m.Groups["pattern"].Value.Replace(@"\\", @"\", StringComparison.Ordinal)).ToList();
        Assert.NotEmpty(filters);
        var jobs = RenderedOverlay.Load("prod").Deployments.Select(d => d.Metadata.Name).ToList();
        foreach (var filter in filters)
        {
            Assert.True(jobs.Any(job => Regex.IsMatch(job, $"^(?:{filter})$")), $"the dashboard filters on job=~\"{filter}\", which none of {string.Join(", ", jobs)} matches");
        }
    }

    [GeneratedRegex(@"job=~\\""(?<pattern>[^\\""]+)\\""")]
    private static partial Regex JobFilter();
}
