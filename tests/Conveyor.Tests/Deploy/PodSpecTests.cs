using System.Globalization;
using Conveyor.Worker.Messaging;
using Conveyor.Worker.Payments;
using Conveyor.Worker.Webhooks;
using k8s.Models;
using Microsoft.Extensions.Options;

namespace Conveyor.Tests.Deploy;

/// <summary>What every Conveyor pod must get right: health probes, lockdown, resources, spreading, stopping.</summary>
public sealed class PodSpecTests
{
    private const long AppUserId = 1654;

    private static readonly string[] Resources = ["cpu", "memory"];

    private static readonly string[] SpreadKeys = ["kubernetes.io/hostname", "topology.kubernetes.io/zone"];

    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Probes_use_the_health_endpoints_on_the_port_in_Urls(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);

        Overlays.AssertNone(rendered, "Api and worker containers need startup, liveness (/health/live) and readiness probes on the container port their Urls listens on: the Api starts on /health/ready and stays ready on /health/live (an outage of the broker or database must not empty its Service), the worker starts on /health/live and is ready on /health/ready", Problems());

        IEnumerable<string> Problems()
        {
            var workloads = rendered.DeploymentsOf("api").Select(d => (d.Workload, Api: true))
                .Concat(rendered.DeploymentsOf("worker").Select(d => (d.Workload, Api: false)));
            foreach (var (workload, api) in workloads)
            {
                foreach (var container in workload.Pod.Containers)
                {
                    var where = $"{workload}/{container.Name}";
                    var urlPorts = AppConfiguration.Of(rendered, workload, container).UrlPorts;
                    var containerPorts = (container.Ports ?? []).Select(p => p.ContainerPort).ToHashSet();
                    var listening = urlPorts.Where(containerPorts.Contains).ToList();
                    if (listening.Count == 0)
                    {
                        yield return $"{where}: Urls listens on [{string.Join(", ", urlPorts)}] but the container declares ports [{string.Join(", ", containerPorts)}]";
                    }

                    var probes = new (string Kind, V1Probe? Probe, string Path)[]
                    {
                        ("startupProbe", container.StartupProbe, api ? "/health/ready" : "/health/live"),
                        ("livenessProbe", container.LivenessProbe, "/health/live"),
                        ("readinessProbe", container.ReadinessProbe, api ? "/health/live" : "/health/ready"),
                    };
                    foreach (var (kind, probe, path) in probes)
                    {
                        if (probe?.HttpGet is not { } get)
                        {
                            yield return $"{where}: no httpGet {kind}";
                            continue;
                        }

                        if (get.Path != path)
                        {
                            yield return $"{where}: {kind} path {get.Path}, expected {path}";
                        }

                        var port = get.Port.Resolve(container);
                        if (port is null || !listening.Contains(port.Value))
                        {
                            yield return $"{where}: {kind} port {get.Port?.Value} is not the container port Urls listens on ({string.Join(", ", listening)})";
                        }
                    }
                }
            }
        }
    }

    /// <summary>
    /// Kestrel's any-address form (<c>+</c>) listens on IPv6 and IPv4 both (a dual-mode socket; IPv4 alone
    /// where the node has no IPv6), while <c>0.0.0.0</c> is IPv4 only: on an IPv6-only or IPv6-first
    /// cluster the kubelet probes the pod's IPv6 address, every probe is refused, and the pods restart
    /// for ever. The images set the same default, for a container run outside these manifests.
    /// </summary>
    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Urls_listen_on_IPv6_and_IPv4(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);

        Overlays.AssertNone(rendered, "Api and worker containers must listen on every address, IPv6 and IPv4 (http://+:<port>), not 0.0.0.0 (IPv4 only)", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var (_, workload) in rendered.DeploymentsOf("api").Concat(rendered.DeploymentsOf("worker")))
            {
                foreach (var container in workload.Pod.Containers)
                {
                    foreach (var url in AppConfiguration.Of(rendered, workload, container).Urls.Where(url => !IsAnyAddress(url)))
                    {
                        yield return $"{workload}/{container.Name}: Urls {url}";
                    }
                }
            }

            foreach (var project in new[] { "Api", "Worker" })
            {
                var urls = File.ReadLines(RepositoryRoot.Combine("src", project, "Dockerfile"))
                    .Where(line => line.StartsWith("ENV Urls=", StringComparison.Ordinal))
                    .Select(line => line["ENV Urls=".Length..].Trim())
                    .ToList();
                if (urls.Count != 1 || !IsAnyAddress(urls[0]))
                {
                    yield return $"src/{project}/Dockerfile: ENV Urls [{string.Join(", ", urls)}]";
                }
            }
        }

        static bool IsAnyAddress(string url) => url.StartsWith("http://+:", StringComparison.Ordinal);
    }

    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Containers_run_as_the_app_user_with_a_read_only_root_and_no_privileges(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);

        Overlays.AssertNone(rendered, "containers must run as uid 1654, non-root, read-only root filesystem, no privilege escalation, all capabilities dropped, RuntimeDefault seccomp", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var workload in rendered.Workloads)
            {
                var pod = workload.Pod.SecurityContext;
                foreach (var container in workload.AllContainers)
                {
                    var where = $"{workload}/{container.Name}";
                    var own = container.SecurityContext;
                    if ((own?.RunAsNonRoot ?? pod?.RunAsNonRoot) != true)
                    {
                        yield return $"{where}: runAsNonRoot is not true";
                    }

                    if ((own?.RunAsUser ?? pod?.RunAsUser) != AppUserId)
                    {
                        yield return $"{where}: runAsUser {(own?.RunAsUser ?? pod?.RunAsUser)?.ToString(CultureInfo.InvariantCulture) ?? "(image default)"}, expected {AppUserId} (the aspnet image's app user)";
                    }

                    if (own?.ReadOnlyRootFilesystem != true)
                    {
                        yield return $"{where}: readOnlyRootFilesystem is not true";
                    }

                    if (own?.AllowPrivilegeEscalation != false)
                    {
                        yield return $"{where}: allowPrivilegeEscalation is not false";
                    }

                    if (own?.Capabilities?.Drop?.Contains("ALL") != true)
                    {
                        yield return $"{where}: capabilities.drop does not contain ALL";
                    }

                    if ((own?.SeccompProfile ?? pod?.SeccompProfile)?.Type != "RuntimeDefault")
                    {
                        yield return $"{where}: seccompProfile is not RuntimeDefault";
                    }
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Containers_write_temporary_files_to_an_emptyDir_on_tmp(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);

        Overlays.AssertNone(rendered, "with a read-only root, /tmp must be an emptyDir", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var workload in rendered.Workloads)
            {
                var emptyDirs = (workload.Pod.Volumes ?? []).Where(v => v.EmptyDir is not null).Select(v => v.Name).ToHashSet();
                foreach (var container in workload.AllContainers)
                {
                    var tmp = container.VolumeMounts?.FirstOrDefault(m => m.MountPath == "/tmp");
                    if (tmp is null || !emptyDirs.Contains(tmp.Name))
                    {
                        yield return $"{workload}/{container.Name}: /tmp is not mounted from an emptyDir volume";
                    }
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Containers_request_and_limit_cpu_and_memory(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);

        Overlays.AssertNone(rendered, "every container needs cpu and memory requests and limits", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var workload in rendered.Workloads)
            {
                foreach (var container in workload.AllContainers)
                {
                    foreach (var (kind, values) in new[] { ("requests", container.Resources?.Requests), ("limits", container.Resources?.Limits) })
                    {
                        foreach (var resource in Resources.Where(r => values?.ContainsKey(r) != true))
                        {
                            yield return $"{workload}/{container.Name}: no {resource} in resources.{kind}";
                        }
                    }
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Deployments_spread_their_pods_across_nodes_and_zones(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);

        Overlays.AssertNone(rendered, "Deployments need topologySpreadConstraints on kubernetes.io/hostname and topology.kubernetes.io/zone that select their own pods", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var workload in rendered.Workloads.Where(w => w.Kind == "Deployment"))
            {
                var constraints = workload.Pod.TopologySpreadConstraints ?? [];
                foreach (var key in SpreadKeys)
                {
                    if (!constraints.Any(c => c.TopologyKey == key && c.LabelSelector is not null && c.LabelSelector.Matches(workload.Template.Metadata.Labels)))
                    {
                        yield return $"{workload}: no spread constraint on {key} selecting its pods";
                    }
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Api_pauses_before_stopping_within_its_grace_period(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);

        Overlays.AssertNone(rendered, "the Api needs a preStop pause (so it leaves the Service endpoints before it stops listening) that fits in its grace period", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var workload in rendered.DeploymentsOf("api").Select(d => d.Workload))
            {
                var grace = workload.Pod.TerminationGracePeriodSeconds ?? 30;
                foreach (var container in workload.Pod.Containers)
                {
                    var preStop = container.Lifecycle?.PreStop;
                    if (preStop?.Sleep is { } sleep)
                    {
                        if (sleep.Seconds <= 0 || sleep.Seconds >= grace)
                        {
                            yield return $"{workload}/{container.Name}: preStop sleeps {sleep.Seconds} s with a grace period of {grace} s";
                        }
                    }
                    else if (preStop?.Exec?.Command is not { Count: > 0 })
                    {
                        yield return $"{workload}/{container.Name}: no preStop sleep";
                    }
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Worker_grace_period_outlasts_the_shutdown_chain(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);
        var consumerTimeoutSeconds = rendered.RabbitmqClusters.Select(ConsumerTimeoutSeconds).DefaultIfEmpty(1800).Min();

        Overlays.AssertNone(rendered, $"need Shutdown ConsumerStop < BusStop <= HostShutdown < terminationGracePeriodSeconds < RabbitMQ consumer_timeout ({consumerTimeoutSeconds} s)", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var workload in rendered.DeploymentsOf("worker").Select(d => d.Workload))
            {
                var grace = workload.Pod.TerminationGracePeriodSeconds;
                foreach (var container in workload.Pod.Containers)
                {
                    var shutdown = AppConfiguration.Of(rendered, workload, container).Shutdown;
                    var chain = $"consumer {shutdown.ConsumerStopTimeoutSeconds}, bus {shutdown.BusStopTimeoutSeconds}, host {shutdown.HostShutdownTimeoutSeconds}, grace {grace?.ToString(CultureInfo.InvariantCulture) ?? "(unset)"}";
                    if (grace is null)
                    {
                        yield return $"{workload}: terminationGracePeriodSeconds is not set explicitly ({chain})";
                    }
                    else if (grace <= shutdown.HostShutdownTimeoutSeconds)
                    {
                        yield return $"{workload}: terminationGracePeriodSeconds must exceed Shutdown__HostShutdownTimeoutSeconds ({chain})";
                    }
                    else if (grace >= consumerTimeoutSeconds)
                    {
                        yield return $"{workload}: terminationGracePeriodSeconds reaches RabbitMQ's consumer_timeout ({chain})";
                    }

                    if (shutdown.BusStopTimeoutSeconds > shutdown.HostShutdownTimeoutSeconds)
                    {
                        yield return $"{workload}: Shutdown__BusStopTimeoutSeconds exceeds Shutdown__HostShutdownTimeoutSeconds ({chain})";
                    }

                    if (shutdown.ConsumerStopTimeoutSeconds >= shutdown.BusStopTimeoutSeconds)
                    {
                        yield return $"{workload}: Shutdown__ConsumerStopTimeoutSeconds must be below Shutdown__BusStopTimeoutSeconds ({chain})";
                    }
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Workers_state_the_brokers_consumer_timeout(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);
        var consumerTimeoutSeconds = rendered.RabbitmqClusters.Select(ConsumerTimeoutSeconds).DefaultIfEmpty(1800).Min();

        Overlays.AssertNone(rendered, $"the worker checks its in-memory retries against RabbitMq__ConsumerTimeoutSeconds: it must be the broker's consumer_timeout ({consumerTimeoutSeconds} s)", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var workload in rendered.DeploymentsOf("worker").Select(d => d.Workload))
            {
                foreach (var container in workload.Pod.Containers)
                {
                    var stated = AppConfiguration.Of(rendered, workload, container).BrokerTimeouts.ConsumerTimeoutSeconds;
                    if (stated != consumerTimeoutSeconds)
                    {
                        yield return $"{workload}/{container.Name}: RabbitMq__ConsumerTimeoutSeconds is {stated}";
                    }
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Worker_in_memory_retries_pass_the_consumer_timeout_check(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);

        Overlays.AssertNone(rendered, "the worker refuses to start (crash loop) when in-memory retries could hold a delivery too long", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var workload in rendered.DeploymentsOf("worker").Select(d => d.Workload))
            {
                foreach (var container in workload.Pod.Containers)
                {
                    var configuration = AppConfiguration.Of(rendered, workload, container);
                    var validator = new ConsumerTimeoutValidator(
                        Options.Create(configuration.BrokerTimeouts),
                        Options.Create(configuration.Section<PaymentGatewayOptions>(PaymentGatewayOptions.SectionName)),
                        Options.Create(configuration.Section<WebhookOptions>(WebhookOptions.SectionName)));
                    foreach (var consumer in WorkerEndpoints.All.Select(e => e.ConsumerName))
                    {
                        if (validator.Validate(consumer, configuration.Consumer(consumer)) is { Failed: true } result)
                        {
                            yield return $"{workload}/{container.Name}: {result.FailureMessage}";
                        }
                    }
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Pods_use_a_rendered_ServiceAccount_without_a_token(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);
        var accounts = rendered.Objects.OfType<V1ServiceAccount>().Select(a => a.Metadata.Name).ToHashSet();

        Overlays.AssertNone(rendered, "pods call no Kubernetes API: a rendered ServiceAccount, automountServiceAccountToken false", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var workload in rendered.Workloads)
            {
                if (workload.Pod.ServiceAccountName is not { } account || !accounts.Contains(account))
                {
                    yield return $"{workload}: serviceAccountName {workload.Pod.ServiceAccountName ?? "(default)"} is not a rendered ServiceAccount";
                }

                if (workload.Pod.AutomountServiceAccountToken != false)
                {
                    yield return $"{workload}: automountServiceAccountToken is not false";
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void The_broker_refuses_messages_too_large_for_a_worker_to_hold_its_prefetch_of(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);

        Overlays.AssertNone(rendered, "a RabbitmqCluster needs max_message_size of at most 4 MiB (the broker's default is 128 MiB; workers read whole deliveries before their 1 MiB check)", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var cluster in rendered.RabbitmqClusters)
            {
                var bytes = ConfigValue(cluster, "max_message_size");
                if (bytes is null or > 4 * 1024 * 1024)
                {
                    yield return $"RabbitmqCluster: max_message_size is {bytes?.ToString(CultureInfo.InvariantCulture) ?? "not set"}";
                }
            }
        }
    }

    private static int ConsumerTimeoutSeconds(RabbitmqCluster cluster) =>
        ConfigValue(cluster, "consumer_timeout") is { } milliseconds ? (int)(milliseconds / 1000) : 1800;

    /// <summary>A numeric setting of the cluster's <c>additionalConfig</c> (rabbitmq.conf lines); null when absent.</summary>
    private static long? ConfigValue(RabbitmqCluster cluster, string key)
    {
        var config = cluster.Spec.TryGetValue("rabbitmq", out var rabbitmq) && rabbitmq is IDictionary<object, object> settings
            && settings.TryGetValue("additionalConfig", out var text) ? text as string : null;
        var line = (config ?? "").Split('\n').Select(l => l.Trim()).FirstOrDefault(l => l.StartsWith(key + " ", StringComparison.Ordinal) || l.StartsWith(key + "=", StringComparison.Ordinal));
        return line?.Split('=') is [_, var value] && long.TryParse(value.Trim(), CultureInfo.InvariantCulture, out var number) ? number : null;
    }
}
