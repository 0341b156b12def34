using System.Globalization;
using Conveyor.Bench.Consume;

namespace Conveyor.Bench;

/// <summary>Command-line knobs (<c>--name value</c>); defaults are what <c>bench/run.sh</c> uses.</summary>
public sealed class BenchOptions
{
    public required string RepositoryRoot { get; init; }

    /// <summary>The options as given on the command line (after the command), to hand to a child run.</summary>
    public IReadOnlyList<string> Arguments { get; init; } = [];

    /// <summary>Rounds per setting (each variant once per round).</summary>
    public int Runs { get; init; } = 3;

    public int Messages { get; init; } = 10_000;

    public int WarmupMessages { get; init; } = 2_000;

    /// <summary>
    /// Most warm-up drains per variant and settings group. At 256/128 the worker took 26,000–36,000
    /// messages (13–18 drains of 2,000) to tier up on two busy cores; 8, the old bound, left the
    /// first measured rounds still compiling when that group ran alone (bench/analysis.md §1).
    /// </summary>
    public int WarmupPasses { get; init; } = 20;

    /// <summary>
    /// Prefetch/concurrency/pool groups, each measured for every variant: the worker's shipped
    /// defaults (32/16/50) up to 256/128/200, the group the consume target's results in
    /// bench/analysis.md §1 were measured at, so that the one-command run reproduces them.
    /// </summary>
    public IReadOnlyList<ConsumeSettings> ConsumeSettings { get; init; } = Consume.ConsumeSettings.Parse("32/16/50,64/32/80,128/64/150,256/128/200");

    public int Requests { get; init; } = 10_000;

    public int WarmupRequests { get; init; } = 2_000;

    public int Concurrency { get; init; } = 64;

    public int ApiPoolSize { get; init; } = 100;

    public int RedeliveryRate { get; init; } = 1_000;

    public int RedeliverySeconds { get; init; } = 30;

    public double RedeliveryLeadSeconds { get; init; } = 2;

    public int RedeliveryInserters { get; init; } = 4;

    public int BurstMessages { get; init; } = 20_000;

    /// <summary>Seconds of load per RSS run: the peak of five minutes is a few MiB above one minute's (bench/analysis.md §5).</summary>
    public int RssSeconds { get; init; } = 300;

    public int RssRuns { get; init; } = 1;

    /// <summary>
    /// How many of the RSS benchmark's configurations run, in their order: by default the shipped one
    /// alone; the others are the environment-variable experiments of analysis §5 (6 for all).
    /// </summary>
    public int RssConfigurations { get; init; } = 1;

    /// <summary>Worker process counts the scaling benchmark compares (the first is the baseline).</summary>
    public IReadOnlyList<int> WorkerCounts { get; init; } = [1, 2, 3];

    public int ScalingMessages { get; init; } = 2_000;

    /// <summary>Payment gateway answer times (ms) the scaling benchmark runs with; 0 answers at once.</summary>
    public IReadOnlyList<int> GatewayLatencies { get; init; } = [0, 300];

    /// <summary>Jobs per scaling run when the gateway delays its answers (those runs drain slower).</summary>
    public int ScalingLatencyMessages { get; init; } = 1_000;

    /// <summary>Warm-up jobs per worker process, before each measured run.</summary>
    public int ScalingWarmup { get; init; } = 150;

    /// <summary>As shipped: deploy/k8s worker.env (prefetch, concurrency) and the Deployment's DB_MAX_POOL_SIZE.</summary>
    public ConsumeSettings ScalingSettings { get; init; } = new(32, 16, 40);

    public static (string Command, BenchOptions Options) Parse(string[] args)
    {
        var named = args.Length > 0 && !args[0].StartsWith("--", StringComparison.Ordinal);
        var command = named ? args[0] : "all";
        var arguments = named ? args[1..] : args;
        var values = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        for (var i = 0; i + 1 < arguments.Length; i += 2)
        {
            values[arguments[i].TrimStart('-')] = arguments[i + 1];
        }

        int Int(string name, int fallback) => values.TryGetValue(name, out var v) ? int.Parse(v, CultureInfo.InvariantCulture) : fallback;
        double Double(string name, double fallback) => values.TryGetValue(name, out var v) ? double.Parse(v, CultureInfo.InvariantCulture) : fallback;
        IReadOnlyList<int> Ints(string name, IReadOnlyList<int> fallback) => values.TryGetValue(name, out var v)
            ? [.. v.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(i => int.Parse(i, CultureInfo.InvariantCulture))]
            : fallback;
        var defaults = new BenchOptions { RepositoryRoot = "." };
        return (command, new BenchOptions
        {
            Arguments = arguments,
            RepositoryRoot = values.TryGetValue("root", out var root) ? Path.GetFullPath(root) : FindRoot(),
            Runs = Int("runs", defaults.Runs),
            Messages = Int("messages", defaults.Messages),
            WarmupMessages = Int("warmup-messages", defaults.WarmupMessages),
            WarmupPasses = Int("warmup-passes", defaults.WarmupPasses),
            ConsumeSettings = values.TryGetValue("settings", out var settings) ? Consume.ConsumeSettings.Parse(settings) : defaults.ConsumeSettings,
            Requests = Int("requests", defaults.Requests),
            WarmupRequests = Int("warmup-requests", defaults.WarmupRequests),
            Concurrency = Int("concurrency", defaults.Concurrency),
            ApiPoolSize = Int("api-pool", defaults.ApiPoolSize),
            RedeliveryRate = Int("redelivery-rate", defaults.RedeliveryRate),
            RedeliverySeconds = Int("redelivery-seconds", defaults.RedeliverySeconds),
            RedeliveryLeadSeconds = Double("redelivery-lead", defaults.RedeliveryLeadSeconds),
            RedeliveryInserters = Int("redelivery-inserters", defaults.RedeliveryInserters),
            BurstMessages = Int("burst", defaults.BurstMessages),
            RssSeconds = Int("rss-seconds", defaults.RssSeconds),
            RssRuns = Int("rss-runs", defaults.RssRuns),
            RssConfigurations = Int("rss-configurations", defaults.RssConfigurations),
            WorkerCounts = Ints("workers", defaults.WorkerCounts),
            GatewayLatencies = Ints("gateway-latency", defaults.GatewayLatencies),
            ScalingLatencyMessages = Int("scaling-latency-messages", defaults.ScalingLatencyMessages),
            ScalingMessages = Int("scaling-messages", defaults.ScalingMessages),
            ScalingWarmup = Int("scaling-warmup", defaults.ScalingWarmup),
            ScalingSettings = values.TryGetValue("scaling-settings", out var scaling) ? Consume.ConsumeSettings.Parse(scaling)[0] : defaults.ScalingSettings,
        });
    }

    private static string FindRoot()
    {
        for (var directory = new DirectoryInfo(AppContext.BaseDirectory); directory is not null; directory = directory.Parent)
        {
            if (File.Exists(Path.Combine(directory.FullName, "Worker.sln")))
            {
                return directory.FullName;
            }
        }

        return Directory.GetCurrentDirectory();
    }
}
