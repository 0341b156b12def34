using System.Globalization;

namespace Conveyor.Tests.Observability;

/// <summary>Reads samples out of a Prometheus text exposition, as scraped from <c>/metrics</c>.</summary>
internal static class PrometheusText
{
    /// <summary>The sample lines of <paramref name="name"/> whose labels include every one of <paramref name="labels"/>.</summary>
    public static List<string> Samples(string exposition, string name, params string[] labels) =>
        [.. exposition.Split('\n')
            .Where(line => line.StartsWith(name + "{", StringComparison.Ordinal) && labels.All(label => line.Contains(label, StringComparison.Ordinal)))];

    /// <summary>The sum of the samples of <paramref name="name"/> whose labels include every one of <paramref name="labels"/>.</summary>
    public static double Sum(string exposition, string name, params string[] labels) =>
        Samples(exposition, name, labels)
            .Sum(line => double.Parse(line[(line.LastIndexOf('}') + 1)..].Trim().Split(' ')[0], CultureInfo.InvariantCulture));
}
