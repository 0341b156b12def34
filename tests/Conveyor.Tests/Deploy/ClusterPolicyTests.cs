using k8s;
using k8s.Models;

namespace Conveyor.Tests.Deploy;

/// <summary>Disruption budgets, network policies, Services and labels fit the pods they are about.</summary>
public sealed class ClusterPolicyTests
{
    private static readonly string[] PolicyTypes = ["Ingress", "Egress"];

    private static readonly string[] PodLabels = [Labels.Name, Labels.Component, Labels.PartOf];

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
