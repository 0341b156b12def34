using System.Collections.Concurrent;
using System.Text;
using System.Text.RegularExpressions;
using k8s;
using k8s.Models;
using YamlDotNet.Core;

namespace Conveyor.Tests.Deploy;

/// <summary>A pod template and what owns it (a Deployment or a Job).</summary>
public sealed record Workload(string Kind, string Name, V1PodTemplateSpec Template)
{
    public V1PodSpec Pod => Template.Spec;

    public string Component => Template.Metadata?.Labels?.TryGetValue(Labels.Component, out var value) == true ? value : "";

    public IEnumerable<V1Container> AllContainers => (Pod.InitContainers ?? []).Concat(Pod.Containers);

    public override string ToString() => $"{Kind}/{Name}";
}

/// <summary>
/// One overlay rendered by <c>kubectl kustomize</c>, split into its documents and each parsed
/// strictly: built-in kinds with KubernetesClient's models, custom resources with ours.
/// Rendered once per test run.
/// </summary>
public sealed partial class RenderedOverlay
{
    private static readonly ConcurrentDictionary<string, Lazy<RenderedOverlay>> Cache = new();

    private RenderedOverlay(string name, IReadOnlyList<object> objects)
    {
        Name = name;
        Objects = objects;
    }

    public string Name { get; }

    public IReadOnlyList<object> Objects { get; }

    public IEnumerable<V1Deployment> Deployments => Objects.OfType<V1Deployment>();

    public IEnumerable<V1Job> Jobs => Objects.OfType<V1Job>();

    public IEnumerable<V1ConfigMap> ConfigMaps => Objects.OfType<V1ConfigMap>();

    public IEnumerable<V1Secret> Secrets => Objects.OfType<V1Secret>();

    public IEnumerable<ScaledObject> ScaledObjects => Objects.OfType<ScaledObject>();

    public IEnumerable<TriggerAuthentication> TriggerAuthentications => Objects.OfType<TriggerAuthentication>();

    public IEnumerable<RabbitmqCluster> RabbitmqClusters => Objects.OfType<RabbitmqCluster>();

    public IEnumerable<CnpgCluster> CnpgClusters => Objects.OfType<CnpgCluster>();

    public IEnumerable<PodMonitor> PodMonitors => Objects.OfType<PodMonitor>();

    public IEnumerable<Workload> Workloads =>
        Deployments.Select(d => new Workload("Deployment", d.Metadata.Name, d.Spec.Template))
            .Concat(Jobs.Select(j => new Workload("Job", j.Metadata.Name, j.Spec.Template)));

    public IEnumerable<(V1Deployment Deployment, Workload Workload)> DeploymentsOf(string component) =>
        Deployments.Select(d => (d, new Workload("Deployment", d.Metadata.Name, d.Spec.Template)))
            .Where(pair => pair.Item2.Component == component);

    public static string OverlayDirectory(string overlay) => RepositoryRoot.Combine("deploy", "k8s", "overlays", overlay);

    public static RenderedOverlay Load(string overlay) =>
        Cache.GetOrAdd(overlay, name => new Lazy<RenderedOverlay>(() => Render(name))).Value;

    public V1ConfigMap? ConfigMap(string name) => ConfigMaps.FirstOrDefault(c => c.Metadata.Name == name);

    public V1Secret? Secret(string name) => Secrets.FirstOrDefault(s => s.Metadata.Name == name);

    /// <summary>
    /// A container's environment as Kubernetes builds it: <c>envFrom</c> first, then <c>env</c> in
    /// order, <c>$(VAR)</c> expanded from what is already defined. Values from Secrets stay unknown.
    /// </summary>
    public IReadOnlyDictionary<string, EnvValue> EnvironmentOf(V1Container container)
    {
        var environment = new Dictionary<string, EnvValue>(StringComparer.Ordinal);
        foreach (var source in container.EnvFrom ?? [])
        {
            if (source.ConfigMapRef is { } configMapRef && ConfigMap(configMapRef.Name) is { Data: { } data })
            {
                foreach (var (key, value) in data)
                {
                    environment[(source.Prefix ?? "") + key] = EnvValue.Literal(value);
                }
            }

            if (source.SecretRef is { } secretRef && Secret(secretRef.Name) is { } secret)
            {
                foreach (var key in (secret.Data?.Keys ?? []).Concat(secret.StringData?.Keys ?? []))
                {
                    environment[(source.Prefix ?? "") + key] = EnvValue.FromSecret(secretRef.Name, key);
                }
            }
        }

        foreach (var variable in container.Env ?? [])
        {
            if (variable.ValueFrom?.SecretKeyRef is { } secretKey)
            {
                environment[variable.Name] = EnvValue.FromSecret(secretKey.Name, secretKey.Key);
            }
            else if (variable.ValueFrom?.ConfigMapKeyRef is { } configMapKey)
            {
                var value = ConfigMap(configMapKey.Name)?.Data?.TryGetValue(configMapKey.Key, out var found) == true ? found : null;
                environment[variable.Name] = value is null ? EnvValue.Unknown : EnvValue.Literal(value);
            }
            else if (variable.ValueFrom is not null)
            {
                environment[variable.Name] = EnvValue.Unknown;
            }
            else
            {
                environment[variable.Name] = EnvValue.Literal(Expand(variable.Value ?? "", environment));
            }
        }

        return environment;
    }

    private static string Expand(string value, Dictionary<string, EnvValue> defined) =>
        VariableReference().Replace(value, match =>
            match.Value.StartsWith("$$", StringComparison.Ordinal) ? match.Value[1..]
            : defined.TryGetValue(match.Groups["name"].Value, out var known) ? known.Text
            : match.Value);

    /// <summary><c>$(NAME)</c>, or the escaped <c>$$(NAME)</c> that Kubernetes leaves as text.</summary>
    [GeneratedRegex(@"\$?\$\((?<name>[^)]+)\)")]
    internal static partial Regex VariableReference();

    [GeneratedRegex(@"^---[ \t]*\r?$", RegexOptions.Multiline)]
    private static partial Regex DocumentSeparator();

    [GeneratedRegex(@"^kind:\s*(?<kind>\S+)", RegexOptions.Multiline)]
    private static partial Regex KindLine();

    [GeneratedRegex(@"^  name:\s*(?<name>\S+)", RegexOptions.Multiline)]
    private static partial Regex NameLine();

    private static RenderedOverlay Render(string overlay)
    {
        var yaml = Kubectl.Kustomize(OverlayDirectory(overlay));
        var documents = DocumentSeparator().Split(yaml).Where(d => !string.IsNullOrWhiteSpace(d)).ToList();
        Assert.True(documents.Count > 0, $"overlays/{overlay} rendered no objects");

        var objects = new List<object>();
        foreach (var document in documents)
        {
            var what = $"{KindLine().Match(document).Groups["kind"].Value}/{NameLine().Match(document).Groups["name"].Value}";
            try
            {
                objects.AddRange(KubernetesYaml.LoadAllFromString(document, CustomResources.TypeMap, strict: true));
            }
            catch (KeyNotFoundException)
            {
                Assert.Fail($"overlays/{overlay}: {what} has an apiVersion/kind with no model; add one to CustomResources.TypeMap");
            }
            catch (YamlException e)
            {
                Assert.Fail($"overlays/{overlay}: {what} does not match its schema: {e.Message}{Inner(e)}");
            }
        }

        return new RenderedOverlay(overlay, objects);
    }

    private static string Inner(Exception e)
    {
        var text = new StringBuilder();
        for (var inner = e.InnerException; inner is not null; inner = inner.InnerException)
        {
            text.Append(" <- ").Append(inner.Message);
        }

        return text.ToString();
    }
}

/// <summary>An environment variable's value: known text, or a reference to a Secret key.</summary>
public sealed record EnvValue(string? Value, string? SecretName, string? SecretKey)
{
    public static EnvValue Unknown { get; } = new(null, null, null);

    public bool IsFromSecret => SecretName is not null;

    /// <summary>The value, or a stand-in naming its Secret; never null, so it can feed a configuration.</summary>
    public string Text => Value ?? (IsFromSecret ? $"secret.{SecretName}.{SecretKey}" : "unknown");

    public static EnvValue Literal(string value) => new(value, null, null);

    public static EnvValue FromSecret(string name, string key) => new(null, name, key);
}

/// <summary>The recommended labels the manifests use.</summary>
public static class Labels
{
    public const string Name = "app.kubernetes.io/name";
    public const string Component = "app.kubernetes.io/component";
    public const string PartOf = "app.kubernetes.io/part-of";
    public const string ManagedBy = "app.kubernetes.io/managed-by";
}
