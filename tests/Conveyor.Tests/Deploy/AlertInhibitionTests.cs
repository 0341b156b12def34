using System.Text.RegularExpressions;
using YamlDotNet.RepresentationModel;

namespace Conveyor.Tests.Deploy;

/// <summary>
/// The Alertmanager inhibition rules shipped beside the alert rules (<c>deploy/monitoring/alertmanager-inhibit.yaml</c>)
/// fit those rules. Alertmanager checks none of it when it loads them: a rule naming an alert that does not exist
/// mutes nothing; one whose <c>equal</c> names a label one side lacks compares its value with an empty one and never
/// mutes; one that omits a label both sides keep lets one queue's alert mute every other queue's; a warning muting a
/// critical alert hides a page; and an alert on both sides of a rule (which Alertmanager then never mutes by another
/// alert on both sides) says nothing about a cause.
/// </summary>
public sealed partial class AlertInhibitionTests
{
    /// <summary>
    /// Labels no rule produces that Prometheus may add to every alert (external labels, the Prometheus Operator's
    /// enforced namespace label): an operator running several Conveyor deployments into one Alertmanager adds
    /// theirs to <c>equal</c>, as the file says.
    /// </summary>
    private static readonly string[] OperatorLabels = ["namespace", "cluster"];

    /// <summary>The severities of the alert rules, least first.</summary>
    private static readonly string[] Severities = ["info", "warning", "critical"];

    private static readonly string[] RuleKeys = ["source_matchers", "target_matchers", "equal"];

    [Fact]
    public void Every_inhibition_names_alerts_of_the_rules_and_none_mutes_itself()
    {
        var alerts = AlertRules();
        var problems = new List<string>();
        foreach (var rule in InhibitRules())
        {
            var unknown = rule.Sources.Concat(rule.Targets).Where(name => !alerts.ContainsKey(name)).Distinct().ToList();
            if (unknown.Count > 0)
            {
                problems.Add($"{rule}: alerts.yaml defines no {string.Join(", ", unknown)}");
            }

            if (rule.Sources.Intersect(rule.Targets).ToList() is { Count: > 0 } both)
            {
                problems.Add($"{rule}: {string.Join(", ", both)} would mute itself");
            }
        }

        Assert.True(problems.Count == 0, string.Join('\n', problems));
    }

    [Fact]
    public void A_source_is_at_least_as_severe_as_the_alerts_it_mutes()
    {
        var alerts = AlertRules();
        var problems = new List<string>();
        foreach (var rule in InhibitRules())
        {
            foreach (var (source, target) in Pairs(rule, alerts))
            {
                if (Rank(source) < Rank(target))
                {
                    problems.Add($"{rule}: {source.Name} ({source.Severity}) would mute {target.Name} ({target.Severity})");
                }
            }
        }

        Assert.True(problems.Count == 0, string.Join('\n', problems));
    }

    [Fact]
    public void Equal_holds_exactly_the_labels_both_alerts_keep()
    {
        var alerts = AlertRules();
        // The derivation itself: a per-queue alert keeps queue, one aggregated to nothing keeps nothing.
        Assert.Equal("queue", Assert.Single(Assert.IsAssignableFrom<IReadOnlyList<string>>(alerts["ConveyorNoConsumers"].Keeps)));
        Assert.Empty(Assert.IsAssignableFrom<IReadOnlyList<string>>(alerts["ConveyorWorkersAbsent"].Keeps));

        var problems = new List<string>();
        foreach (var rule in InhibitRules())
        {
            foreach (var (source, target) in Pairs(rule, alerts))
            {
                if (source.Keeps is null || target.Keeps is null)
                {
                    problems.Add($"{rule}: cannot tell which labels {(source.Keeps is null ? source.Name : target.Name)} keeps from its expression");
                    continue;
                }

                foreach (var label in rule.Equal.Except(OperatorLabels).Where(l => !source.Keeps.Contains(l) || !target.Keeps.Contains(l)))
                {
                    problems.Add($"{rule}: equal holds {label}, which {(source.Keeps.Contains(label) ? target.Name : source.Name)} does not keep, so {source.Name} never mutes {target.Name}");
                }

                foreach (var label in source.Keeps.Intersect(target.Keeps).Where(l => !rule.Equal.Contains(l)))
                {
                    problems.Add($"{rule}: equal leaves out {label}, which both keep, so {source.Name} of one {label} mutes {target.Name} of every {label}");
                }
            }
        }

        Assert.True(problems.Count == 0, string.Join('\n', problems));
    }

    /// <summary>One alert rule of <c>alerts.yaml</c>: its severity and the labels its alerts keep (null if unknown).</summary>
    private sealed record Alert(string Name, string Severity, IReadOnlyList<string>? Keeps);

    /// <summary>One entry of <c>inhibit_rules</c>: the alert names its matchers select.</summary>
    private sealed record InhibitRule(int Index, IReadOnlyList<string> Sources, IReadOnlyList<string> Targets, IReadOnlyList<string> Equal)
    {
        public override string ToString() => $"inhibit_rules[{Index}] ({string.Join("|", Sources)} -> {string.Join("|", Targets)})";
    }

    private static IEnumerable<(Alert Source, Alert Target)> Pairs(InhibitRule rule, Dictionary<string, Alert> alerts) =>
        from source in rule.Sources.Where(alerts.ContainsKey)
        from target in rule.Targets.Where(alerts.ContainsKey)
        select (alerts[source], alerts[target]);

    private static int Rank(Alert alert)
    {
        var rank = Array.IndexOf(Severities, alert.Severity);
        Assert.True(rank >= 0, $"{alert.Name} has severity {alert.Severity}, none of {string.Join(", ", Severities)}");
        return rank;
    }

    private static Dictionary<string, Alert> AlertRules()
    {
        var alerts = new Dictionary<string, Alert>(StringComparer.Ordinal);
        foreach (var group in Sequence(Load("alerts.yaml"), "groups"))
        {
            foreach (var rule in Sequence((YamlMappingNode)group, "rules").Cast<YamlMappingNode>())
            {
                if (Scalar(rule, "alert") is { } name)
                {
                    var labels = rule.Children.TryGetValue("labels", out var node) ? (YamlMappingNode)node : new YamlMappingNode();
                    alerts.Add(name, new Alert(name, Scalar(labels, "severity") ?? "(none)", Keeps(Scalar(rule, "expr") ?? "")));
                }
            }
        }

        Assert.True(alerts.Count >= 10, $"found only {alerts.Count} alert rules in alerts.yaml");
        return alerts;
    }

    /// <summary>
    /// The labels an expression's result keeps: those of its <c>by (...)</c> clauses, which must agree (less <c>le</c>,
    /// which <c>histogram_quantile</c> consumes); none for one aggregated to nothing (<c>max(...)</c>,
    /// <c>absent(metric)</c>, and binary operations on them, which keep their left side's); null when it cannot tell
    /// (<c>without</c>, a raw series, an <c>absent</c> with matchers, clauses that disagree).
    /// </summary>
    private static List<string>? Keeps(string expr)
    {
        if (expr.Contains("without", StringComparison.Ordinal))
        {
            return null;
        }

        string[] consumed = expr.Contains("histogram_quantile(", StringComparison.Ordinal) ? ["le"] : [];
        var clauses = ByClause().Matches(expr)
            .Select(m => m.Groups["labels"].Value.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries)
                .Except(consumed).Order(StringComparer.Ordinal).ToList())
            .DistinctBy(labels => string.Join(',', labels))
            .ToList();
        return clauses.Count switch
        {
            1 => clauses[0],
            0 when AggregatedToNothing().IsMatch(expr) => [],
            _ => null,
        };
    }

    private static List<InhibitRule> InhibitRules()
    {
        var rules = new List<InhibitRule>();
        foreach (var (index, node) in Sequence(Load("alertmanager-inhibit.yaml"), "inhibit_rules").Index())
        {
            var rule = (YamlMappingNode)node;
            var keys = rule.Children.Keys.Select(k => ((YamlScalarNode)k).Value).ToList();
            // source_match and target_match are the syntax before Alertmanager 0.22, deprecated since.
            Assert.True(keys.All(RuleKeys.Contains), $"inhibit_rules[{index}] holds {string.Join(", ", keys.Except(RuleKeys))}; expected only {string.Join(", ", RuleKeys)}");
            rules.Add(new InhibitRule(
                index,
                AlertNames(index, Strings(rule, "source_matchers")),
                AlertNames(index, Strings(rule, "target_matchers")),
                Strings(rule, "equal")));
        }

        Assert.NotEmpty(rules);
        return rules;
    }

    /// <summary>
    /// The alerts a list of matchers selects. Only <c>alertname="X"</c> and <c>alertname=~"X|Y"</c> (Alertmanager
    /// anchors the expression, so it selects exactly those names): a matcher on another label may select alerts
    /// this test cannot list, and a rule muting by severity alone mutes alerts no cause explains.
    /// </summary>
    private static List<string> AlertNames(int index, List<string> matchers)
    {
        Assert.True(matchers.Count == 1, $"inhibit_rules[{index}]: {matchers.Count} matchers on one side; expected one on alertname");
        var matcher = Matcher().Match(matchers[0]);
        Assert.True(matcher.Success, $"inhibit_rules[{index}]: {matchers[0]} is not alertname=\"Name\" or alertname=~\"Name|Name\"");
        var names = matcher.Groups["names"].Value.Split('|').ToList();
        Assert.True(matcher.Groups["op"].Value == "=~" || names.Count == 1, $"inhibit_rules[{index}]: {matchers[0]} compares with = to alternatives");
        return names;
    }

    private static YamlMappingNode Load(string file)
    {
        var yaml = new YamlStream();
        using (var reader = new StreamReader(RepositoryRoot.Combine("deploy", "monitoring", file)))
        {
            yaml.Load(reader);
        }

        return (YamlMappingNode)yaml.Documents.Single().RootNode;
    }

    private static IEnumerable<YamlNode> Sequence(YamlMappingNode mapping, string key) =>
        mapping.Children.TryGetValue(key, out var node) ? ((YamlSequenceNode)node).Children : throw new KeyNotFoundException($"no {key} in {mapping.Start}");

    private static List<string> Strings(YamlMappingNode mapping, string key) =>
        mapping.Children.TryGetValue(key, out var node) ? [.. ((YamlSequenceNode)node).Children.Select(item => ((YamlScalarNode)item).Value ?? "")] : [];

    private static string? Scalar(YamlMappingNode mapping, string key) =>
        mapping.Children.TryGetValue(key, out var node) ? ((YamlScalarNode)node).Value : null;

    [GeneratedRegex(@"\bby\s*\((?<labels>[^)]*)\)")]
    private static partial Regex ByClause();

    /// <summary>An expression that starts with an aggregation over everything, or <c>absent</c> of a bare metric.</summary>
    [GeneratedRegex(@"^\s*(?:(?:max|min|sum|count|avg)\s*\(|absent\s*\(\s*[a-z_:]+\s*\))")]
    private static partial Regex AggregatedToNothing();

    [GeneratedRegex(@"^\s*alertname\s*(?<op>=~|=)\s*""(?<names>[A-Za-z0-9_]+(?:\|[A-Za-z0-9_]+)*)""\s*$")]
    private static partial Regex Matcher();
}
