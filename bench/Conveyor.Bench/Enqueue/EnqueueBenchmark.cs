using System.Diagnostics;
using System.Diagnostics.Metrics;
using System.Net;
using System.Runtime;
using System.Text;
using Conveyor.Api;
using Conveyor.Bench.Consume;
using Conveyor.Bench.Infrastructure;
using Conveyor.Bench.Reporting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;
using Npgsql;

namespace Conveyor.Bench.Enqueue;

/// <summary>
/// Benchmark 2: <c>POST /api/jobs/charge-payment</c> → 202 with N concurrent clients against the real
/// Api (job row + confirmed publish), versus raw MassTransit publishes with confirms, N in flight.
/// Both land in the same durable queue; rounds interleave. A third variant submits the same jobs in
/// batches of 10 (<c>POST /api/jobs/charge-payment/batch</c>), for comparison.
/// </summary>
public sealed class EnqueueBenchmark(BenchEnvironment environment, BenchOptions options)
{
    private const string ApiKey = "bench-key-publisher-0123456789abcdef";

    /// <summary>Jobs per request of the batch variant: not a target of the issue, what a client that batches gets.</summary>
    private const int BatchSize = 10;

    private const string BatchVariant = "api-batch-10";

    public async Task<BenchResult> RunAsync()
    {
        await environment.DeclareChargePaymentQueueAsync();
        var settings = environment.BaseSettings(options.ApiPoolSize);
        // The jobs endpoints take an API key with the jobs:publish scope.
        settings["Auth:ApiKeys:bench:Name"] = "bench";
        settings["Auth:ApiKeys:bench:Key"] = ApiKey;
        settings["Auth:ApiKeys:bench:Scopes"] = "jobs:publish";
        // Capacity, not policy: the per-client token bucket (one key here) and the queue-depth gate
        // would refuse most of the load. Both checks still run on every request.
        settings["RateLimiting:Enabled"] = "false";
        settings["Backpressure:DefaultMaxQueueDepth"] = "0";
        // The log levels the Api ships with (src/Api/appsettings.json), not the quiet ones of the other
        // benchmarks: whatever the submission path logs per request in production is measured too.
        settings["Logging:LogLevel:Default"] = "Information";
        settings["Logging:LogLevel:Microsoft.AspNetCore"] = "Warning";
        settings["Logging:LogLevel:Microsoft.EntityFrameworkCore"] = "Warning";
        settings["Logging:LogLevel:MassTransit"] = "Information";
        var app = ApiApp.Build(BenchEnvironment.Args(settings));
        await app.StartAsync();
        using var phases = new SubmissionPhases(app.Services.GetRequiredService<IMeterFactory>());
        await using var publisher = await ContractPublisher.StartAsync(environment, "conveyor-bench-raw-publish");
        try
        {
            var address = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
            using var http = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = options.Concurrency, PooledConnectionLifetime = TimeSpan.FromMinutes(10) })
            {
                BaseAddress = new Uri(address),
                Timeout = TimeSpan.FromSeconds(30),
            };
            http.DefaultRequestHeaders.Add("X-Api-Key", ApiKey);
            await WaitUntilReadyAsync(http);

            var variants = new (string Name, Func<int, Task<string>> Operation)[]
            {
                ("api", i => PostAsync(http, i)),
                ("raw-publish", async i =>
                {
                    await publisher.PublishAsync(ContractPublisher.Payment(i));
                    return "ok";
                }),
                (BatchVariant, i => PostBatchAsync(http, i)),
            };

            // Profiling aid: CONVEYOR_BENCH_ENQUEUE_ONLY=api runs one variant (no ratio then).
            var only = Environment.GetEnvironmentVariable("CONVEYOR_BENCH_ENQUEUE_ONLY");
            if (!string.IsNullOrEmpty(only))
            {
                variants = [.. variants.Where(v => v.Name == only)];
            }

            var warmup = await WarmUpAsync(variants);

            var results = variants.ToDictionary(v => v.Name, _ => new List<Round>());
            using var commands = new CommandCounter();
            for (var round = 0; round < options.Runs; round++)
            {
                foreach (var (name, operation) in round % 2 == 0 ? variants : variants.Reverse())
                {
                    await environment.PurgeAsync(ConsumeBenchmark.Queue);
                    await environment.TruncateAsync();
                    phases.Reset();
                    var measured = await MeasureAsync(operation, JobsPerOperation(name), commands) with { Phases = phases.Read() };
                    results[name].Add(measured);
                    var load = measured.Load;
                    Console.WriteLine($"enqueue: round {round + 1}, {name}: {Formats.Rate(measured.JobsPerSecond)} jobs/s, p50 {Formats.Ms(load.P50)} ms, p99 {Formats.Ms(load.P99)} ms, "
                        + $"CPU {Formats.Number(measured.CpuMsPerJob, "0.00")} ms/job (PostgreSQL {Formats.Number(measured.PostgresMsPerJob, "0.00")}, RabbitMQ {Formats.Number(measured.RabbitMsPerJob, "0.00")}), DB {Formats.Number(measured.CommandsPerJob, "0.00")} commands/job, "
                        + $"machine {Formats.Number(measured.MachineBusy * 100, "0")}% busy, JIT {measured.JitMs:0} ms, GC pauses {measured.GcPauseMs:0} ms, "
                        + $"failures {load.Failures} ({string.Join(", ", load.Outcomes.Select(o => $"{o.Key}={o.Value}"))})"
                        + (measured.Phases is { } p ? $"; waits: row commit p50 {Formats.Ms(p.RowP50)} / p99 {Formats.Ms(p.RowP99)} ms, publish confirm p50 {Formats.Ms(p.PublishP50)} / p99 {Formats.Ms(p.PublishP99)} ms" : string.Empty));
                }
            }

            if (results.Count < 2)
            {
                throw new InvalidOperationException($"CONVEYOR_BENCH_ENQUEUE_ONLY={only} ran one variant: nothing to report.");
            }

            var queued = (await environment.QueueStateAsync(ConsumeBenchmark.Queue)).Messages;
            return Report(results, queued, warmup, await DescribeDatabaseConnectionAsync());
        }
        finally
        {
            await app.StopAsync();
            await app.DisposeAsync();
        }
    }

    /// <summary>
    /// Whether the Api's PostgreSQL connections are encrypted: Npgsql's default SSL Mode is Prefer, so
    /// a server with ssl=on (Debian's default) gets TLS even on loopback.
    /// </summary>
    private async Task<string> DescribeDatabaseConnectionAsync()
    {
        var connectionString = environment.ConnectionString(options.ApiPoolSize);
        await using var connection = new NpgsqlConnection(connectionString);
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand(
            "SELECT coalesce((SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl), 'no TLS') || ', server ssl=' || current_setting('ssl')",
            connection);
        var state = (string?)await command.ExecuteScalarAsync();
        return $"PostgreSQL connections of the Api: {state} (SSL Mode={new NpgsqlConnectionStringBuilder(connectionString).SslMode}); loopback-only deployments may set SSL Mode=Disable";
    }

    private BenchResult Report(Dictionary<string, List<Round>> results, uint lastRoundQueued, string warmup, string database)
    {
        var api = results["api"];
        var raw = results["raw-publish"];
        double RatioOf(List<Round> variant) => Stats.Median(variant.Zip(raw, (a, r) => a.JobsPerSecond / r.JobsPerSecond));
        var ratio = RatioOf(api);
        var rows = results.Select(r => (IReadOnlyList<string>)
        [
            r.Key,
            Formats.Rate(Stats.Median(r.Value.Select(x => x.JobsPerSecond))),
            Formats.Runs(r.Value.Select(x => x.JobsPerSecond)),
            Formats.Ms(Stats.Median(r.Value.Select(x => x.Load.P50))),
            Formats.Ms(Stats.Median(r.Value.Select(x => x.Load.P99))),
            r.Value.Sum(x => x.Load.Failures).ToString(System.Globalization.CultureInfo.InvariantCulture),
            r.Key == "raw-publish" ? "1.00×" : Formats.Ratio(RatioOf(r.Value)),
            Formats.Number(Stats.Median(r.Value.Select(x => x.CpuMsPerJob)), "0.00"),
            Formats.Number(Stats.Median(r.Value.Select(x => x.PostgresMsPerJob)), "0.00"),
            Formats.Number(Stats.Median(r.Value.Select(x => x.RabbitMsPerJob)), "0.00"),
            Formats.Number(Stats.Median(r.Value.Select(x => x.CommandsPerJob)), "0.00"),
            Formats.Number(Stats.Median(r.Value.Select(x => x.MachineBusy)) * 100, "0") + "%",
        ]).ToList();
        var apiP99 = Stats.Median(api.Select(x => x.Load.P99));
        var failures = results.Values.Sum(r => r.Sum(x => x.Load.Failures));
        return new BenchResult(
            "enqueue",
            "2. Api enqueue vs raw MassTransit publish",
            DateTimeOffset.UtcNow,
            $"{options.Requests} operations per round, {options.Concurrency} in flight, {options.Runs} rounds, warm-up passes of {options.WarmupRequests}; Api pool {options.ApiPoolSize}",
            ["variant", "median jobs/s", "runs jobs/s", "p50 ms", "p99 ms", "failures", "vs raw-publish", "bench-process CPU ms/job", "PostgreSQL CPU ms/job", "RabbitMQ CPU ms/job", "DB commands/job", "machine busy"],
            rows,
            [
                "api: POST /api/jobs/charge-payment with an API key (authentication, validation, job row insert, publish with confirm) answered 202, Api hosted in the benchmark process (ApiApp.Build), HTTP/1.1 keep-alive clients, one connection each, in the same process as the Api; the Api's shipped log levels (Information); RateLimiting:Enabled=false and Backpressure:DefaultMaxQueueDepth=0, since one key's token bucket (200/s) and the queue-depth gate would otherwise refuse most of the load.",
                "bench-process CPU ms/job: CPU time of the whole benchmark process (HTTP clients and the Api for the api variants; the publishing bus for raw-publish) per job submitted or message published; PostgreSQL and RabbitMQ CPU ms/job: the same for every PostgreSQL process and the RabbitMQ node (from /proc, in 10 ms ticks); DB commands/job: Npgsql commands (round trips) per job; machine busy: share of both cores busy during the round, all processes (PostgreSQL and RabbitMQ included).",
                "raw-publish: MassTransit IBus.Publish of the same ChargePayment with the job-id header, publisher confirms, awaited.",
                $"{BatchVariant} (not a target, for comparison): POST /api/jobs/charge-payment/batch with {BatchSize} charges per request, the same {options.Concurrency} clients, so {options.Concurrency * BatchSize} jobs in flight; the same number of jobs per round; its p50/p99 are per request of {BatchSize} jobs.",
                "jobs/s counts jobs of successful operations only (202, or a confirmed publish); p50/p99 are per-round percentiles over all operations, then the median over rounds; the ratio is the median of the per-round ratios.",
                database + ".",
                warmup + $"; JIT time during the measured rounds: {Formats.Number(results.Values.SelectMany(r => r).Sum(x => x.JitMs), "0")} ms in all.",
                PhasesNote(api),
                $"the last round left {lastRoundQueued} messages in charge-payment (both variants route to the same durable queue), {BenchEnvironment.QueueDescription}.",
            ],
            [
                new TargetCheck($"enqueue: Api ≥ 0.5× raw publish at {options.Concurrency} clients", Formats.Ratio(ratio) + (failures > 0 ? $" ({failures} failed operations: invalid)" : string.Empty), ratio >= 0.5 && failures == 0),
                new TargetCheck("enqueue: Api p99 ≤ 50 ms", $"{Formats.Ms(apiP99)} ms", apiP99 <= 50 && failures == 0),
            ]);
    }

    private static string PhasesNote(List<Round> api)
    {
        var phases = api.Select(r => r.Phases).OfType<SubmissionPhases.Phases>().ToList();
        return phases.Count == 0
            ? "api waits: not recorded"
            : $"api waits, from the Api's histogram conveyor.api.submission.duration (median over rounds): row commit p50 {Formats.Ms(Stats.Median(phases.Select(p => p.RowP50)))} / p99 {Formats.Ms(Stats.Median(phases.Select(p => p.RowP99)))} ms, "
              + $"publish confirm p50 {Formats.Ms(Stats.Median(phases.Select(p => p.PublishP50)))} / p99 {Formats.Ms(Stats.Median(phases.Select(p => p.PublishP99)))} ms; the two are in series, the rest of a request's latency is HTTP and the hops between.";
    }

    /// <summary>
    /// Runs both variants in passes until the JIT is done with them. The Api's path (Kestrel, ASP.NET
    /// Core, EF Core, Npgsql, MassTransit, OpenTelemetry) is tens of thousands of methods, and tiered
    /// compilation re-JITs the hot ones twice (instrumented, then optimized); on a busy 2-core machine
    /// that takes tens of seconds, during which a measurement counts the JIT, not the Api. Warm is two
    /// passes in a row that compile for less than 1 % of their wall time: tier-ups come in bursts, and
    /// a single quiet pass was often followed by a first round that compiled for most of a second.
    /// </summary>
    private async Task<string> WarmUpAsync((string Name, Func<int, Task<string>> Operation)[] variants)
    {
        const int maxPasses = 40;
        const int quietPassesNeeded = 2;
        var deadline = Stopwatch.StartNew();
        var quietPasses = 0;
        for (var pass = 1; ; pass++)
        {
            var started = Stopwatch.GetTimestamp();
            var jitBefore = JitInfo.GetCompilationTime();
            foreach (var (name, operation) in variants)
            {
                await LoadLoop.RunAsync(options.WarmupRequests / JobsPerOperation(name), options.Concurrency, operation);
            }

            var jit = JitInfo.GetCompilationTime() - jitBefore;
            var wall = Stopwatch.GetElapsedTime(started);
            Console.WriteLine($"enqueue: warm-up pass {pass}, {options.WarmupRequests} operations per variant in {wall.TotalSeconds:0.0} s, JIT {jit.TotalMilliseconds:0} ms");
            quietPasses = jit < wall * 0.01 ? quietPasses + 1 : 0;
            if (quietPasses == quietPassesNeeded || pass == maxPasses || deadline.Elapsed > TimeSpan.FromMinutes(5))
            {
                var settled = quietPasses == quietPassesNeeded ? "" : " (not settled: the first rounds include JIT time)";
                return $"warm-up: {pass} passes of {options.WarmupRequests} operations per variant in {deadline.Elapsed.TotalSeconds:0} s, until {quietPassesNeeded} passes in a row spent under 1 % of their time in the JIT (last pass: {jit.TotalMilliseconds:0} ms of {wall.TotalSeconds:0.0} s){settled}";
            }
        }
    }

    private static Task<string> PostAsync(HttpClient http, int i) => AcceptedAsync(http, "/api/jobs/charge-payment", Charge(i));

    private static Task<string> PostBatchAsync(HttpClient http, int i) =>
        AcceptedAsync(http, "/api/jobs/charge-payment/batch", $$"""{"jobs":[{{string.Join(",", Enumerable.Range(i * BatchSize, BatchSize).Select(Charge))}}]}""");

    /// <summary>"ok" for a 202, else the status.</summary>
    private static async Task<string> AcceptedAsync(HttpClient http, string path, string json)
    {
        using var content = new StringContent(json, Encoding.UTF8, "application/json");
        using var response = await http.PostAsync(new Uri(path, UriKind.Relative), content);
        return response.StatusCode == HttpStatusCode.Accepted ? "ok" : $"http-{(int)response.StatusCode}";
    }

    private static string Charge(int i) =>
        $$"""{"paymentId":"{{Guid.NewGuid()}}","accountId":"acct-{{i % 97:D4}}","amountMinor":{{100 + i}},"currency":"EUR"}""";

    private static int JobsPerOperation(string variant) => variant == BatchVariant ? BatchSize : 1;

    private static async Task WaitUntilReadyAsync(HttpClient http)
    {
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (true)
        {
            try
            {
                using var response = await http.GetAsync(new Uri("/health/ready", UriKind.Relative));
                if (response.IsSuccessStatusCode)
                {
                    return;
                }
            }
            catch (HttpRequestException) when (DateTime.UtcNow < deadline)
            {
            }

            if (DateTime.UtcNow > deadline)
            {
                throw new InvalidOperationException("The Api did not become ready within 60 s");
            }

            await Task.Delay(200);
        }
    }

    /// <param name="jobsPerOperation">Jobs each operation submits: the round submits <see cref="BenchOptions.Requests"/> jobs.</param>
    private async Task<Round> MeasureAsync(Func<int, Task<string>> operation, int jobsPerOperation, CommandCounter commands)
    {
        var cpu = new CpuMeter();
        var commandsBefore = commands.Commands;
        var jitBefore = JitInfo.GetCompilationTime();
        var gcBefore = GC.GetTotalPauseDuration();
        var load = await LoadLoop.RunAsync(options.Requests / jobsPerOperation, options.Concurrency, operation);
        var (processMs, machineBusy) = cpu.Read();
        var (postgresMs, rabbitMs) = cpu.ReadServers();
        var jobs = (double)load.Operations * jobsPerOperation;
        return new Round(
            load,
            jobsPerOperation,
            processMs / jobs,
            (commands.Commands - commandsBefore) / jobs,
            machineBusy,
            (JitInfo.GetCompilationTime() - jitBefore).TotalMilliseconds,
            (GC.GetTotalPauseDuration() - gcBefore).TotalMilliseconds)
        {
            PostgresMsPerJob = postgresMs / jobs,
            RabbitMsPerJob = rabbitMs / jobs,
        };
    }

    private sealed record Round(LoadLoop.Result Load, int JobsPerOperation, double CpuMsPerJob, double CommandsPerJob, double MachineBusy, double JitMs, double GcPauseMs)
    {
        /// <summary>CPU of every PostgreSQL process per job (10 ms clock ticks, so coarse in short rounds).</summary>
        public double PostgresMsPerJob { get; init; } = double.NaN;

        /// <summary>CPU of the RabbitMQ node per job.</summary>
        public double RabbitMsPerJob { get; init; } = double.NaN;

        /// <summary>Jobs (or raw publishes) accepted per second.</summary>
        public double JobsPerSecond => Load.PerSecond * JobsPerOperation;

        /// <summary>The Api's own account of its two waits (conveyor.api.submission.duration); null for the raw publish.</summary>
        public SubmissionPhases.Phases? Phases { get; init; }
    }
}
