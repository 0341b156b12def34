namespace Conveyor.Bench.Infrastructure;

public static class Stats
{
    public static double Median(IEnumerable<double> values) => Percentile([.. values.Order()], 50);

    /// <summary>Nearest-rank percentile of already sorted values.</summary>
    public static double Percentile(IReadOnlyList<double> sorted, double percent)
    {
        if (sorted.Count == 0)
        {
            return double.NaN;
        }

        var rank = (int)Math.Ceiling(percent / 100 * sorted.Count);
        return sorted[Math.Clamp(rank - 1, 0, sorted.Count - 1)];
    }
}
