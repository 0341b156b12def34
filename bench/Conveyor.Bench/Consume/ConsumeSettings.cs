namespace Conveyor.Bench.Consume;

/// <summary>Transport and pool settings one consume run uses, whatever the variant.</summary>
public sealed record ConsumeSettings(int Prefetch, int Concurrency, int PoolSize)
{
    public override string ToString() => $"prefetch {Prefetch}, concurrency {Concurrency}, pool {PoolSize}";

    /// <summary>"32/16/50,64/32/80": prefetch/concurrency/pool triples.</summary>
    public static IReadOnlyList<ConsumeSettings> Parse(string text) =>
    [
        .. text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(triple =>
        {
            var parts = triple.Split('/').Select(p => int.Parse(p, System.Globalization.CultureInfo.InvariantCulture)).ToArray();
            return new ConsumeSettings(parts[0], parts[1], parts.Length > 2 ? parts[2] : parts[1] * 2 + 10);
        }),
    ];
}
