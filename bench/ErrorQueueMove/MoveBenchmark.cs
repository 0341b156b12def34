using System.Diagnostics;
using System.Globalization;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text;
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
/// Runs in a vhost of its own, deleted at the end.
/// </summary>
public static class MoveBenchmark
{
    public static async Task<int> RunAsync(BenchSettings settings)
    {
        var vhost = $"conveyor-bench-move-{Guid.NewGuid():N}"[..30];
        var broker = new RabbitMqOptions
        {
            Host = settings.Broker.Host,
            Port = settings.Broker.Port,
            ManagementPort = settings.Broker.ManagementPort,
            Username = settings.Broker.Username,
            Password = settings.Broker.Password,
            ConnectTimeoutSeconds = settings.Broker.ConnectTimeoutSeconds,
            VirtualHost = vhost,
        };
        using var management = new HttpClient
        {
            BaseAddress = new Uri($"http://{broker.Host}:{broker.ManagementPort}/api/"),
            Timeout = TimeSpan.FromSeconds(60),
        };
        management.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue(
            "Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes($"{broker.Username}:{broker.Password}")));

        Console.WriteLine($"Moving {settings.Messages:N0} messages of {settings.BodyBytes} bytes, {settings.Runs} rounds, vhost {vhost}");
        (await management.PutAsync(new Uri($"vhosts/{Uri.EscapeDataString(vhost)}", UriKind.Relative), null)).EnsureSuccessStatusCode();
        try
        {
            (await management.PutAsJsonAsync(
                new Uri($"permissions/{Uri.EscapeDataString(vhost)}/{Uri.EscapeDataString(broker.Username)}", UriKind.Relative),
                new { configure = ".*", write = ".*", read = ".*" })).EnsureSuccessStatusCode();
            await using var connection = await ErrorQueueBroker.ConnectAsync(broker, "bench", CancellationToken.None);
            var ours = new List<double>();
            var shovel = new List<double>();
            for (var round = 1; round <= settings.Runs; round++)
            {
                var oursFirst = round % 2 == 1;
                foreach (var method in oursFirst ? new[] { "conveyor", "shovel" } : ["shovel", "conveyor"])
                {
                    var queue = $"bench-{round}-{method}";
                    await FillAsync(connection, queue, settings);
                    var rate = method == "conveyor"
                        ? await MoveWithConveyorAsync(connection, broker, queue, settings.Messages)
                        : await MoveWithShovelAsync(connection, management, vhost, queue, settings.Messages);
                    (method == "conveyor" ? ours : shovel).Add(rate);
                    Console.WriteLine($"  round {round}: {method,-8} {rate,9:N0} msg/s");
                    await using var cleanup = await connection.CreateChannelAsync();
                    await cleanup.QueueDeleteAsync(queue);
                    await cleanup.QueueDeleteAsync(queue + ErrorQueueNames.ErrorSuffix);
                }
            }

            Print(ours, shovel, settings);
            return 0;
        }
        finally
        {
            await management.DeleteAsync(new Uri($"vhosts/{Uri.EscapeDataString(vhost)}", UriKind.Relative));
        }
    }

    /// <summary>Puts N dead-letter-like messages (MassTransit fault headers, 1 KiB body) into queue_error.</summary>
    private static async Task FillAsync(IConnection connection, string queue, BenchSettings settings)
    {
        await using var channel = await connection.CreateChannelAsync(new CreateChannelOptions(
            publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true,
            outstandingPublisherConfirmationsRateLimiter: new ThrottlingRateLimiter(2000)));
        await channel.QueueDeclareAsync(queue, durable: true, exclusive: false, autoDelete: false);
        await channel.QueueDeclareAsync(queue + ErrorQueueNames.ErrorSuffix, durable: true, exclusive: false, autoDelete: false);
        var body = new byte[settings.BodyBytes];
        Random.Shared.NextBytes(body);
        var pending = new List<Task>(1000);
        for (var i = 0; i < settings.Messages; i++)
        {
            var properties = new BasicProperties
            {
                MessageId = Guid.NewGuid().ToString(),
                ContentType = "application/vnd.masstransit+json",
                DeliveryMode = DeliveryModes.Persistent,
                Headers = new Dictionary<string, object?>
                {
                    [FaultHeaders.ExceptionType] = "System.TimeoutException",
                    [FaultHeaders.Message] = $"The payment gateway timed out after {i % 30} seconds",
                    [FaultHeaders.Timestamp] = DateTime.UtcNow.ToString("O", CultureInfo.InvariantCulture),
                    [FaultHeaders.InputAddress] = $"rabbitmq://localhost/bench/{queue}",
                    [FaultHeaders.Reason] = "fault",
                },
            };
            pending.Add(channel.BasicPublishAsync(string.Empty, queue + ErrorQueueNames.ErrorSuffix, mandatory: true, properties, body).AsTask());
            if (pending.Count == 1000)
            {
                await Task.WhenAll(pending);
                pending.Clear();
            }
        }

        await Task.WhenAll(pending);
    }

    private static async Task<double> MoveWithConveyorAsync(IConnection connection, RabbitMqOptions broker, string queue, int messages)
    {
        var options = new ErrorQueueOptions();
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
        var stopwatch = Stopwatch.StartNew();
        (await management.PutAsJsonAsync(
            new Uri($"parameters/shovel/{Uri.EscapeDataString(vhost)}/{queue}-move", UriKind.Relative),
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

        stopwatch.Stop();
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

    private static void Print(List<double> ours, List<double> shovel, BenchSettings settings)
    {
        var oursMedian = Median(ours);
        var shovelMedian = Median(shovel);
        Console.WriteLine();
        Console.WriteLine($"| {settings.Messages:N0} × {settings.BodyBytes} B, {settings.Runs} rounds | median msg/s | min | max |");
        Console.WriteLine("|---|---:|---:|---:|");
        Console.WriteLine($"| Conveyor move (QueueWalker, prefetch 1000, confirms) | {oursMedian:N0} | {ours.Min():N0} | {ours.Max():N0} |");
        Console.WriteLine($"| RabbitMQ shovel \"move messages\" (on-confirm) | {shovelMedian:N0} | {shovel.Min():N0} | {shovel.Max():N0} |");
        Console.WriteLine($"Ratio Conveyor / shovel (medians): {oursMedian / shovelMedian:F2}");
    }

    private static double Median(List<double> values)
    {
        var sorted = values.Order().ToList();
        return sorted.Count % 2 == 1 ? sorted[sorted.Count / 2] : (sorted[(sorted.Count / 2) - 1] + sorted[sorted.Count / 2]) / 2;
    }
}
