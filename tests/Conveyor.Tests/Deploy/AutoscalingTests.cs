using System.Globalization;
using System.Text;
using Conveyor.Worker.Messaging;
using k8s.Models;

namespace Conveyor.Tests.Deploy;

/// <summary>KEDA's ScaledObjects and what they point at.</summary>
public sealed class AutoscalingTests
{
    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Every_ScaledObject_targets_an_existing_Deployment_without_replicas(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);

        Overlays.AssertNone(rendered, "a ScaledObject must target a rendered Deployment that leaves spec.replicas to the autoscaler", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var scaled in rendered.ScaledObjects)
            {
                var target = scaled.Spec.ScaleTargetRef;
                if (target.Kind is not (null or "Deployment"))
                {
                    yield return $"ScaledObject/{scaled.Metadata.Name} targets a {target.Kind}; the worker is a Deployment";
                    continue;
                }

                var deployment = rendered.Deployments.FirstOrDefault(d => d.Metadata.Name == target.Name);
                if (deployment is null)
                {
                    yield return $"ScaledObject/{scaled.Metadata.Name} targets Deployment/{target.Name}, which is not rendered";
                }
                else if (deployment.Spec.Replicas is { } replicas)
                {
                    yield return $"Deployment/{target.Name} is autoscaled by ScaledObject/{scaled.Metadata.Name} but sets spec.replicas: {replicas} (every apply would reset the autoscaler)";
                }
            }

            foreach (var shared in rendered.ScaledObjects.GroupBy(s => s.Spec.ScaleTargetRef.Name).Where(g => g.Count() > 1))
            {
                yield return $"Deployment/{shared.Key} is the target of {shared.Count()} ScaledObjects ({string.Join(", ", shared.Select(s => s.Metadata.Name))}); KEDA allows one";
            }
        }
    }

    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Worker_triggers_cover_exactly_the_queues_the_worker_declares(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);
        var workerNames = rendered.DeploymentsOf("worker").Select(d => d.Deployment.Metadata.Name).ToHashSet();
        var workerScalers = rendered.ScaledObjects.Where(s => workerNames.Contains(s.Spec.ScaleTargetRef.Name)).ToList();
        if (workerScalers.Count == 0)
        {
            var strays = rendered.ScaledObjects.Where(s => s.Spec.Triggers.Any(t => t.Type == "rabbitmq")).Select(s => $"ScaledObject/{s.Metadata.Name}");
            Overlays.AssertNone(rendered, "queue triggers must scale a worker Deployment (app.kubernetes.io/component=worker)", strays);
            return;
        }

        var triggered = workerScalers.SelectMany(s => s.Spec.Triggers).Select(t => Metadata(t, "queueName") ?? "(none)").ToHashSet();
        var declared = WorkerEndpoints.Queues;

        Overlays.AssertNone(rendered, "the worker's triggers must watch every queue it consumes, and only those", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var missing in declared.Except(triggered).Order(StringComparer.Ordinal))
            {
                yield return $"queue {missing} is consumed by the worker but no trigger watches it: its backlog would never add pods";
            }

            foreach (var extra in triggered.Except(declared).Order(StringComparer.Ordinal))
            {
                yield return $"a trigger watches queue {extra}, which the worker does not declare (declared: {string.Join(", ", declared.Order(StringComparer.Ordinal))})";
            }
        }
    }

    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Triggers_count_ready_and_unacked_messages_over_http(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);

        Overlays.AssertNone(rendered, "rabbitmq triggers must use protocol http and mode QueueLength with a positive whole value, all as strings", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var (scaled, trigger) in Triggers(rendered))
            {
                var where = $"ScaledObject/{scaled.Metadata.Name} trigger {Metadata(trigger, "queueName") ?? trigger.Type}";
                if (trigger.Type != "rabbitmq")
                {
                    yield return $"{where}: type {trigger.Type}, expected rabbitmq";
                    continue;
                }

                foreach (var (key, raw) in trigger.Metadata.Where(m => m.Value is not string))
                {
                    yield return $"{where}: metadata {key} is {raw} ({raw.GetType().Name}); KEDA accepts strings only, quote it";
                }

                if (Metadata(trigger, "protocol") != "http")
                {
                    yield return $"{where}: protocol {Metadata(trigger, "protocol") ?? "(auto)"}; only http counts unacked messages";
                }

                if (Metadata(trigger, "mode") != "QueueLength")
                {
                    yield return $"{where}: mode {Metadata(trigger, "mode") ?? "(unset)"}, expected QueueLength";
                }

                if (!int.TryParse(Metadata(trigger, "value"), CultureInfo.InvariantCulture, out var value) || value < 1)
                {
                    yield return $"{where}: value {Metadata(trigger, "value") ?? "(unset)"} is not a positive whole number of messages";
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Trigger_value_is_at_least_the_prefetch_of_its_queue(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);

        Overlays.AssertNone(rendered, "a trigger's value must be >= the prefetch of its queue per pod, or pods holding a full prefetch with an empty queue still scale out", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var (scaled, endpoint, value, consumer) in QueueTriggers(rendered))
            {
                if (value < consumer.PrefetchCount)
                {
                    yield return $"ScaledObject/{scaled.Metadata.Name} queue {endpoint.Queue}: value {value} < Consumers__{endpoint.ConsumerName}__PrefetchCount {consumer.PrefetchCount}";
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Trigger_value_is_at_least_the_concurrency_of_its_queue(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);

        Overlays.AssertNone(rendered, "a trigger's value must be >= the ConcurrentMessageLimit of its queue per pod, or the autoscaler adds pods while a pod still has idle handlers", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var (scaled, endpoint, value, consumer) in QueueTriggers(rendered))
            {
                if (value < consumer.ConcurrentMessageLimit)
                {
                    yield return $"ScaledObject/{scaled.Metadata.Name} queue {endpoint.Queue}: value {value} < Consumers__{endpoint.ConsumerName}__ConcurrentMessageLimit {consumer.ConcurrentMessageLimit}";
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Trigger_vhost_is_the_one_the_worker_connects_to(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);

        Overlays.AssertNone(rendered, "a trigger must read the queue in the worker's RabbitMq__VirtualHost", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var (scaled, trigger) in Triggers(rendered))
            {
                var target = rendered.DeploymentsOf("worker").FirstOrDefault(d => d.Deployment.Metadata.Name == scaled.Spec.ScaleTargetRef.Name);
                if (target.Deployment is null)
                {
                    continue;
                }

                var vhost = AppConfiguration.Of(rendered, target.Workload, target.Workload.Pod.Containers[0])["RabbitMq:VirtualHost"];
                if (Metadata(trigger, "vhostName") != vhost)
                {
                    yield return $"ScaledObject/{scaled.Metadata.Name} queue {Metadata(trigger, "queueName")}: vhostName {Metadata(trigger, "vhostName") ?? "(unset)"}, worker uses {vhost}";
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Triggers_authenticate_with_a_management_url_from_a_secret(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);

        Overlays.AssertNone(rendered, "each trigger needs a TriggerAuthentication whose host is an http management URL from a Secret", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var (scaled, trigger) in Triggers(rendered))
            {
                var where = $"ScaledObject/{scaled.Metadata.Name} queue {Metadata(trigger, "queueName")}";
                if (trigger.Metadata.ContainsKey("host"))
                {
                    yield return $"{where}: host is in the trigger metadata; it belongs in a Secret behind a TriggerAuthentication";
                }

                if (trigger.AuthenticationRef is not { Kind: null or "TriggerAuthentication" } reference)
                {
                    yield return $"{where}: no authenticationRef to a TriggerAuthentication";
                    continue;
                }

                var authentication = rendered.TriggerAuthentications.FirstOrDefault(a => a.Metadata.Name == reference.Name);
                if (authentication is null)
                {
                    yield return $"{where}: TriggerAuthentication/{reference.Name} is not rendered";
                    continue;
                }

                var parameters = authentication.Spec.SecretTargetRef.ToDictionary(r => r.Parameter);
                if (!parameters.TryGetValue("host", out var host))
                {
                    yield return $"TriggerAuthentication/{reference.Name}: no host parameter from a Secret";
                    continue;
                }

                if (rendered.Secret(host.Name) is not { } secret)
                {
                    continue;
                }

                var url = SecretText(secret, host.Key);
                if (!Uri.TryCreate(url, UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https"))
                {
                    yield return $"Secret/{host.Name} key {host.Key}: '{url}' is not an http(s) management URL";
                }
                else
                {
                    if (string.IsNullOrEmpty(uri.UserInfo) && !(parameters.ContainsKey("username") && parameters.ContainsKey("password")))
                    {
                        yield return $"TriggerAuthentication/{reference.Name}: the host URL has no credentials, so username and password parameters are needed";
                    }

                    // KEDA resolves names from its own namespace: an in-cluster host must name the broker's Service and namespace.
                    var labels = uri.Host.Split('.');
                    var brokers = rendered.RabbitmqClusters.Select(c => c.Metadata.Name).ToList();
                    if (labels is [var service, var hostNamespace, "svc", ..])
                    {
                        if (hostNamespace != authentication.Metadata.NamespaceProperty)
                        {
                            yield return $"Secret/{host.Name}: {url} points into namespace {hostNamespace}, but the broker is deployed in {authentication.Metadata.NamespaceProperty}";
                        }

                        if (brokers.Count > 0 && !brokers.Contains(service))
                        {
                            yield return $"Secret/{host.Name}: {url} names Service {service}, not a rendered RabbitmqCluster ({string.Join(", ", brokers)})";
                        }
                    }
                    else if (brokers.Count > 0)
                    {
                        yield return $"Secret/{host.Name}: {url} is not the fully qualified name of the in-cluster broker (<service>.<namespace>.svc...); KEDA runs in another namespace";
                    }
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Autoscaled_worker_never_scales_to_zero(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);

        Overlays.AssertNone(rendered, "worker pods also dispatch scheduled redeliveries from PostgreSQL, which KEDA cannot see: keep minReplicaCount >= 1", Problems());

        IEnumerable<string> Problems()
        {
            var workers = rendered.DeploymentsOf("worker").Select(d => d.Deployment.Metadata.Name).ToHashSet();
            foreach (var scaled in rendered.ScaledObjects.Where(s => workers.Contains(s.Spec.ScaleTargetRef.Name)))
            {
                if (scaled.Spec.MinReplicaCount is not >= 1)
                {
                    yield return $"ScaledObject/{scaled.Metadata.Name}: minReplicaCount {scaled.Spec.MinReplicaCount?.ToString(CultureInfo.InvariantCulture) ?? "(unset, 0)"}";
                }

                if (scaled.Spec.MaxReplicaCount is { } max && max < (scaled.Spec.MinReplicaCount ?? 0))
                {
                    yield return $"ScaledObject/{scaled.Metadata.Name}: maxReplicaCount {max} < minReplicaCount {scaled.Spec.MinReplicaCount}";
                }
            }
        }
    }

    /// <summary>Each worker trigger with a whole value, its endpoint and that endpoint's settings in the target's pods.</summary>
    private static IEnumerable<(ScaledObject Scaled, WorkerEndpoint Endpoint, int Value, ConsumerEndpointOptions Consumer)> QueueTriggers(RenderedOverlay rendered)
    {
        foreach (var (scaled, trigger) in Triggers(rendered))
        {
            var endpoint = WorkerEndpoints.All.FirstOrDefault(e => e.Queue == Metadata(trigger, "queueName"));
            var target = rendered.DeploymentsOf("worker").FirstOrDefault(d => d.Deployment.Metadata.Name == scaled.Spec.ScaleTargetRef.Name);
            if (endpoint is null || target.Deployment is null
                || !int.TryParse(Metadata(trigger, "value"), CultureInfo.InvariantCulture, out var value))
            {
                continue;
            }

            var configuration = AppConfiguration.Of(rendered, target.Workload, target.Workload.Pod.Containers[0]);
            yield return (scaled, endpoint, value, configuration.Consumer(endpoint.ConsumerName));
        }
    }

    private static IEnumerable<(ScaledObject Scaled, ScaleTrigger Trigger)> Triggers(RenderedOverlay rendered) =>
        rendered.ScaledObjects.SelectMany(s => s.Spec.Triggers.Select(t => (s, t)));

    private static string? Metadata(ScaleTrigger trigger, string key) =>
        trigger.Metadata.TryGetValue(key, out var value) ? Convert.ToString(value, CultureInfo.InvariantCulture) : null;

    private static string SecretText(V1Secret secret, string key) =>
        secret.StringData?.TryGetValue(key, out var text) == true ? text
        : secret.Data?.TryGetValue(key, out var bytes) == true ? Encoding.UTF8.GetString(bytes)
        : "";
}
