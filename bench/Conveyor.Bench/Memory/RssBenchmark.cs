using System.Diagnostics;
using System.Globalization;
using Conveyor.Bench.Consume;
using Conveyor.Bench.Infrastructure;
using Conveyor.Bench.Reporting;

namespace Conveyor.Bench.Memory;

/// <summary>
/// Benchmark 5: the Release worker as a child process (<c>dotnet Conveyor.Worker.dll</c>) under
/// sustained load (a publisher keeps the queue busy for a fixed time); /proc/&lt;pid&gt;/status is
/// sampled for VmRSS and VmHWM. Each GC configuration runs in turn, interleaved over rounds.
/// </summary>
public sealed class RssBenchmark(BenchEnvironment environment, BenchOptions options)
{
    /// <summary>Environment overrides tried for the child: the shipped default first.</summary>
    private static readonly (string Name, Dictionary<string, string> Environment)[] Configurations =
    [
        ("default (as shipped: workstation GC, TieredPGO off)", []),
        ("DOTNET_gcServer=1 (server GC, the Web SDK's default)", new() { ["DOTNET_gcServer"] = "1" }),
        ("DOTNET_GCHeapHardLimit=0x6400000 (100 MiB heap cap)", new() { ["DOTNET_GCHeapHardLimit"] = "0x6400000" }),
        ("DOTNET_gcConcurrent=0 (no background GC)", new() { ["DOTNET_gcConcurrent"] = "0" }),
        ("DOTNET_GCgen0size=0x1000000 (16 MiB gen0 budget)", new() { ["DOTNET_GCgen0size"] = "0x1000000" }),
        ("DOTNET_TieredPGO=1 (profile-guided tier-1 code, the runtime's default)", new() { ["DOTNET_TieredPGO"] = "1" }),
    ];

    public async Task<BenchResult> RunAsync()
    {
        var workerDll = Path.Combine(options.RepositoryRoot, "src", "Worker", "bin", "Release", "net10.0", "Conveyor.Worker.dll");
        if (!File.Exists(workerDll))
        {
            throw new InvalidOperationException($"{workerDll} is missing: build Release first (bench/run.sh does).");
        }

        await environment.DeclareChargePaymentQueueAsync();
        await using var gateway = await InstantGateway.StartAsync();
        await using var publisher = await ContractPublisher.StartAsync(environment);
        // By default what ships alone; --rss-configurations 6 adds the experiments.
        var configurations = Configurations.Take(Math.Max(1, options.RssConfigurations)).ToArray();
        var samples = configurations.ToDictionary(c => c.Name, _ => new List<RunSample>());
        for (var round = 0; round < Math.Max(1, options.RssRuns); round++)
        {
            foreach (var (name, overrides) in round % 2 == 0 ? configurations : configurations.Reverse())
            {
                await environment.PurgeAsync(ConsumeBenchmark.Queue);
                await environment.TruncateAsync();
                var sample = await RunOnceAsync(workerDll, gateway, publisher, overrides);
                samples[name].Add(sample);
                Console.WriteLine($"rss: round {round + 1}, {name}: idle {Formats.MiB(sample.IdleRss)} MiB, peak VmHWM {Formats.MiB(sample.PeakHwm)} MiB, {sample.Processed} processed ({Formats.Rate(sample.Processed / options.RssSeconds)}/s)");
            }
        }

        var rows = samples.Select(s => (IReadOnlyList<string>)
        [
            s.Key,
            Formats.MiB((long)Stats.Median(s.Value.Select(v => (double)v.IdleRss))),
            Formats.MiB((long)Stats.Median(s.Value.Select(v => (double)v.PeakHwm))),
            string.Join(" / ", s.Value.Select(v => Formats.MiB(v.PeakHwm))),
            Formats.Rate(Stats.Median(s.Value.Select(v => v.Processed / (double)options.RssSeconds))),
            Formats.Ratio(Stats.Median(s.Value.Zip(samples[Configurations[0].Name], (v, d) => v.Processed / (double)Math.Max(1, d.Processed)))),
        ]).ToList();
        var shipped = Stats.Median(samples[Configurations[0].Name].Select(v => (double)v.PeakHwm));
        return new BenchResult(
            "rss",
            "5. Worker peak memory under sustained load",
            DateTimeOffset.UtcNow,
            $"dotnet src/Worker/bin/Release/net10.0/Conveyor.Worker.dll, {options.RssSeconds} s of continuous ChargePayment publishing (64 in flight) per run, {Math.Max(1, options.RssRuns)} round(s); worker defaults (prefetch 32, concurrency 16, pool 50), gateway answering at once",
            ["configuration", "idle RSS MiB", "peak VmHWM MiB", "runs MiB", "processed msg/s", "throughput vs default"],
            rows,
            [
                "VmHWM is the kernel's high-water mark of resident memory for the worker process, read from /proc/<pid>/status every 250 ms; idle RSS is read after the worker has connected and before the load starts.",
                configurations.Length > 1
                    ? "Only the first configuration is what ships; the others are environment-variable experiments that need no code change, listed to size the fix."
                    : "The shipped configuration alone (--rss-configurations 6 adds the GC and JIT experiments of bench/analysis.md §5).",
            ],
            [new TargetCheck("rss: worker peak ≤ 200 MiB", $"{Formats.MiB((long)shipped)} MiB as shipped", shipped <= 200 * 1024 * 1024)]);
    }

    private async Task<RunSample> RunOnceAsync(string workerDll, InstantGateway gateway, ContractPublisher publisher, Dictionary<string, string> overrides)
    {
        var settings = ConveyorWorkerVariant.Settings(environment, gateway, new ConsumeSettings(32, 16, 50));
        var start = new ProcessStartInfo("dotnet")
        {
            WorkingDirectory = Path.GetDirectoryName(workerDll)!,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        start.ArgumentList.Add(workerDll);
        foreach (var argument in BenchEnvironment.Args(settings))
        {
            start.ArgumentList.Add(argument);
        }

        foreach (var (key, value) in overrides)
        {
            start.Environment[key] = value;
        }

        using var process = Process.Start(start) ?? throw new InvalidOperationException("could not start the worker");
        process.OutputDataReceived += (_, _) => { };
        process.ErrorDataReceived += (_, _) => { };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        try
        {
            await WaitForConsumerAsync(process);
            await Task.Delay(TimeSpan.FromSeconds(2));
            var idle = ReadStatus(process.Id).Rss;

            using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(options.RssSeconds));
            var peak = 0L;
            var sampler = Task.Run(async () =>
            {
                while (!stop.IsCancellationRequested && !process.HasExited)
                {
                    peak = Math.Max(peak, ReadStatus(process.Id).Hwm);
                    await Task.Delay(250, CancellationToken.None);
                }
            });
            var next = 0;
            await Task.WhenAll(Enumerable.Range(0, 64).Select(async _ =>
            {
                while (!stop.IsCancellationRequested)
                {
                    await publisher.PublishAsync(ContractPublisher.Payment(Interlocked.Increment(ref next)));
                }
            }));
            await sampler;
            peak = Math.Max(peak, ReadStatus(process.Id).Hwm);
            var processed = await environment.ScalarAsync("SELECT count(*) FROM ledger_entries");
            return new RunSample(idle, peak, processed);
        }
        finally
        {
            if (!process.HasExited)
            {
                process.Kill();
                await process.WaitForExitAsync();
            }
        }
    }

    private async Task WaitForConsumerAsync(Process process)
    {
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (DateTime.UtcNow < deadline && !process.HasExited)
        {
            try
            {
                if ((await environment.QueueStateAsync(ConsumeBenchmark.Queue)).Consumers > 0)
                {
                    return;
                }
            }
            catch (RabbitMQ.Client.Exceptions.OperationInterruptedException)
            {
                // Not declared yet.
            }

            await Task.Delay(200);
        }

        throw new InvalidOperationException("the worker child process did not start consuming within 60 s");
    }

    private static (long Rss, long Hwm) ReadStatus(int pid)
    {
        long rss = 0, hwm = 0;
        foreach (var line in File.ReadLines($"/proc/{pid}/status"))
        {
            if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
            {
                rss = Kilobytes(line);
            }
            else if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
            {
                hwm = Kilobytes(line);
            }
        }

        return (rss, hwm);
    }

    private static long Kilobytes(string line) =>
        long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], CultureInfo.InvariantCulture) * 1024;

    private sealed record RunSample(long IdleRss, long PeakHwm, long Processed);
}
