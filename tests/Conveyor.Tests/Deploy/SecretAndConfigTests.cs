using System.Text.RegularExpressions;

namespace Conveyor.Tests.Deploy;

/// <summary>Credentials come from Secrets (ours or the operators'), never from a ConfigMap or a literal.</summary>
public sealed partial class SecretAndConfigTests
{
    /// <summary>The keys of the Secrets the operators make, by the suffix they add to their cluster's name.</summary>
    private static readonly string[] RabbitMqDefaultUserKeys = ["username", "password", "host", "port", "connection_string", "provider", "type", "default_user.conf"];
    private static readonly string[] CnpgAppKeys = ["username", "password", "host", "port", "dbname", "uri", "jdbc-uri", "pgpass", "fqdn-uri", "fqdn-jdbc-uri"];

    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Every_referenced_secret_is_rendered_or_made_by_an_operator(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);
        var operatorSecrets = rendered.RabbitmqClusters.Select(c => (Name: $"{c.Metadata.Name}-default-user", Keys: RabbitMqDefaultUserKeys))
            .Concat(rendered.CnpgClusters.Select(c => (Name: $"{c.Metadata.Name}-app", Keys: CnpgAppKeys)))
            .ToDictionary(s => s.Name, s => s.Keys);

        Overlays.AssertNone(rendered, $"every Secret reference must name a rendered Secret or an operator-made one ({string.Join(", ", operatorSecrets.Keys)}), and a key it has", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var (where, name, key) in SecretReferences(rendered))
            {
                if (rendered.Secret(name) is { } secret)
                {
                    var keys = (secret.Data?.Keys ?? []).Concat(secret.StringData?.Keys ?? []).ToHashSet();
                    if (key is not null && !keys.Contains(key))
                    {
                        yield return $"{where}: Secret/{name} has no key {key} (it has {string.Join(", ", keys)})";
                    }
                }
                else if (operatorSecrets.TryGetValue(name, out var keys))
                {
                    if (key is not null && !keys.Contains(key))
                    {
                        yield return $"{where}: the operator's Secret/{name} has no key {key} (it has {string.Join(", ", keys)})";
                    }
                }
                else
                {
                    yield return $"{where}: Secret/{name} is neither rendered nor made by an operator in this overlay";
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Every_referenced_config_map_is_rendered_with_the_key(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);

        Overlays.AssertNone(rendered, "every ConfigMap reference must name a rendered ConfigMap and a key it has", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var (where, name, key, optional) in ConfigMapReferences(rendered))
            {
                if (rendered.ConfigMap(name) is not { } configMap)
                {
                    if (!optional)
                    {
                        yield return $"{where}: ConfigMap/{name} is not rendered";
                    }
                }
                else if (key is not null && configMap.Data?.ContainsKey(key) != true && !optional)
                {
                    yield return $"{where}: ConfigMap/{name} has no key {key}";
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void No_config_map_holds_a_credential(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);

        Overlays.AssertNone(rendered, "ConfigMaps are readable by anyone who can read the namespace: no passwords, secrets, keys, tokens or connection strings", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var configMap in rendered.ConfigMaps)
            {
                foreach (var (key, value) in configMap.Data ?? new Dictionary<string, string>())
                {
                    if (CredentialName().IsMatch(key))
                    {
                        yield return $"ConfigMap/{configMap.Metadata.Name}: key {key} looks like a credential";
                    }

                    if (CredentialValue().IsMatch(value))
                    {
                        yield return $"ConfigMap/{configMap.Metadata.Name}: the value of {key} carries a password or URL credentials";
                    }
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Credentials_reach_containers_only_from_secrets(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);

        Overlays.AssertNone(rendered, "a credential in a container's environment must come from a secretKeyRef (directly or as a $(VAR) from one)", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var workload in rendered.Workloads)
            {
                foreach (var container in workload.AllContainers)
                {
                    var environment = rendered.EnvironmentOf(container);
                    foreach (var variable in container.Env ?? [])
                    {
                        var where = $"{workload}/{container.Name} env {variable.Name}";
                        var password = PasswordSetting().Match(variable.Value ?? "");
                        var reference = RenderedOverlay.VariableReference().Match(password.Groups["value"].Value);
                        var passwordFromSecret = password.Success && reference.Success
                            && environment.TryGetValue(reference.Groups["name"].Value, out var source) && source.IsFromSecret;
                        if (password.Success && !passwordFromSecret)
                        {
                            yield return $"{where}: its Password= is not a $(VAR) taken from a Secret";
                        }
                        else if (CredentialName().IsMatch(variable.Name) && variable.ValueFrom?.SecretKeyRef is null && !passwordFromSecret)
                        {
                            yield return $"{where}: looks like a credential but is not a secretKeyRef";
                        }
                    }
                }
            }
        }
    }

    [Theory]
    [MemberData(nameof(Overlays.All), MemberType = typeof(Overlays))]
    public void Variable_references_name_variables_defined_before_them(string overlay)
    {
        var rendered = RenderedOverlay.Load(overlay);

        Overlays.AssertNone(rendered, "Kubernetes expands $(VAR) only from variables defined earlier (envFrom, then env above); anything else stays literal text", Problems());

        IEnumerable<string> Problems()
        {
            foreach (var workload in rendered.Workloads)
            {
                foreach (var container in workload.AllContainers)
                {
                    var defined = new HashSet<string>(StringComparer.Ordinal);
                    foreach (var source in container.EnvFrom ?? [])
                    {
                        var keys = source.ConfigMapRef is { } c ? rendered.ConfigMap(c.Name)?.Data?.Keys
                            : source.SecretRef is { } s ? rendered.Secret(s.Name)?.Data?.Keys
                            : null;
                        defined.UnionWith((keys ?? []).Select(k => (source.Prefix ?? "") + k));
                    }

                    foreach (var variable in container.Env ?? [])
                    {
                        foreach (Match reference in RenderedOverlay.VariableReference().Matches(variable.Value ?? ""))
                        {
                            if (!reference.Value.StartsWith("$$", StringComparison.Ordinal) && !defined.Contains(reference.Groups["name"].Value))
                            {
                                yield return $"{workload}/{container.Name} env {variable.Name}: {reference.Value} is not defined above it";
                            }
                        }

                        defined.Add(variable.Name);
                    }
                }
            }
        }
    }

    private static IEnumerable<(string Where, string Name, string? Key)> SecretReferences(RenderedOverlay rendered)
    {
        foreach (var workload in rendered.Workloads)
        {
            foreach (var container in workload.AllContainers)
            {
                foreach (var variable in container.Env ?? [])
                {
                    if (variable.ValueFrom?.SecretKeyRef is { Optional: not true } secretKey)
                    {
                        yield return ($"{workload}/{container.Name} env {variable.Name}", secretKey.Name, secretKey.Key);
                    }
                }

                foreach (var source in container.EnvFrom ?? [])
                {
                    if (source.SecretRef is { Optional: not true } secretRef)
                    {
                        yield return ($"{workload}/{container.Name} envFrom", secretRef.Name, null);
                    }
                }
            }

            foreach (var volume in workload.Pod.Volumes ?? [])
            {
                if (volume.Secret is { Optional: not true } secret)
                {
                    yield return ($"{workload} volume {volume.Name}", secret.SecretName, null);
                }

                foreach (var projected in volume.Projected?.Sources ?? [])
                {
                    if (projected.Secret is { Optional: not true } projectedSecret)
                    {
                        yield return ($"{workload} volume {volume.Name}", projectedSecret.Name, null);
                    }
                }
            }

            foreach (var pullSecret in workload.Pod.ImagePullSecrets ?? [])
            {
                yield return ($"{workload} imagePullSecrets", pullSecret.Name, null);
            }
        }

        foreach (var authentication in rendered.TriggerAuthentications)
        {
            foreach (var target in authentication.Spec.SecretTargetRef)
            {
                yield return ($"TriggerAuthentication/{authentication.Metadata.Name} parameter {target.Parameter}", target.Name, target.Key);
            }
        }
    }

    private static IEnumerable<(string Where, string Name, string? Key, bool Optional)> ConfigMapReferences(RenderedOverlay rendered)
    {
        foreach (var workload in rendered.Workloads)
        {
            foreach (var container in workload.AllContainers)
            {
                foreach (var variable in container.Env ?? [])
                {
                    if (variable.ValueFrom?.ConfigMapKeyRef is { } key)
                    {
                        yield return ($"{workload}/{container.Name} env {variable.Name}", key.Name, key.Key, key.Optional == true);
                    }
                }

                foreach (var source in container.EnvFrom ?? [])
                {
                    if (source.ConfigMapRef is { } configMapRef)
                    {
                        yield return ($"{workload}/{container.Name} envFrom", configMapRef.Name, null, configMapRef.Optional == true);
                    }
                }
            }

            foreach (var volume in workload.Pod.Volumes ?? [])
            {
                if (volume.ConfigMap is { } configMap)
                {
                    yield return ($"{workload} volume {volume.Name}", configMap.Name, null, configMap.Optional == true);
                }
            }
        }

        foreach (var authentication in rendered.TriggerAuthentications)
        {
            foreach (var target in authentication.Spec.ConfigMapTargetRef)
            {
                yield return ($"TriggerAuthentication/{authentication.Metadata.Name} parameter {target.Parameter}", target.Name, target.Key, false);
            }
        }
    }

    [GeneratedRegex("pass(word|wd)|secret|api[-_]?key|token|credential|private[-_]?key|connection[-_]?strings?", RegexOptions.IgnoreCase)]
    private static partial Regex CredentialName();

    [GeneratedRegex(@"(pass(word|wd)|pwd)\s*=\s*[^;\s]|://[^/\s:@]+:[^/\s@]+@", RegexOptions.IgnoreCase)]
    private static partial Regex CredentialValue();

    [GeneratedRegex(@"(^|;)\s*(password|pwd)\s*=\s*(?<value>[^;]*)", RegexOptions.IgnoreCase)]
    private static partial Regex PasswordSetting();
}
