using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Http.Json;
using Conveyor.Api.ErrorQueues;
using Conveyor.ServiceDefaults;
using Conveyor.Storage.Operations;
using RabbitMQ.Client;

namespace Conveyor.Bench.ErrorQueueMove;

/// <summary>
/// Messages per second moved from an error queue back to its queue: Conveyor's move (the same
/// <see cref="QueueWalker"/> and <see cref="OperationVisitor"/> the Api runs, default options) against
/// RabbitMQ's own shovel-based "move messages" (what the management UI does: a dynamic shovel with
/// <c>src-delete-after: queue-length</c>, <c>ack-mode: on-confirm</c>). Both run in every round,
/// alternating which goes first; each on a fresh pair of queues filled with the same messages.
/// Both are timed until the move is complete, every copy confirmed and every original acknowledged
/// (the shovel: until it has deleted its own definition). Runs in a vhost of its own, deleted at the end.
/// </summary>
public static class MoveBenchmark
{
    /// <summary>Starts the output's last line, which says when the run ended.</summary>
    public const string FinishedPrefix = "Finished ";

    private const int MaxWarmupPasses = 10;

    public static Task<int> RunAsync(BenchSettings settings) => BenchVhost.RunAsync(settings, "move", async scratch =>
    {
        var (connection, management, broker, vhost) = (scratch.Connection, scratch.Management, scratch.Broker, scratch.Name);
        Console.WriteLine($"Moving {settings.Messages:N0} messages ({Describe(settings)}), {settings.Runs} rounds, vhost {vhost}");
        var cpu = new CpuClock(await BrokerPidAsync(management));
        var methods = new List<Method> { new("shovel", null) };
        methods.AddRange(settings.Prefetches.Select(prefetch => new Method("conveyor", prefetch)));
        var results = methods.ToDictionary(m => m, _ => new List<Measured>());

        // Not measured: loads the shovel plugin's code once, and compiles the walker's, as a running
        // broker and Api have them. Tiering the walk's async code up takes many passes on two busy
        // cores, so Conveyor's move repeats its warm-up until one spends under 1 % of its time in the
        // JIT, at most 10 times. Passes of 2,000 seldom get there, but the rounds of 50,000 after ten of
        // them compiled for 0.2–1.3 % of their time (bench/analysis.md §4); each round prints its share.
        var warmup = settings with { Messages = Math.Min(settings.Messages, 2000) };
        foreach (var method in methods)
        {
            var passes = 0;
            Measured pass;
            do
            {
                passes++;
                pass = await MeasureAsync(connection, management, broker, vhost, cpu, method, "warmup", warmup);
            }
            while (method.Prefetch is not null && pass.JitShare >= 0.01 && passes < MaxWarmupPasses);

            Console.WriteLine($"  warm-up: {method.Name,-20} {passes} passes of {warmup.Messages:N0}, last {pass.JitShare:P1} of its time in the JIT");
        }

        for (var round = 1; round <= settings.Runs; round++)
        {
            // Each method goes first equally often.
            var order = methods.Skip(round % methods.Count).Concat(methods.Take(round % methods.Count)).ToList();
            foreach (var method in order)
            {
                var measured = await MeasureAsync(connection, management, broker, vhost, cpu, method, $"{round}", settings);
                results[method].Add(measured);
                Console.WriteLine($"  round {round}: {method.Name,-20} {measured.Rate,9:N0} msg/s   CPU per message: bench process {measured.ClientMicroseconds,5:N0} µs, broker {measured.BrokerMicroseconds?.ToString("N0", CultureInfo.InvariantCulture) ?? "?",5} µs; JIT {measured.JitShare:P1}");
            }
        }

        Print(methods, results, settings);
        PrintFinished();
        return 0;
    });

    /// <summary>The output's last line: the report's "measured at" (bench/Conveyor.Bench MarkdownReport); a file's time changes when it is copied.</summary>
    public static void PrintFinished() =>
        Console.WriteLine($"{FinishedPrefix}{DateTime.UtcNow.ToString("yyyy-MM-dd HH:mm", CultureInfo.InvariantCulture)} UTC");

    private static async Task<Measured> MeasureAsync(
        IConnection connection, HttpClient management, RabbitMqOptions broker, string vhost, CpuClock cpu, Method method, string round, BenchSettings settings)
    {
        var queue = $"bench-{round}-{method.Kind}-{method.Prefetch}";
        await FillAsync(connection, queue, settings);
        var before = cpu.Now();
        var jitBefore = System.Runtime.JitInfo.GetCompilationTime();
        var started = Stopwatch.GetTimestamp();
        var rate = method.Prefetch is { } prefetch
            ? await MoveWithConveyorAsync(connection, broker, queue, prefetch, settings.Messages)
            : await MoveWithShovelAsync(connection, management, vhost, queue, settings.Messages);
        var after = cpu.Now();
        var jitShare = (System.Runtime.JitInfo.GetCompilationTime() - jitBefore) / Stopwatch.GetElapsedTime(started);
        await using (var cleanup = await connection.CreateChannelAsync())
        {
            await cleanup.QueueDeleteAsync(queue);
            await cleanup.QueueDeleteAsync(queue + ErrorQueueNames.ErrorSuffix);
        }

        return new Measured(
            rate,
            (after.Ours - before.Ours).TotalMicroseconds / settings.Messages,
            after.Broker - before.Broker is { } brokerCpu ? brokerCpu.TotalMicroseconds / settings.Messages : null,
            jitShare);
    }

    /// <summary>Lazy classic queues, as the worker declares them by default; <c>CONVEYOR_BENCH_LAZY=0</c>: the broker's default mode.</summary>
    private static readonly bool LazyQueues = Environment.GetEnvironmentVariable("CONVEYOR_BENCH_LAZY") != "0";

    private static Dictionary<string, object?>? QueueArguments(string queue) => new RabbitMqOptions { LazyQueues = LazyQueues }.JobQueueArguments(queue);

    /// <summary>What the error queue holds, for the output.</summary>
    internal static string Describe(BenchSettings settings) => settings.Faults == FaultKinds.Worker
        ? $"the worker's dead-lettered charge, {WorkerFault.Instance.BodyBytes} B body + its fault headers"
        : $"{settings.BodyBytes} B, synthetic fault headers";

    /// <summary>
    /// Puts N dead-lettered messages into queue_error (<see cref="BenchSettings.Faults"/>: a random body under
    /// five short MassTransit fault headers, or copies of one the worker dead-lettered); the i-th carries
    /// <paramref name="exceptionTypeOf"/>(i) as its fault's exception type (default: as the kind has it).
    /// </summary>
    internal static async Task FillAsync(IConnection connection, string queue, BenchSettings settings, Func<int, string>? exceptionTypeOf = null)
    {
        await using var channel = await connection.CreateChannelAsync(new CreateChannelOptions(
            publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true,
            outstandingPublisherConfirmationsRateLimiter: new ThrottlingRateLimiter(2000)));
        // As the worker declares a job queue and MassTransit its _error queue (RabbitMq:LazyQueues).
        await channel.QueueDeclareAsync(queue, durable: true, exclusive: false, autoDelete: false, QueueArguments(queue));
        await channel.QueueDeclareAsync(queue + ErrorQueueNames.ErrorSuffix, durable: true, exclusive: false, autoDelete: false, QueueArguments(queue));
        var body = new byte[settings.BodyBytes];
        Random.Shared.NextBytes(body);
        var workerFault = settings.Faults == FaultKinds.Worker ? WorkerFault.Instance : null;
        var pending = new List<Task>(1000);
        for (var i = 0; i < settings.Messages; i++)
        {
            var (properties, messageBody) = workerFault?.Copy(queue, exceptionTypeOf?.Invoke(i)) ?? (SyntheticProperties(queue, i, exceptionTypeOf), body);
            pending.Add(channel.BasicPublishAsync(string.Empty, queue + ErrorQueueNames.ErrorSuffix, mandatory: true, properties, messageBody).AsTask());
            if (pending.Count == 1000)
            {
                await Task.WhenAll(pending);
                pending.Clear();
            }
        }

        await Task.WhenAll(pending);
    }

    /// <summary>Five short MassTransit fault headers (<see cref="FaultKinds.Synthetic"/>).</summary>
    private static BasicProperties SyntheticProperties(string queue, int i, Func<int, string>? exceptionTypeOf) =>
        new BasicProperties
        {
            MessageId = Guid.NewGuid().ToString(),
            ContentType = "application/vnd.masstransit+json",
            DeliveryMode = DeliveryModes.Persistent,
            Headers = new Dictionary<string, object?>
            {
                [FaultHeaders.ExceptionType] = exceptionTypeOf?.Invoke(i) ?? "System.TimeoutException",
                [FaultHeaders.Message] = $"The payment gateway timed out after {i % 30} seconds",
                [FaultHeaders.Timestamp] = DateTime.UtcNow.ToString("O", CultureInfo.InvariantCulture),
                [FaultHeaders.InputAddress] = $"rabbitmq://localhost/bench/{queue}",
                [FaultHeaders.Reason] = "fault",
            },
        };

    private static async Task<double> MoveWithConveyorAsync(IConnection connection, RabbitMqOptions broker, string queue, int prefetch, int messages)
    {
        var options = new ErrorQueueOptions { Prefetch = prefetch };
        var stopwatch = Stopwatch.StartNew();
        await using (var own = await ErrorQueueBroker.ConnectAsync(broker, "bench-move", CancellationToken.None))
        {
            var visitor = new OperationVisitor(new OperationPlan(
                ErrorQueueOperationKinds.Move, queue + ErrorQueueNames.ErrorSuffix, MessageFilter.All, null, null, false, Guid.NewGuid(), options.AuditMessageIdLimit));
            var walker = new QueueWalker(own, new WalkPlan(queue + ErrorQueueNames.ErrorSuffix, long.MaxValue, options), visitor, new WalkProgress());
            await walker.RunAsync(CancellationToken.None);
        }

        stopwatch.Stop();
        await VerifyAsync(connection, queue, messages);
        return messages / stopwatch.Elapsed.TotalSeconds;
    }

    private static async Task<double> MoveWithShovelAsync(IConnection connection, HttpClient management, string vhost, string queue, int messages)
    {
        // As the management UI's "Move messages": a direct (in-node) connection at both ends.
        var uri = $"amqp:///{Uri.EscapeDataString(vhost)}";
        var parameter = new Uri($"parameters/shovel/{Uri.EscapeDataString(vhost)}/{queue}-move", UriKind.Relative);
        var stopwatch = Stopwatch.StartNew();
        (await management.PutAsJsonAsync(
            parameter,
            new Dictionary<string, object>
            {
                ["value"] = new Dictionary<string, object>
                {
                    ["src-protocol"] = "amqp091",
                    ["src-uri"] = uri,
                    ["src-queue"] = queue + ErrorQueueNames.ErrorSuffix,
                    ["src-delete-after"] = "queue-length",
                    ["dest-protocol"] = "amqp091",
                    ["dest-uri"] = uri,
                    ["dest-queue"] = queue,
                    ["ack-mode"] = "on-confirm",
                },
            })).EnsureSuccessStatusCode();
        await using var probe = await connection.CreateChannelAsync();
        while ((await probe.QueueDeclarePassiveAsync(queue)).MessageCount < messages)
        {
            await Task.Delay(5);
        }

        // Every copy is in the target queue, but the last ones may not be confirmed yet, nor their
        // originals acknowledged. Conveyor's move is timed until both, so the shovel is too: it
        // deletes its own definition once it has acknowledged the last original (had it stopped
        // earlier, the unacknowledged originals would return to the error queue and the check below
        // would fail). Polled only now: management requests cost the broker CPU.
        var inTarget = stopwatch.Elapsed;
        while (true)
        {
            using var definition = await management.GetAsync(parameter);
            if (definition.StatusCode == HttpStatusCode.NotFound)
            {
                break;
            }

            await Task.Delay(5);
        }

        stopwatch.Stop();
        Console.WriteLine($"    shovel: all {messages:N0} in the target after {inTarget.TotalSeconds:F2} s, done after {stopwatch.Elapsed.TotalSeconds:F2} s");
        await VerifyAsync(connection, queue, messages);
        return messages / stopwatch.Elapsed.TotalSeconds;
    }

    private static async Task VerifyAsync(IConnection connection, string queue, int messages)
    {
        await using var probe = await connection.CreateChannelAsync();
        var moved = (await probe.QueueDeclarePassiveAsync(queue)).MessageCount;
        var left = (await probe.QueueDeclarePassiveAsync(queue + ErrorQueueNames.ErrorSuffix)).MessageCount;
        if (moved != messages || left != 0)
        {
            throw new InvalidOperationException($"{queue}: {moved} moved and {left} left, expected {messages} and 0.");
        }
    }

    /// <summary>The broker's OS process id, from the management API (null if it does not say).</summary>
    private static async Task<int?> BrokerPidAsync(HttpClient management)
    {
        using var nodes = System.Text.Json.JsonDocument.Parse(await management.GetStringAsync(new Uri("nodes", UriKind.Relative)));
        return nodes.RootElement.EnumerateArray().Select(node => node.TryGetProperty("os_pid", out var pid)
                && int.TryParse(pid.GetString(), NumberStyles.None, CultureInfo.InvariantCulture, out var value) ? value : (int?)null)
            .FirstOrDefault();
    }

    private static void Print(List<Method> methods, Dictionary<Method, List<Measured>> results, BenchSettings settings)
    {
        var shovel = results[methods[0]];
        Console.WriteLine();
        Console.WriteLine($"| {settings.Messages:N0} × {Describe(settings)}, {settings.Runs} rounds, {(LazyQueues ? "lazy" : "default-mode")} classic queues | median msg/s | min | max | CPU µs/msg, bench process | CPU µs/msg, broker |");
        Console.WriteLine("|---|---:|---:|---:|---:|---:|");
        foreach (var method in methods.Skip(1))
        {
            Console.WriteLine($"| Conveyor move (QueueWalker, prefetch {method.Prefetch}, confirms) | {Row(results[method])} |");
        }

        Console.WriteLine($"| RabbitMQ shovel \"move messages\" (on-confirm) | {Row(shovel)} |");
        foreach (var method in methods.Skip(1))
        {
            var ours = results[method];
            var perRound = ours.Zip(shovel, (o, s) => o.Rate / s.Rate).ToList();
            var label = methods.Count > 2 ? $" (prefetch {method.Prefetch})" : "";
            Console.WriteLine($"Ratio Conveyor / shovel (medians){label}: {Median([.. ours.Select(m => m.Rate)]) / Median([.. shovel.Select(m => m.Rate)]):F2}");
            Console.WriteLine($"  per round: {string.Join(", ", perRound.Select(r => r.ToString("F2", CultureInfo.InvariantCulture)))} (median {Median(perRound):F2})");
        }
    }

    private static string Row(List<Measured> runs)
    {
        var rates = runs.Select(m => m.Rate).ToList();
        var broker = runs.Where(m => m.BrokerMicroseconds is not null).Select(m => m.BrokerMicroseconds!.Value).ToList();
        return $"{Median(rates):N0} | {rates.Min():N0} | {rates.Max():N0} | {Median([.. runs.Select(m => m.ClientMicroseconds)]):N0} | {(broker.Count > 0 ? Median(broker).ToString("N0", CultureInfo.InvariantCulture) : "?")}";
    }

    /// <summary>The shovel (no prefetch) or Conveyor's move with a prefetch.</summary>
    private sealed record Method(string Kind, int? Prefetch)
    {
        public string Name => Prefetch is { } prefetch ? $"{Kind} (prefetch {prefetch})" : Kind;
    }

    /// <summary><see cref="JitShare"/>: the bench process's JIT time over the move's wall time.</summary>
    private sealed record Measured(double Rate, double ClientMicroseconds, double? BrokerMicroseconds, double JitShare);

    private static double Median(List<double> values)
    {
        var sorted = values.Order().ToList();
        return sorted.Count % 2 == 1 ? sorted[sorted.Count / 2] : (sorted[(sorted.Count / 2) - 1] + sorted[sorted.Count / 2]) / 2;
    }
}
