using System.Net;
using System.Text;
using Conveyor.Api;
using Conveyor.Bench.Consume;
using Conveyor.Bench.Infrastructure;
using Conveyor.Bench.Reporting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;

namespace Conveyor.Bench.Enqueue;

/// <summary>
/// Benchmark 2: <c>POST /api/jobs/charge-payment</c> → 202 with N concurrent clients against the real
/// Api (job row + confirmed publish), versus raw MassTransit publishes with confirms, N in flight.
/// Both land in the same durable queue; rounds interleave.
/// </summary>
public sealed class EnqueueBenchmark(BenchEnvironment environment, BenchOptions options)
{
    private const string ApiKey = "bench-key-publisher-0123456789abcdef";

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
        var app = ApiApp.Build(BenchEnvironment.Args(settings));
        await app.StartAsync();
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
            };

            Console.WriteLine($"enqueue: warm-up, {options.WarmupRequests} operations per variant");
            foreach (var (_, operation) in variants)
            {
                await LoadLoop.RunAsync(options.WarmupRequests, options.Concurrency, operation);
            }

            var results = variants.ToDictionary(v => v.Name, _ => new List<LoadLoop.Result>());
            for (var round = 0; round < options.Runs; round++)
            {
                foreach (var (name, operation) in round % 2 == 0 ? variants : variants.Reverse())
                {
                    await environment.PurgeAsync(ConsumeBenchmark.Queue);
                    await environment.TruncateAsync();
                    var result = await LoadLoop.RunAsync(options.Requests, options.Concurrency, operation);
                    results[name].Add(result);
                    Console.WriteLine($"enqueue: round {round + 1}, {name}: {Formats.Rate(result.PerSecond)}/s, p50 {Formats.Ms(result.P50)} ms, p99 {Formats.Ms(result.P99)} ms, failures {result.Failures} ({string.Join(", ", result.Outcomes.Select(o => $"{o.Key}={o.Value}"))})");
                }
            }

            var queued = (await environment.QueueStateAsync(ConsumeBenchmark.Queue)).Messages;
            return Report(results, queued);
        }
        finally
        {
            await app.StopAsync();
            await app.DisposeAsync();
        }
    }

    private BenchResult Report(Dictionary<string, List<LoadLoop.Result>> results, uint lastRoundQueued)
    {
        var api = results["api"];
        var raw = results["raw-publish"];
        var ratios = api.Zip(raw, (a, r) => a.PerSecond / r.PerSecond).ToList();
        var ratio = Stats.Median(ratios);
        var rows = results.Select(r => (IReadOnlyList<string>)
        [
            r.Key,
            Formats.Rate(Stats.Median(r.Value.Select(x => x.PerSecond))),
            Formats.Runs(r.Value.Select(x => x.PerSecond)),
            Formats.Ms(Stats.Median(r.Value.Select(x => x.P50))),
            Formats.Ms(Stats.Median(r.Value.Select(x => x.P99))),
            r.Value.Sum(x => x.Failures).ToString(System.Globalization.CultureInfo.InvariantCulture),
            r.Key == "api" ? Formats.Ratio(ratio) : "1.00×",
        ]).ToList();
        var apiP99 = Stats.Median(api.Select(x => x.P99));
        var failures = results.Values.Sum(r => r.Sum(x => x.Failures));
        return new BenchResult(
            "enqueue",
            "2. Api enqueue vs raw MassTransit publish",
            DateTimeOffset.UtcNow,
            $"{options.Requests} operations per round, {options.Concurrency} in flight, {options.Runs} rounds, warm-up {options.WarmupRequests}; Api pool {options.ApiPoolSize}",
            ["variant", "median ops/s", "runs ops/s", "p50 ms", "p99 ms", "failures", "vs raw-publish"],
            rows,
            [
                "api: POST /api/jobs/charge-payment with an API key (authentication, validation, job row insert, publish with confirm) answered 202, Api hosted in the benchmark process (ApiApp.Build), HTTP/1.1 keep-alive clients; RateLimiting:Enabled=false and Backpressure:DefaultMaxQueueDepth=0, since one key's token bucket (200/s) and the queue-depth gate would otherwise refuse most of the load.",
                "raw-publish: MassTransit IBus.Publish of the same ChargePayment with the job-id header, publisher confirms, awaited.",
                "ops/s counts successful operations only (202, or a confirmed publish); p50/p99 are per-round percentiles over all operations, then the median over rounds; the ratio is the median of the per-round ratios.",
                $"the last round left {lastRoundQueued} messages in charge-payment (both variants route to the same durable queue).",
            ],
            [
                new TargetCheck($"enqueue: Api ≥ 0.5× raw publish at {options.Concurrency} clients", Formats.Ratio(ratio) + (failures > 0 ? $" ({failures} failed operations: invalid)" : string.Empty), ratio >= 0.5 && failures == 0),
                new TargetCheck("enqueue: Api p99 ≤ 50 ms", $"{Formats.Ms(apiP99)} ms", apiP99 <= 50 && failures == 0),
            ]);
    }

    private static async Task<string> PostAsync(HttpClient http, int i)
    {
        var body = $$"""{"paymentId":"{{Guid.NewGuid()}}","accountId":"acct-{{i % 97:D4}}","amountMinor":{{100 + i}},"currency":"EUR"}""";
        using var content = new StringContent(body, Encoding.UTF8, "application/json");
        using var response = await http.PostAsync(new Uri("/api/jobs/charge-payment", UriKind.Relative), content);
        return response.StatusCode == HttpStatusCode.Accepted ? "ok" : $"http-{(int)response.StatusCode}";
    }

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
}
