using Conveyor.Bench.Infrastructure;
using Conveyor.Bench.Reporting;

namespace Conveyor.Bench.Consume;

/// <summary>
/// Benchmark 1: drain rate of a pre-filled <c>charge-payment</c> queue (~1 KiB persistent messages
/// published with confirms) by the Conveyor worker, by the same MassTransit setup without the inbox
/// and by a raw RabbitMQ.Client consumer. Variants interleave round by round, in rotating order.
/// </summary>
public sealed class ConsumeBenchmark(BenchEnvironment environment, BenchOptions options)
{
    public const string Queue = "charge-payment";

    public async Task<BenchResult> RunAsync()
    {
        await using var gateway = await InstantGateway.StartAsync();
        IConsumeVariant[] variants =
        [
            new ConveyorWorkerVariant(environment, gateway),
            new MassTransitVariant(environment, gateway),
            new RawClientVariant(environment, gateway),
            .. ConveyorWorkerVariant.FromEnvironment(environment, gateway) is { } tuned ? [tuned] : Array.Empty<IConsumeVariant>(),
        ];
        // For profiling (no ratios then): CONVEYOR_BENCH_CONSUME_ONLY=conveyor, or a list such as conveyor,conveyor-b.
        if (Environment.GetEnvironmentVariable("CONVEYOR_BENCH_CONSUME_ONLY") is { Length: > 0 } only)
        {
            var names = only.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            variants = [.. variants.Where(v => names.Contains(v.Name))];
        }

        await using var publisher = await ContractPublisher.StartAsync(environment);
        var rates = new Dictionary<(ConsumeSettings, string), List<double>>();
        var cpu = new Dictionary<(ConsumeSettings, string), List<double>>();
        var commands = new Dictionary<(ConsumeSettings, string), List<double>>();
        var servers = new Dictionary<(ConsumeSettings, string), List<(double Postgres, double Rabbit)>>();
        var busy = new List<double>();
        var stalls = new List<string>();
        var warmups = new List<string>();
        var messageBytes = 0;
        foreach (var settings in options.ConsumeSettings)
        {
            // One host per variant for the whole group, paused while the queue is refilled.
            var sessions = new List<(IConsumeVariant Variant, IConsumeSession Session)>();
            try
            {
                foreach (var variant in variants)
                {
                    // The first one (the real worker) declares the exchanges, queues and bindings.
                    sessions.Add((variant, await variant.OpenAsync(settings)));
                }

                if (messageBytes == 0)
                {
                    messageBytes = await MessageSizeAsync(publisher);
                }

                Console.WriteLine($"consume: {settings}: warm-up, passes of {options.WarmupMessages} messages per variant");
                foreach (var (variant, session) in sessions)
                {
                    warmups.Add($"{variant.Name} at {settings}: {await WarmUpAsync(variant, session, settings, publisher)}");
                }

                for (var round = 0; round < options.Runs; round++)
                {
                    foreach (var (variant, session) in Rotate([.. sessions], round))
                    {
                        var outcome = await DrainAsync(variant, session, publisher, options.Messages);
                        Console.WriteLine($"consume: {settings}, round {round + 1}, {variant.Name}: {outcome.Describe()}");
                        // NaN keeps the rounds aligned for the paired ratios.
                        Collect(rates, (settings, variant.Name)).Add(outcome.Rate ?? double.NaN);
                        Collect(cpu, (settings, variant.Name)).Add(outcome.CpuMsPerMessage);
                        Collect(commands, (settings, variant.Name)).Add(outcome.CommandsPerMessage);
                        if (!servers.TryGetValue((settings, variant.Name), out var serverCpu))
                        {
                            servers[(settings, variant.Name)] = serverCpu = [];
                        }

                        serverCpu.Add((outcome.PostgresMsPerMessage, outcome.RabbitMsPerMessage));
                        busy.Add(outcome.MachineBusy);
                        if (outcome.Rate is null)
                        {
                            stalls.Add($"{variant.Name} at {settings}, round {round + 1}: {outcome.Describe()}");
                        }
                    }
                }
            }
            finally
            {
                foreach (var (_, session) in sessions)
                {
                    await session.DisposeAsync();
                }
            }
        }

        return Report(variants, rates, cpu, commands, servers, busy, stalls, warmups, messageBytes);
    }

    private BenchResult Report(
        IConsumeVariant[] variants,
        Dictionary<(ConsumeSettings, string), List<double>> rates,
        Dictionary<(ConsumeSettings, string), List<double>> cpu,
        Dictionary<(ConsumeSettings, string), List<double>> commands,
        Dictionary<(ConsumeSettings, string), List<(double Postgres, double Rabbit)>> servers,
        List<double> busy,
        List<string> stalls,
        List<string> warmups,
        int messageBytes)
    {
        var rows = new List<IReadOnlyList<string>>();
        var pairedRatios = new Dictionary<ConsumeSettings, double>();
        foreach (var settings in options.ConsumeSettings)
        {
            var mt = rates.GetValueOrDefault((settings, "masstransit")) ?? [];
            var raw = rates.GetValueOrDefault((settings, "raw-client")) ?? [];
            foreach (var variant in variants)
            {
                var rounds = rates.GetValueOrDefault((settings, variant.Name)) ?? [];
                var runs = Completed(rounds);
                var vsMt = PairedRatio(rounds, mt);
                var vsRaw = PairedRatio(rounds, raw);
                if (variant.Name == "conveyor" && !double.IsNaN(vsMt))
                {
                    pairedRatios[settings] = vsMt;
                }

                rows.Add(
                [
                    settings.ToString(),
                    variant.Name,
                    runs.Count == 0 ? "stalled" : Formats.Rate(Stats.Median(runs)),
                    Formats.Runs(runs),
                    double.IsNaN(vsMt) ? "-" : Formats.Ratio(vsMt),
                    double.IsNaN(vsRaw) ? "-" : Formats.Ratio(vsRaw),
                    Formats.Number(Stats.Median(Completed(cpu.GetValueOrDefault((settings, variant.Name)) ?? [])), "0.00"),
                    Formats.Number(Stats.Median(Completed(commands.GetValueOrDefault((settings, variant.Name)) ?? [])), "0.0"),
                    Formats.Number(Stats.Median(Completed([.. (servers.GetValueOrDefault((settings, variant.Name)) ?? []).Select(c => c.Postgres)])), "0.00"),
                    Formats.Number(Stats.Median(Completed([.. (servers.GetValueOrDefault((settings, variant.Name)) ?? []).Select(c => c.Rabbit)])), "0.00"),
                ]);
            }
        }

        var notes = new List<string>();
        notes.AddRange(variants.Select(v => $"{v.Name}: {v.Description}."));
        notes.Add("Rate = (messages − 1) / time from the first to the last completed message (host start-up excluded); a completion is counted after the whole receive pipeline (for conveyor: after the inbox transaction committed).");
        notes.Add("DB commands/msg counts Npgsql command executions (each a round trip to PostgreSQL; BEGIN rides along with the first, COMMIT is not counted) between the first and the last completion.");
        notes.Add($"Every variant drains charge-payment, {BenchEnvironment.QueueDescription}.");
        notes.Add("Ratios are the median over rounds of (variant ÷ baseline) within the same round; variants run interleaved in rotating order.");
        notes.Add(WorkerRuntime.Description + ".");
        notes.Add($"CPU ms/msg is what the benchmark process (which hosts the consumer and the gateway) spent per message between the first and the last completion; PostgreSQL's and RabbitMQ's CPU is in their own columns (every postgres process and the beam.smp node, from /proc, same window). The whole machine was {Stats.Median(busy.Where(b => !double.IsNaN(b))):P0} busy during the median run (other work shares these {Environment.ProcessorCount} cores).");
        foreach (var variant in variants)
        {
            var best = options.ConsumeSettings
                .Where(s => rates.TryGetValue((s, variant.Name), out var r) && Completed(r).Count > 0)
                .OrderByDescending(s => Stats.Median(Completed(rates[(s, variant.Name)])))
                .FirstOrDefault();
            if (best is not null)
            {
                notes.Add($"best settings for {variant.Name}: {best} ({Formats.Rate(Stats.Median(Completed(rates[(best, variant.Name)])))} msg/s)");
            }
        }

        notes.Add("Each variant runs in one host (one connection) per settings group, kept alive across its drains and paused (receive endpoint stopped, or basic.cancel) while the queue is refilled: a worker is a long-lived process, and a host started per drain measured mostly the JIT compiling its code again.");
        notes.Add($"warm-up: drains of {options.WarmupMessages} messages until one spends under 1 % of its time in the JIT (at most {options.WarmupPasses}): " + string.Join("; ", warmups) + ".");
        notes.AddRange(stalls.Select(s => $"stalled/failed run: {s}"));

        var targets = new List<TargetCheck>();
        var conveyorBest = options.ConsumeSettings
            .Where(pairedRatios.ContainsKey)
            .OrderByDescending(s => Stats.Median(Completed(rates[(s, "conveyor")])))
            .FirstOrDefault();
        if (conveyorBest is not null)
        {
            var ratio = pairedRatios[conveyorBest];
            targets.Add(new TargetCheck("consume: inbox ≥ 0.6× MassTransit without inbox",
                $"{Formats.Ratio(ratio)} at conveyor's best settings ({conveyorBest})", ratio >= 0.6));
        }

        return new BenchResult(
            "consume",
            "1. End-to-end consume throughput (drain of a pre-filled queue)",
            DateTimeOffset.UtcNow,
            $"{options.Messages} messages of {messageBytes} bytes per run, {options.Runs} rounds per setting, warm-up {options.WarmupMessages} per variant",
            ["settings", "variant", "median msg/s", "runs msg/s", "vs masstransit", "vs raw-client", "bench-process CPU ms/msg", "DB commands/msg", "PostgreSQL CPU ms/msg", "RabbitMQ CPU ms/msg"],
            rows,
            notes,
            targets);
    }

    /// <summary>
    /// Drains warm-up passes until one spends under 1 % of its time in the JIT (at most
    /// <see cref="BenchOptions.WarmupPasses"/>): on two busy cores, tiering up the worker's (EF Core's,
    /// MassTransit's) hot methods takes many thousands of messages, and a round measured before that
    /// measures the JIT.
    /// </summary>
    private async Task<string> WarmUpAsync(IConsumeVariant variant, IConsumeSession session, ConsumeSettings settings, ContractPublisher publisher)
    {
        var share = double.NaN;
        var passes = 0;
        while (passes < options.WarmupPasses)
        {
            passes++;
            var outcome = await DrainAsync(variant, session, publisher, options.WarmupMessages);
            share = outcome.JitShare;
            Console.WriteLine($"consume: {settings}: warm-up {variant.Name} pass {passes}: {outcome.Describe()}");
            if (share < 0.01)
            {
                return $"{passes} passes, last {share:P1} JIT";
            }
        }

        return $"{passes} passes, last {share:P1} JIT (not settled: its first rounds include JIT time)";
    }

    private async Task<DrainOutcome> DrainAsync(IConsumeVariant variant, IConsumeSession session, ContractPublisher publisher, int messages)
    {
        await environment.PurgeAsync(Queue);
        await environment.TruncateAsync();
        await publisher.PrefillAsync(messages);
        await WaitForDepthAsync(messages);

        CpuMeter? cpu = null;
        using var commands = new CommandCounter();
        var commandsAtFirst = 0L;
        var jitAtStart = System.Runtime.JitInfo.GetCompilationTime();
        var methodsAtStart = System.Runtime.JitInfo.GetCompiledMethodCount();
        var allocatedAtStart = GC.GetTotalAllocatedBytes();
        var gen0AtStart = GC.CollectionCount(0);
        var pauseAtStart = GC.GetTotalPauseDuration();
        var clock = new DrainClock(messages)
        {
            OnFirst = () =>
            {
                cpu = new CpuMeter();
                commandsAtFirst = commands.Commands;
            },
        };
        var started = System.Diagnostics.Stopwatch.GetTimestamp();
        await session.ResumeAsync(clock);
        try
        {
            var limit = TimeSpan.FromSeconds(Math.Max(60, messages / 50.0));
            var finished = await Task.WhenAny(clock.Rate, Task.Delay(limit));
            if (finished != clock.Rate)
            {
                return new DrainOutcome(null, $"stalled: {clock.Count} of {messages} done after {limit.TotalSeconds:0} s");
            }

            var (processMs, machineBusy) = cpu!.Read();
            var (postgresMs, rabbitMs) = cpu.ReadServers();
            var commandsPerMessage = (commands.Commands - commandsAtFirst) / (double)(messages - 1);
            var jit = System.Runtime.JitInfo.GetCompilationTime() - jitAtStart;
            var methods = System.Runtime.JitInfo.GetCompiledMethodCount() - methodsAtStart;
            // The whole process's, publisher and prefill excluded (done before the start); the variant's drain is most of it.
            var allocated = (GC.GetTotalAllocatedBytes() - allocatedAtStart) / (double)messages;
            var gen0 = GC.CollectionCount(0) - gen0AtStart;
            var pause = GC.GetTotalPauseDuration() - pauseAtStart;
            await variant.VerifyAsync(messages);
            var seconds = System.Diagnostics.Stopwatch.GetElapsedTime(started).TotalSeconds;
            return new DrainOutcome(await clock.Rate, null, processMs / messages, machineBusy, commandsPerMessage, jit.TotalMilliseconds, methods, jit.TotalSeconds / seconds)
            {
                PostgresMsPerMessage = postgresMs / messages,
                RabbitMsPerMessage = rabbitMs / messages,
                AllocatedBytesPerMessage = allocated,
                Gen0Collections = gen0,
                GcPauseMs = pause.TotalMilliseconds,
            };
        }
        finally
        {
            await session.PauseAsync();
        }
    }

    private async Task WaitForDepthAsync(int messages)
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while ((await environment.QueueStateAsync(Queue)).Messages < messages)
        {
            if (DateTime.UtcNow > deadline)
            {
                throw new InvalidOperationException($"{Queue} did not reach {messages} messages");
            }

            await Task.Delay(100);
        }
    }

    /// <summary>Size of one published message body as the broker stores it.</summary>
    private async Task<int> MessageSizeAsync(ContractPublisher publisher)
    {
        await environment.PurgeAsync(Queue);
        await publisher.PublishAsync(ContractPublisher.Payment(1));
        await using var connection = await environment.AmqpFactory().CreateConnectionAsync("conveyor-bench-size");
        await using var channel = await connection.CreateChannelAsync();
        for (var attempt = 0; attempt < 50; attempt++)
        {
            if (await channel.BasicGetAsync(Queue, autoAck: true) is { } message)
            {
                return message.Body.Length;
            }

            await Task.Delay(100);
        }

        return 0;
    }

    private static List<double> Completed(List<double> rounds) => [.. rounds.Where(r => !double.IsNaN(r))];

    /// <summary>Median of value ÷ baseline over the rounds where both completed.</summary>
    private static double PairedRatio(List<double> values, List<double> baseline)
    {
        var ratios = Enumerable.Range(0, Math.Min(values.Count, baseline.Count))
            .Select(i => values[i] / baseline[i])
            .Where(r => !double.IsNaN(r))
            .ToList();
        return ratios.Count == 0 ? double.NaN : Stats.Median(ratios);
    }

    private static IEnumerable<T> Rotate<T>(T[] items, int by) =>
        Enumerable.Range(0, items.Length).Select(i => items[(i + by) % items.Length]);

    private static List<double> Collect(Dictionary<(ConsumeSettings, string), List<double>> rates, (ConsumeSettings, string) key)
    {
        if (!rates.TryGetValue(key, out var list))
        {
            rates[key] = list = [];
        }

        return list;
    }

    private sealed record DrainOutcome(
        double? Rate,
        string? Problem,
        double CpuMsPerMessage = double.NaN,
        double MachineBusy = double.NaN,
        double CommandsPerMessage = double.NaN,
        double JitMs = double.NaN,
        long JitMethods = 0,
        double JitShare = double.NaN)
    {
        public double PostgresMsPerMessage { get; init; } = double.NaN;

        public double RabbitMsPerMessage { get; init; } = double.NaN;

        public double AllocatedBytesPerMessage { get; init; } = double.NaN;

        public int Gen0Collections { get; init; }

        public double GcPauseMs { get; init; } = double.NaN;

        public string Describe() => Rate is { } rate
            ? $"{Formats.Rate(rate)} msg/s, benchmark process {Formats.Number(CpuMsPerMessage, "0.00")} CPU ms/msg (PostgreSQL {Formats.Number(PostgresMsPerMessage, "0.00")}, RabbitMQ {Formats.Number(RabbitMsPerMessage, "0.00")}), {Formats.Number(CommandsPerMessage, "0.000")} database commands/msg, machine {MachineBusy:P0} busy, JIT {JitMs:0} ms / {JitMethods} methods during the drain, "
                + $"{Formats.Number(AllocatedBytesPerMessage / 1024, "0.0")} KiB allocated/msg, {Gen0Collections} gen0 GCs, GC pauses {GcPauseMs:0} ms"
            : Problem ?? "failed";
    }
}
