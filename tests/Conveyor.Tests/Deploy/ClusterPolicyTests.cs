using System.Globalization;
using System.Net;
using Conveyor.ServiceDefaults;
using k8s;
using k8s.Models;

namespace Conveyor.Tests.Deploy;

/// <summary>Disruption budgets, network policies, Services and labels fit the pods they are about.</summary>
public sealed class ClusterPolicyTests
{
    private static readonly string[] PolicyTypes = ["Ingress", "Egress"];

    private static readonly string[] PodLabels = [Labels.Name, Labels.Component, Labels.PartOf];

    /// <summary>
    /// Destinations inside the cluster's own network (pods, nodes, cloud metadata, loopback), and the same IPv4
    /// ones behind NAT64 (64:ff9b::/96, and its local-use 64:ff9b:1::/48): on an IPv6-only cluster the network's
    /// NAT64 translator delivers such an address to the IPv4 host it embeds, in the cluster's network.
    /// </summary>
    private static readonly string[] InternalAddresses =
    [
        "10.0.0.1", "172.16.0.1", "192.168.0.1", "100.64.0.1", "169.254.169.254", "127.0.0.1",
        "fd00:ec2::254", "fe80::1", "::1",
        "64:ff9b::a00:1", "64:ff9b::ac10:1", "64:ff9b::c0a8:1", "64:ff9b::6440:1", "64:ff9b::a9fe:a9fe", "64:ff9b::7f00:1",
        "64:ff9b:1:a00:1::",
    ];

    /// <summary>Public receivers, over IPv4, IPv6 and NAT64 (an IPv4-only receiver seen from an IPv6-only cluster).</summary>
    private static readonly string[] PublicAddresses = ["93.184.216.34", "2606:4700::1", "64:ff9b::5db8:d822"];

    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Every_deployment_has_a_disruption_budget(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);
        var budgets = rendered.Objects.OfType<V1PodDisruptionBudget>().ToList();

        Overlays.AssertNone(rendered, "each Deployment's pods need a PodDisruptionBudget, so a node drain takes them a few at a time", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var workload in rendered.Workloads.Where(w => w.Kind == "Deployment"))
            {
                var covering = budgets.Where(b => b.Spec.Selector is not null && b.Spec.Selector.Matches(workload.Template.Metadata.Labels)).ToList();
                if (covering.Count != 1)
                {
                    yield return $"{workload}: {covering.Count} PodDisruptionBudgets select its pods, expected 1";
                }
                else if (covering[0].Spec is { MinAvailable: null, MaxUnavailable: null })
                {
                    yield return $"{workload}: PodDisruptionBudget/{covering[0].Metadata.Name} sets neither minAvailable nor maxUnavailable";
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Every_pod_is_governed_by_a_network_policy_for_both_directions(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);
        var policies = rendered.Objects.OfType<V1NetworkPolicy>().ToList();

        Overlays.AssertNone(rendered, "each pod must be selected by NetworkPolicies covering Ingress and Egress", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var workload in rendered.Workloads)
            {
                var types = policies.Where(p => p.Spec.PodSelector.Matches(workload.Template.Metadata.Labels))
                    .SelectMany(p => p.Spec.PolicyTypes ?? []).ToHashSet();
                foreach (var missing in PolicyTypes.Where(t => !types.Contains(t)))
                {
                    yield return $"{workload}: no NetworkPolicy restricts its {missing}";
                }
            }
        }
    }

    /// <summary>
    /// The worker's egress to the payment gateway and webhook receivers is open to public addresses only, so a
    /// webhook URL cannot reach inside the cluster even where the worker's own check is turned off
    /// (<c>Webhooks:AllowPrivateNetworks</c>): whatever <see cref="NetworkAddresses.IsPublic"/> refuses, no ipBlock
    /// admits, and public receivers stay reachable.
    /// </summary>
    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Egress_by_address_reaches_public_addresses_only(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);
        var blocks = rendered.Objects.OfType<V1NetworkPolicy>()
            .SelectMany(p => (p.Spec.Egress ?? []).SelectMany(rule => rule.To ?? []).Where(peer => peer.IpBlock is not null)
                .Select(peer => (Policy: p.Metadata.Name, Block: peer.IpBlock)))
            .ToList();

        Overlays.AssertNone(rendered, "an egress ipBlock must admit no address the worker counts as internal, and admit public ones", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var text in InternalAddresses)
            {
                var address = IPAddress.Parse(text);
                Assert.False(NetworkAddresses.IsPublic(address), $"{text} is meant to be internal");
                foreach (var (policy, block) in blocks.Where(b => Admits(b.Block, address)))
                {
                    yield return $"NetworkPolicy/{policy}: ipBlock {block.Cidr} admits the internal address {text}";
                }
            }

            foreach (var policy in blocks.Select(b => b.Policy).Distinct())
            {
                foreach (var text in PublicAddresses.Where(text => !blocks.Any(b => b.Policy == policy && Admits(b.Block, IPAddress.Parse(text)))))
                {
                    yield return $"NetworkPolicy/{policy}: no ipBlock admits the public address {text}";
                }
            }
        }

        static bool Admits(V1IPBlock block, IPAddress address) =>
            IPNetwork.Parse(block.Cidr).Contains(address) && !(block.Except ?? []).Any(except => IPNetwork.Parse(except).Contains(address));
    }

    /// <summary>
    /// Each pod reaches the broker's pods on the ports its process uses: AMQP for the Api and the worker, and the
    /// management API (15672, and 15671, the operator's TLS listener for it) for the Api alone, which lists error queues
    /// and reads alarms there. The worker never
    /// calls the management API; with the operator's default user, an administrator, that port would let a
    /// compromised worker manage users, permissions and policies. The migration Job needs no broker at all.
    /// </summary>
    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Pods_reach_the_broker_only_on_the_ports_they_use(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);
        var brokerPods = new Dictionary<string, string> { [Labels.Name] = "conveyor-rabbitmq" };
        var expected = new Dictionary<string, int[]>(StringComparer.Ordinal)
        {
            ["api"] = [5672, 15671, 15672],
            ["worker"] = [5672],
            ["migrations"] = [],
        };

        Overlays.AssertNone(rendered, "egress to the broker's pods must admit exactly the ports the pod's process uses", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var workload in rendered.Workloads)
            {
                var admitted = rendered.Objects.OfType<V1NetworkPolicy>()
                    .Where(p => p.Spec.PodSelector.Matches(workload.Template.Metadata.Labels))
                    .SelectMany(p => p.Spec.Egress ?? [])
                    .Where(rule => (rule.To ?? []).Any(peer => peer.IpBlock is null && peer.NamespaceSelector is null && peer.PodSelector.Matches(brokerPods)))
                    .SelectMany(rule => (rule.Ports ?? []).Select(port => int.Parse(port.Port.Value, CultureInfo.InvariantCulture)))
                    .Order()
                    .Distinct()
                    .ToList();
                var wanted = expected.GetValueOrDefault(workload.Component, []);
                if (!admitted.SequenceEqual(wanted))
                {
                    yield return $"{workload}: broker ports [{string.Join(", ", admitted)}], expected [{string.Join(", ", wanted)}]";
                }
            }
        }
    }

    /// <summary>
    /// The Api reaches the management API wherever its settings put it (<see cref="RabbitMqOptions.ManagementApiAddress"/>):
    /// <c>RabbitMq__ManagementPort</c> or the port of <c>RabbitMq__ManagementUrl</c> as its ConfigMap sets them, and the
    /// https URL of the broker's own TLS listener. Its policy admitted 15672 alone, so an https management URL on the
    /// broker left the Api unable to list error queues or read alarms. An ingress's address is the overlay's to admit,
    /// for its controller only: the base opens no port to every pod of the cluster.
    /// </summary>
    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void The_Api_reaches_the_management_API_wherever_its_settings_put_it(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);
        var brokerPods = new Dictionary<string, string> { [Labels.Name] = "conveyor-rabbitmq" };

        Overlays.AssertNone(rendered, "the Api's egress must admit the management API's address its settings may give", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var (_, workload) in rendered.DeploymentsOf("api"))
            {
                var rules = rendered.Objects.OfType<V1NetworkPolicy>()
                    .Where(p => p.Spec.PodSelector.Matches(workload.Template.Metadata.Labels))
                    .SelectMany(p => p.Spec.Egress ?? [])
                    .ToList();
                var configuration = AppConfiguration.Of(rendered, workload, workload.Pod.Containers[0]);
                var configured = new RabbitMqOptions
                {
                    Host = "conveyor-rabbitmq",
                    ManagementPort = int.Parse(configuration["RabbitMq:ManagementPort"] ?? "15672", CultureInfo.InvariantCulture),
                    ManagementUrl = configuration["RabbitMq:ManagementUrl"],
                };
                foreach (var address in new[]
                {
                    configured.ManagementApiAddress(),
                    new RabbitMqOptions { ManagementUrl = "https://conveyor-rabbitmq:15671/" }.ManagementApiAddress(),
                })
                {
                    if (!Admits(rules, address.Port, peer => peer.NamespaceSelector is null && peer.PodSelector.Matches(brokerPods)))
                    {
                        yield return $"{workload}: no egress to the broker's pods on {address.Port} for {address}";
                    }
                }
            }
        }

        static bool Admits(List<V1NetworkPolicyEgressRule> rules, int port, Func<V1NetworkPolicyPeer, bool> peer) =>
            rules.Any(rule => (rule.To is not { Count: > 0 } || rule.To.Any(p => p.IpBlock is null && peer(p)))
                && (rule.Ports is not { Count: > 0 } || rule.Ports.Any(p => (p.Protocol ?? "TCP") == "TCP" && p.Port?.Value == port.ToString(CultureInfo.InvariantCulture))));
    }

    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Every_service_selects_pods_and_targets_a_declared_port(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);

        Overlays.AssertNone(rendered, "a Service must select pods and target a port their containers declare", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var service in rendered.Objects.OfType<V1Service>())
            {
                var selected = rendered.Workloads.Where(w => service.Spec.Selector.Matches(w.Template.Metadata.Labels)).ToList();
                if (selected.Count == 0)
                {
                    yield return $"Service/{service.Metadata.Name}: its selector matches no pod template";
                }

                foreach (var port in service.Spec.Ports ?? [])
                {
                    var target = port.TargetPort ?? port.Port;
                    foreach (var workload in selected.Where(w => !w.Pod.Containers.Any(c => target.Resolve(c) is { } number && (c.Ports ?? []).Any(p => p.ContainerPort == number))))
                    {
                        yield return $"Service/{service.Metadata.Name} port {port.Name}: targetPort {target.Value} is not a container port of {workload}";
                    }
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Objects_carry_the_recommended_labels(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);

        Overlays.AssertNone(rendered, $"every object needs {Labels.PartOf}=conveyor; pod templates also {Labels.Name} and {Labels.Component}", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var item in rendered.Objects)
            {
                var metadata = ((IKubernetesObject<V1ObjectMeta>)item).Metadata;
                if (metadata?.Labels?.TryGetValue(Labels.PartOf, out var partOf) != true || partOf != "conveyor")
                {
                    yield return $"{item.GetType().Name}/{metadata?.Name}: no {Labels.PartOf}=conveyor";
                }
            }

            foreach (var workload in rendered.Workloads)
            {
                foreach (var label in PodLabels)
                {
                    if (workload.Template.Metadata?.Labels?.ContainsKey(label) != true)
                    {
                        yield return $"{workload}: pod template has no {label}";
                    }
                }
            }
        }
    }
}
