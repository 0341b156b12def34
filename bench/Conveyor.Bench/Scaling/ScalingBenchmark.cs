using System.Diagnostics;
using System.Globalization;
using Conveyor.Bench.Consume;
using Conveyor.Bench.Infrastructure;
using Conveyor.Bench.Reporting;
using Conveyor.Contracts.Payments;
using Npgsql;

namespace Conveyor.Bench.Scaling;

/// <summary>
/// Benchmark 6: consume throughput of 1, 2, 3… worker processes (the Release worker dll, as pods
/// run it) competing on one <c>charge-payment</c> queue, with a gateway that answers at once and one
/// that takes as long as a remote one. Each run starts fresh processes, warms them up, then closes
/// the gateway's gate, fills the queue and opens the gate: every process starts with a full pipeline
/// and the clock runs from the gate opening to the last job's commit. The setups interleave round by
/// round, forwards then backwards; every run checks that each job was charged and recorded exactly once.
/// </summary>
public sealed class ScalingBenchmark(BenchEnvironment environment, BenchOptions options)
{
    private const string Queue = ConsumeBenchmark.Queue;

    public async Task<BenchResult> RunAsync()
    {
        var dll = WorkerProcess.Dll(options.RepositoryRoot);
        var counts = options.WorkerCounts.Distinct().Order().ToArray();
        var latencies = options.GatewayLatencies.Distinct().Order().ToArray();
        await environment.DeclareChargePaymentQueueAsync();
        await using var gateway = await GatedGateway.StartAsync();
        await using var publisher = await ContractPublisher.StartAsync(environment);

        var runs = latencies.SelectMany(l => counts.Select(c => new Setup(l, c))).ToDictionary(s => s, _ => new List<RunOutcome>());
        for (var round = 0; round < options.Runs; round++)
        {
            // Forwards, then backwards: a drift of the machine's load over a pair of rounds hits every setup alike.
            var order = latencies.SelectMany(l => counts.Select(c => new Setup(l, c))).ToArray();
            foreach (var setup in round % 2 == 0 ? order : order.Reverse())
            {
                RunOutcome outcome;
                try
                {
                    outcome = await RunOnceAsync(dll, setup, gateway, publisher);
                }
                catch (Exception exception) when (exception is InvalidOperationException or TimeoutException)
                {
                    outcome = RunOutcome.Failed(exception.Message);
                }

                runs[setup].Add(outcome);
                Console.WriteLine($"scaling: round {round + 1}, {setup}: {outcome.Describe()}");
            }
        }

        return Report(latencies, counts, runs);
    }

    private async Task<RunOutcome> RunOnceAsync(string dll, Setup setup, GatedGateway gateway, ContractPublisher publisher)
    {
        var count = setup.Workers;
        await environment.PurgeAsync(Queue);
        await environment.TruncateAsync();
        gateway.Open();
        gateway.Reset();
        gateway.Latency = TimeSpan.Zero;

        var workers = new List<WorkerProcess>();
        var phases = Stopwatch.StartNew();
        try
        {
            for (var i = 1; i <= count; i++)
            {
                workers.Add(WorkerProcess.Start(dll, $"worker-{i}", Settings(gateway, $"worker-{i}")));
            }

            await WaitForConsumersAsync(workers);
            var startSeconds = phases.Elapsed.TotalSeconds;

            // Warm-up: JIT, connection pools, HTTP connections; then forget it.
            var warmup = options.ScalingWarmup * count;
            await PublishAsync(publisher, warmup);
            await WaitForSucceededAsync(warmup, workers);
            await environment.TruncateAsync();
            gateway.Reset();
            var warmupSeconds = phases.Elapsed.TotalSeconds - startSeconds;

            // Hold every charge until the whole backlog is in the queue, then start the clock.
            gateway.Close();
            gateway.Latency = TimeSpan.FromMilliseconds(setup.LatencyMs);
            var messages = setup.LatencyMs == 0 ? options.ScalingMessages : options.ScalingLatencyMessages;
            var payments = await PublishAsync(publisher, messages);
            var fillSeconds = phases.Elapsed.TotalSeconds - startSeconds - warmupSeconds;
            var workersCpu = workers.Select(w => w.Cpu).ToArray();
            var servers = new ServerCpu();
            var machine = new CpuMeter();
            var clock = Stopwatch.StartNew();
            var started = DateTimeOffset.UtcNow;
            gateway.Open();

            await WaitForSucceededAsync(messages, workers);
            var wall = clock.Elapsed.TotalSeconds;
            var (benchMs, machineBusy) = machine.Read();
            var serverSeconds = servers.Read();
            var workerSeconds = workers.Select((w, i) => (w.Cpu - workersCpu[i]).TotalSeconds).Sum();
            var finished = await LastFinishedAsync();
            var seconds = (finished - started).TotalSeconds;

            await VerifyAsync(payments, gateway);
            Console.WriteLine($"scaling: {setup}: start {startSeconds:0.0} s, warm-up {warmupSeconds:0.0} s, fill {fillSeconds:0.0} s, drain {seconds:0.0} s");
            return new RunOutcome(
                messages / seconds,
                null,
                [.. workers.Select(w => gateway.ByCaller.GetValueOrDefault(w.Name) / (double)messages)],
                machineBusy,
                workerSeconds / wall,
                ServerCpu.Postgres(serverSeconds) / wall,
                ServerCpu.RabbitMq(serverSeconds) / wall,
                benchMs / 1000 / wall,
                workerSeconds * 1000 / messages,
                ServerCpu.Postgres(serverSeconds) * 1000 / messages,
                ServerCpu.RabbitMq(serverSeconds) * 1000 / messages);
        }
        finally
        {
            gateway.Open();
            gateway.Latency = TimeSpan.Zero;
            foreach (var worker in workers)
            {
                await worker.DisposeAsync();
            }
        }
    }

    /// <summary>What a pod gets from its environment, as the shipped worker.env sets it; the gateway is the gated fake.</summary>
    private Dictionary<string, string?> Settings(GatedGateway gateway, string name)
    {
        var settings = options.ScalingSettings;
        var values = environment.BaseSettings(settings.PoolSize);
        values["PaymentGateway:BaseUrl"] = gateway.BaseAddress.ToString();
        // The gateway tells the processes apart by their bearer token.
        values["PaymentGateway:ApiKey"] = name;
        // Charges wait at the closed gate while the queue fills: longer than the default 10 s.
        values["PaymentGateway:TimeoutSeconds"] = "120";
        // No charge fails here (a run checks one attempt per job). With in-memory retries, every attempt
        // up to 120 s could hold a delivery for more than half of RabbitMQ's consumer_timeout, which the
        // worker refuses at start.
        values["Consumers:ChargePayment:RetryLimit"] = "0";
        values["Webhooks:SigningSecret"] = "bench-only-webhook-secret-0123456789";
        values["Consumers:ChargePayment:PrefetchCount"] = settings.Prefetch.ToString(CultureInfo.InvariantCulture);
        values["Consumers:ChargePayment:ConcurrentMessageLimit"] = settings.Concurrency.ToString(CultureInfo.InvariantCulture);
        return values;
    }

    private async Task WaitForConsumersAsync(List<WorkerProcess> workers)
    {
        var deadline = DateTime.UtcNow.AddSeconds(90);
        while ((await environment.QueueStateAsync(Queue)).Consumers < workers.Count)
        {
            ThrowIfExited(workers);
            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException($"{workers.Count} worker processes were not all consuming {Queue} within 90 s");
            }

            await Task.Delay(200);
        }
    }

    private async Task WaitForSucceededAsync(int jobs, List<WorkerProcess> workers)
    {
        var limit = TimeSpan.FromSeconds(Math.Max(120, jobs / 20.0));
        var deadline = DateTime.UtcNow + limit;
        long done;
        while ((done = await environment.ScalarAsync("SELECT count(*) FROM jobs WHERE status = 'succeeded'")) < jobs)
        {
            ThrowIfExited(workers);
            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException($"stalled: {done} of {jobs} jobs succeeded after {limit.TotalSeconds:0} s");
            }

            await Task.Delay(100);
        }
    }

    private static void ThrowIfExited(List<WorkerProcess> workers)
    {
        if (workers.FirstOrDefault(w => w.HasExited) is { } exited)
        {
            throw new InvalidOperationException($"{exited.Name} exited:{Environment.NewLine}{exited.Output}");
        }
    }

    private static async Task<List<ChargePayment>> PublishAsync(ContractPublisher publisher, int count, int inFlight = 256)
    {
        var payments = Enumerable.Range(0, count).Select(ContractPublisher.Payment).ToList();
        var next = -1;
        await Task.WhenAll(Enumerable.Range(0, inFlight).Select(async _ =>
        {
            while (Interlocked.Increment(ref next) is var i && i < count)
            {
                await publisher.PublishAsync(payments[i]);
            }
        }));
        return payments;
    }

    /// <summary>The commit time of the last job (the worker stamps finished_at in the inbox transaction).</summary>
    private async Task<DateTimeOffset> LastFinishedAsync()
    {
        await using var connection = new NpgsqlConnection(environment.ConnectionString());
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand("SELECT max(finished_at) FROM jobs", connection);
        await using var reader = await command.ExecuteReaderAsync();
        await reader.ReadAsync();
        return reader.GetFieldValue<DateTimeOffset>(0);
    }

    /// <summary>Every payment charged once at the gateway, one ledger row each, one attempt per job, nothing left or parked.</summary>
    private async Task VerifyAsync(List<ChargePayment> payments, GatedGateway gateway)
    {
        var problems = new List<string>();
        var charged = gateway.ByKey;
        var missing = payments.Count(p => !charged.ContainsKey(p.PaymentId.ToString()));
        var twice = charged.Values.Count(n => n > 1);
        if (missing > 0 || twice > 0 || charged.Count != payments.Count)
        {
            problems.Add($"gateway: {missing} payments never charged, {twice} charged more than once, {charged.Count} keys for {payments.Count} payments");
        }

        var ledger = await environment.ScalarAsync("SELECT count(DISTINCT payment_id) FROM ledger_entries");
        var ledgerRows = await environment.ScalarAsync("SELECT count(*) FROM ledger_entries");
        var succeeded = await environment.ScalarAsync("SELECT count(*) FROM jobs WHERE status = 'succeeded'");
        var attempts = await environment.ScalarAsync("SELECT coalesce(sum(attempts), 0) FROM jobs");
        if (ledger != payments.Count || ledgerRows != payments.Count || succeeded != payments.Count || attempts != payments.Count)
        {
            problems.Add($"database: {ledgerRows} ledger rows for {ledger} payments, {succeeded} jobs succeeded, {attempts} attempts, for {payments.Count} payments");
        }

        var left = (await environment.QueueStateAsync(Queue)).Messages;
        var parked = await ErrorQueueDepthAsync();
        if (left > 0 || parked > 0)
        {
            problems.Add($"broker: {left} messages left in {Queue}, {parked} in {Queue}_error");
        }

        if (problems.Count > 0)
        {
            throw new InvalidOperationException("not exactly once: " + string.Join("; ", problems));
        }
    }

    private async Task<uint> ErrorQueueDepthAsync()
    {
        try
        {
            return (await environment.QueueStateAsync($"{Queue}_error")).Messages;
        }
        catch (RabbitMQ.Client.Exceptions.OperationInterruptedException)
        {
            return 0; // Never declared: nothing ever failed.
        }
    }

    private BenchResult Report(int[] latencies, int[] counts, Dictionary<Setup, List<RunOutcome>> runs)
    {
        var settings = options.ScalingSettings;
        var rows = new List<IReadOnlyList<string>>();
        var medians = new Dictionary<Setup, double>();
        foreach (var latency in latencies)
        {
            var baseline = runs[new Setup(latency, counts[0])];
            foreach (var count in counts)
            {
                var outcomes = runs[new Setup(latency, count)];
                var completed = outcomes.Where(o => o.Rate is not null).ToList();
                var median = Stats.Median(completed.Select(o => o.Rate!.Value));
                var ratio = Stats.Median(outcomes.Zip(baseline, (o, b) => (o.Rate ?? double.NaN) / (b.Rate ?? double.NaN)).Where(r => !double.IsNaN(r)));
                medians[new Setup(latency, count)] = median;
                var middle = completed.OrderBy(o => o.Rate).ElementAtOrDefault(completed.Count / 2);
                rows.Add(
                [
                    Gateway(latency),
                    count.ToString(CultureInfo.InvariantCulture),
                    completed.Count == 0 ? "failed" : Formats.Rate(median),
                    string.Join(" / ", outcomes.Select(o => o.Rate is { } r ? Formats.Rate(r) : "failed")),
                    double.IsNaN(ratio) ? "-" : Formats.Ratio(ratio),
                    double.IsNaN(ratio) ? "-" : Percent(ratio / count * counts[0]),
                    completed.Count == 0 ? "-" : Formats.Rate(median / count),
                    middle is null ? "-" : string.Join(" / ", middle.Shares.Select(Percent)),
                    completed.Count == 0 ? "-" : Percent(Stats.Median(completed.Select(o => o.MachineBusy))),
                    completed.Count == 0 ? "-" : string.Join(" / ", new[]
                    {
                        Stats.Median(completed.Select(o => o.WorkerCores)),
                        Stats.Median(completed.Select(o => o.PostgresCores)),
                        Stats.Median(completed.Select(o => o.RabbitCores)),
                        Stats.Median(completed.Select(o => o.BenchCores)),
                    }.Select(c => Formats.Number(c, "0.00"))),
                    completed.Count == 0 ? "-" : string.Join(" / ", new[]
                    {
                        Stats.Median(completed.Select(o => o.WorkerMsPerJob)),
                        Stats.Median(completed.Select(o => o.PostgresMsPerJob)),
                        Stats.Median(completed.Select(o => o.RabbitMsPerJob)),
                    }.Select(c => Formats.Number(c, "0.0"))),
                    $"{completed.Count} of {outcomes.Count} runs",
                ]);
            }
        }

        var baselineName = Workers(counts[0]);
        var notes = new List<string>
        {
            $"Each worker is its own process: dotnet src/Worker/bin/Release/net10.0/Conveyor.Worker.dll with the shipped appsettings.json and, as a pod's environment would set them, prefetch {settings.Prefetch}, concurrency {settings.Concurrency}, Maximum Pool Size {settings.PoolSize} (deploy/k8s worker.env and Deployment); inbox on, PostgreSQL synchronous_commit on; the payment gateway is a loopback fake in the benchmark process that answers at once (\"instant\") or after a fixed delay (\"300 ms\": a remote gateway's answer time, during which the handler holds its inbox transaction).",
            $"Per run: fresh processes, a warm-up of {options.ScalingWarmup} jobs per process with an instant gateway (then the tables are emptied), the gateway's gate closed, {options.ScalingMessages} jobs ({options.ScalingLatencyMessages} with a gateway delay) published with confirms, the gate opened. Rate = jobs ÷ (last job's finished_at − gate opening): every process starts with its prefetch taken and its handlers waiting, so start-up and ramp-up are outside the figure.",
            $"vs {baselineName} is the median over rounds of (rate ÷ the {baselineName} rate with the same gateway in the same round); all setups run in the order of the table in odd rounds and reversed in even ones. Efficiency = that ratio ÷ the number of workers (100 % is linear scaling).",
            "Share: the part of the jobs each process charged, from the gateway's count per bearer token (each process sends its own PaymentGateway:ApiKey); shown for the median run.",
            $"Exactly once: after every run the gateway has exactly one charge per published PaymentId and no other, the database one ledger row, one succeeded job and one attempt per payment, and {Queue} and {Queue}_error are empty; a run that fails this counts as failed.",
            $"CPU cores = CPU seconds ÷ wall seconds over the drain: the worker processes together / every postgres process / RabbitMQ (beam.smp) / the benchmark process (gateway, publisher at rest). This machine has {Environment.ProcessorCount} cores, shared with other work, so {Environment.ProcessorCount} cores is the ceiling for all four together; machine busy is /proc/stat over the same interval. CPU ms/job is the same CPU time per job.",
        };
        foreach (var latency in latencies)
        {
            var alone = runs[new Setup(latency, counts[0])].Where(o => o.Rate is not null).ToList();
            if (alone.Count == 0)
            {
                continue;
            }

            var perJob = Stats.Median(alone.Select(o => o.WorkerMsPerJob + o.PostgresMsPerJob + o.RabbitMsPerJob));
            var ceiling = $"a job costs about {Formats.Number(perJob, "0.0")} CPU ms across worker, PostgreSQL and RabbitMQ (median, {baselineName}), so {Environment.ProcessorCount} cores top out near {Formats.Rate(Environment.ProcessorCount * 1000 / perJob)} jobs/s however many workers share them";
            notes.Add(latency == 0
                ? $"Instant gateway: {ceiling}. One worker already keeps the machine near 100 % busy, so more workers only split the same cores (and each job costs more CPU as they contend)."
                : $"{latency} ms gateway: a worker is bound by its handlers, not its CPU: at most concurrency ÷ (latency + its own time per job) < {settings.Concurrency} ÷ {latency / 1000.0:0.###} s = {Formats.Rate(settings.Concurrency * 1000.0 / latency)} jobs/s per process (Little's law), so workers add up until the CPU ceiling: {ceiling}.");
        }

        if (counts.Contains(1))
        {
            var top = counts[^1];
            var perPod = latencies.Select(l =>
            {
                var alone = runs[new Setup(l, 1)].Where(o => o.Rate is not null).ToList();
                return $"{Gateway(l)} gateway: one worker {Formats.Rate(medians[new Setup(l, 1)])} jobs/s, worker CPU {Formats.Number(Stats.Median(alone.Select(o => o.WorkerMsPerJob)), "0.0")} ms/job, PostgreSQL CPU {Formats.Number(Stats.Median(alone.Select(o => o.PostgresMsPerJob)), "0.0")} ms/job ({Formats.Rate(medians[new Setup(l, top)] / top)} jobs/s per worker at {top} on these shared cores)";
            });
            notes.Add($"Per-pod inputs for deploy/k8s (README, \"Sizing\"): {string.Join("; ", perPod)}.");
        }

        notes.AddRange(runs.SelectMany(r => r.Value.Where(o => o.Rate is null).Select(o => $"failed run, {r.Key}: {o.Problem}")));
        var all = runs.Values.SelectMany(r => r).ToList();
        var failures = all.Count(o => o.Rate is null);
        return new BenchResult(
            "scaling",
            "6. Scaling out: worker processes competing on one queue",
            DateTimeOffset.UtcNow,
            $"{string.Join(", ", counts)} worker processes × gateway {string.Join(", ", latencies.Select(Gateway))}, {options.Runs} rounds, {options.ScalingMessages} jobs per run ({options.ScalingLatencyMessages} with a gateway delay), prefetch {settings.Prefetch}, concurrency {settings.Concurrency}, pool {settings.PoolSize}",
            ["gateway", "workers", "median jobs/s", "runs jobs/s", $"vs {baselineName}", "efficiency", "per worker jobs/s", "share per process", "machine busy", "CPU cores: workers / PostgreSQL / RabbitMQ / bench", "CPU ms/job: workers / PostgreSQL / RabbitMQ", "exactly once"],
            rows,
            notes,
            [new TargetCheck($"scaling: every job processed exactly once with {string.Join(", ", counts)} competing worker processes", $"{all.Count - failures} of {all.Count} runs verified", failures == 0)]);
    }

    private static string Gateway(int latencyMs) => latencyMs == 0 ? "instant" : $"{latencyMs} ms";

    private static string Workers(int count) => count == 1 ? "1 worker" : $"{count} workers";

    private static string Percent(double share) => double.IsNaN(share) ? "-" : share.ToString("P0", CultureInfo.InvariantCulture);

    private sealed record Setup(int LatencyMs, int Workers)
    {
        public override string ToString() => $"{ScalingBenchmark.Workers(Workers)}, {Gateway(LatencyMs)} gateway";
    }

    private sealed record RunOutcome(
        double? Rate,
        string? Problem,
        IReadOnlyList<double> Shares,
        double MachineBusy,
        double WorkerCores,
        double PostgresCores,
        double RabbitCores,
        double BenchCores,
        double WorkerMsPerJob,
        double PostgresMsPerJob,
        double RabbitMsPerJob)
    {
        public static RunOutcome Failed(string problem) => new(null, problem, [], double.NaN, double.NaN, double.NaN, double.NaN, double.NaN, double.NaN, double.NaN, double.NaN);

        public string Describe() => Rate is { } rate
            ? $"{Formats.Rate(rate)} jobs/s, shares {string.Join(" / ", Shares.Select(Percent))}, machine {Percent(MachineBusy)} busy, cores: workers {WorkerCores:0.00}, PostgreSQL {PostgresCores:0.00}, RabbitMQ {RabbitCores:0.00}, bench {BenchCores:0.00}; CPU ms/job: workers {WorkerMsPerJob:0.00}, PostgreSQL {PostgresMsPerJob:0.00}, RabbitMQ {RabbitMsPerJob:0.00}"
            : $"failed: {Problem}";
    }
}
