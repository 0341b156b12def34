using k8s.Models;

namespace Conveyor.Tests.Deploy;

internal static class Selectors
{
    /// <summary>Whether a label selector picks an object with these labels (an empty selector picks all).</summary>
    public static bool Matches(this V1LabelSelector? selector, IDictionary<string, string>? labels)
    {
        labels ??= new Dictionary<string, string>();
        if (selector is null)
        {
            return true;
        }

        var matchLabels = (selector.MatchLabels ?? new Dictionary<string, string>())
            .All(pair => labels.TryGetValue(pair.Key, out var value) && value == pair.Value);
        var matchExpressions = (selector.MatchExpressions ?? []).All(e => e.OperatorProperty switch
        {
            "In" => labels.TryGetValue(e.Key, out var value) && (e.Values ?? []).Contains(value),
            "NotIn" => !labels.TryGetValue(e.Key, out var value) || !(e.Values ?? []).Contains(value),
            "Exists" => labels.ContainsKey(e.Key),
            "DoesNotExist" => !labels.ContainsKey(e.Key),
            _ => false,
        });
        return matchLabels && matchExpressions;
    }

    /// <summary>Whether a Service-style selector (a plain label map) picks an object with these labels.</summary>
    public static bool Matches(this IDictionary<string, string>? selector, IDictionary<string, string>? labels) =>
        selector is { Count: > 0 } && selector.All(pair => labels?.TryGetValue(pair.Key, out var value) == true && value == pair.Value);

    /// <summary>A port given by number or by a container port's name, as a number; null if it names nothing.</summary>
    public static int? Resolve(this IntOrString? port, V1Container container)
    {
        if (port?.Value is not { } value)
        {
            return null;
        }

        if (int.TryParse(value, System.Globalization.CultureInfo.InvariantCulture, out var number))
        {
            return number;
        }

        return container.Ports?.FirstOrDefault(p => p.Name == value)?.ContainerPort;
    }
}
