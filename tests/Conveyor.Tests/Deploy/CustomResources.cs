using k8s;
using k8s.Models;

namespace Conveyor.Tests.Deploy;

/// <summary>
/// Models of the custom resources the overlays render, for strict parsing. KEDA's are typed
/// field by field, so a misspelt or misplaced field fails here rather than being dropped by the
/// cluster; a KEDA field not modelled yet must be added below before it is used. The operators'
/// clusters are parsed strictly at the top level only, their specs generically.
/// </summary>
internal static class CustomResources
{
    public static IDictionary<string, Type> TypeMap { get; } = new Dictionary<string, Type>
    {
        ["keda.sh/v1alpha1/ScaledObject"] = typeof(ScaledObject),
        ["keda.sh/v1alpha1/TriggerAuthentication"] = typeof(TriggerAuthentication),
        ["rabbitmq.com/v1beta1/RabbitmqCluster"] = typeof(RabbitmqCluster),
        ["postgresql.cnpg.io/v1/Cluster"] = typeof(CnpgCluster),
        ["monitoring.coreos.com/v1/PodMonitor"] = typeof(PodMonitor),
    };
}

public sealed class ScaledObject : IKubernetesObject<V1ObjectMeta>
{
    public string ApiVersion { get; set; } = "";
    public string Kind { get; set; } = "";
    public V1ObjectMeta Metadata { get; set; } = new();
    public ScaledObjectSpec Spec { get; set; } = new();
}

public sealed class ScaledObjectSpec
{
    public ScaleTargetRef ScaleTargetRef { get; set; } = new();
    public int? PollingInterval { get; set; }
    public int? CooldownPeriod { get; set; }
    public int? InitialCooldownPeriod { get; set; }
    public int? IdleReplicaCount { get; set; }
    public int? MinReplicaCount { get; set; }
    public int? MaxReplicaCount { get; set; }
    public ScaledObjectFallback? Fallback { get; set; }
    public ScaledObjectAdvanced? Advanced { get; set; }
    public List<ScaleTrigger> Triggers { get; set; } = [];
}

public sealed class ScaleTargetRef
{
    public string? ApiVersion { get; set; }
    public string? Kind { get; set; }
    public string Name { get; set; } = "";
    public string? EnvSourceContainerName { get; set; }
}

public sealed class ScaledObjectFallback
{
    public int FailureThreshold { get; set; }
    public int Replicas { get; set; }
    public string? Behavior { get; set; }
}

public sealed class ScaledObjectAdvanced
{
    public bool? RestoreToOriginalReplicaCount { get; set; }
    public HorizontalPodAutoscalerConfig? HorizontalPodAutoscalerConfig { get; set; }
}

public sealed class HorizontalPodAutoscalerConfig
{
    public string? Name { get; set; }
    public V2HorizontalPodAutoscalerBehavior? Behavior { get; set; }
}

public sealed class ScaleTrigger
{
    public string Type { get; set; } = "";
    public string? Name { get; set; }
    public string? MetricType { get; set; }
    public bool? UseCachedMetrics { get; set; }

    /// <summary>KEDA wants strings only; objects here keep an unquoted number visible to the tests.</summary>
    public Dictionary<string, object> Metadata { get; set; } = [];

    public AuthenticationRef? AuthenticationRef { get; set; }
}

public sealed class AuthenticationRef
{
    public string Name { get; set; } = "";
    public string? Kind { get; set; }
}

public sealed class TriggerAuthentication : IKubernetesObject<V1ObjectMeta>
{
    public string ApiVersion { get; set; } = "";
    public string Kind { get; set; } = "";
    public V1ObjectMeta Metadata { get; set; } = new();
    public TriggerAuthenticationSpec Spec { get; set; } = new();
}

public sealed class TriggerAuthenticationSpec
{
    public List<SecretTargetRef> SecretTargetRef { get; set; } = [];
    public List<ConfigMapTargetRef> ConfigMapTargetRef { get; set; } = [];
}

public sealed class SecretTargetRef
{
    public string Parameter { get; set; } = "";
    public string Name { get; set; } = "";
    public string Key { get; set; } = "";
}

public sealed class ConfigMapTargetRef
{
    public string Parameter { get; set; } = "";
    public string Name { get; set; } = "";
    public string Key { get; set; } = "";
}

/// <summary>The RabbitMQ Cluster Operator's cluster; it makes the Secret <c>&lt;name&gt;-default-user</c>.</summary>
public sealed class RabbitmqCluster : IKubernetesObject<V1ObjectMeta>
{
    public string ApiVersion { get; set; } = "";
    public string Kind { get; set; } = "";
    public V1ObjectMeta Metadata { get; set; } = new();
    public Dictionary<string, object> Spec { get; set; } = [];
}

/// <summary>CloudNativePG's cluster; it makes the Secret <c>&lt;name&gt;-app</c>.</summary>
public sealed class CnpgCluster : IKubernetesObject<V1ObjectMeta>
{
    public string ApiVersion { get; set; } = "";
    public string Kind { get; set; } = "";
    public V1ObjectMeta Metadata { get; set; } = new();
    public Dictionary<string, object> Spec { get; set; } = [];
}

/// <summary>The Prometheus Operator's PodMonitor, with the fields the overlays use.</summary>
public sealed class PodMonitor : IKubernetesObject<V1ObjectMeta>
{
    public string ApiVersion { get; set; } = "";
    public string Kind { get; set; } = "";
    public V1ObjectMeta Metadata { get; set; } = new();
    public PodMonitorSpec Spec { get; set; } = new();
}

public sealed class PodMonitorSpec
{
    public string? JobLabel { get; set; }
    public V1LabelSelector Selector { get; set; } = new();
    public List<PodMetricsEndpoint> PodMetricsEndpoints { get; set; } = [];
}

public sealed class PodMetricsEndpoint
{
    public string? Port { get; set; }
    public string? Path { get; set; }
    public string? Interval { get; set; }
    public string? ScrapeTimeout { get; set; }
}
