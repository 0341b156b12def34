using System.Text.Json;

namespace Conveyor.Bench.Reporting;

/// <summary>A target from the issue and whether this run met it.</summary>
public sealed record TargetCheck(string Target, string Measured, bool Met);

/// <summary>What one benchmark measured: a table, its notes and the targets it checks.</summary>
public sealed record BenchResult(
    string Name,
    string Title,
    DateTimeOffset MeasuredAt,
    string Parameters,
    IReadOnlyList<string> Columns,
    IReadOnlyList<IReadOnlyList<string>> Rows,
    IReadOnlyList<string> Notes,
    IReadOnlyList<TargetCheck> Targets)
{
    private static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web) { WriteIndented = true };

    public static string Directory(string repositoryRoot) => Path.Combine(repositoryRoot, "artifacts", "bench");

    public async Task SaveAsync(string repositoryRoot)
    {
        System.IO.Directory.CreateDirectory(Directory(repositoryRoot));
        await File.WriteAllTextAsync(Path.Combine(Directory(repositoryRoot), $"{Name}.json"), JsonSerializer.Serialize(this, Json));
    }

    public static BenchResult? Load(string repositoryRoot, string name)
    {
        var path = Path.Combine(Directory(repositoryRoot), $"{name}.json");
        return File.Exists(path) ? JsonSerializer.Deserialize<BenchResult>(File.ReadAllText(path), Json) : null;
    }

    /// <summary>The table as console text.</summary>
    public string ToText()
    {
        var widths = Columns.Select((c, i) => Math.Max(c.Length, Rows.Count == 0 ? 0 : Rows.Max(r => r[i].Length))).ToArray();
        string Line(IReadOnlyList<string> cells) => string.Join("  ", cells.Select((c, i) => c.PadRight(widths[i])));
        var lines = new List<string> { $"== {Title}", Parameters, Line(Columns), Line([.. widths.Select(w => new string('-', w))]) };
        lines.AddRange(Rows.Select(Line));
        lines.AddRange(Targets.Select(t => $"target {(t.Met ? "MET    " : "NOT MET")} {t.Target}: {t.Measured}"));
        lines.AddRange(Notes.Select(n => $"note: {n}"));
        return string.Join(Environment.NewLine, lines);
    }
}
