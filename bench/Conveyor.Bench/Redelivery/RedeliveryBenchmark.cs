using System.Buffers.Binary;
using System.Collections.Concurrent;
using System.Diagnostics;
using System.Diagnostics.Metrics;
using Conveyor.Bench.Consume;
using Conveyor.Bench.Infrastructure;
using Conveyor.Bench.Reporting;
using Conveyor.Worker;
using Conveyor.Worker.Redelivery;
using Npgsql;
using RabbitMQ.Client;
using RabbitMQ.Client.Events;

namespace Conveyor.Bench.Redelivery;

/// <summary>
/// Benchmark 3: the real <see cref="RedeliveryDispatcher"/> in a worker host. Paced: rows are stored
/// with RedeliveryStore's SQL (insert + pg_notify), due times spread at the target rate a fixed lead
/// after their insert; a raw consumer stamps each arrival. Burst: a backlog of rows all due at once,
/// drained as fast as the dispatcher can, against raw confirmed publishes of the same bodies.
/// </summary>
public sealed class RedeliveryBenchmark(BenchEnvironment environment, BenchOptions options)
{
    private const string PacedQueue = "bench-redelivery";
    private const string BurstQueue = "bench-redelivery-burst";
    private const string BaselineQueue = "bench-redelivery-baseline";
    private const int BodyBytes = 1024;

    /// <summary>RedeliveryStore's statement (insert, ON CONFLICT DO NOTHING, pg_notify per stored row) for many rows.</summary>
    private static readonly string StoreSql = $"""
        WITH stored AS (
            INSERT INTO scheduled_messages (dedupe_key, destination, due_at, attempt, content_type, message_id, headers, body, created_at)
            SELECT key, @destination, due, 1, 'application/vnd.masstransit+json', message_id, CAST(@headers AS jsonb), body, now()
              FROM unnest(@keys, @dues, @messageIds, @bodies) AS row(key, due, message_id, body)
            ON CONFLICT (dedupe_key) DO NOTHING
            RETURNING due_at)
        SELECT pg_notify('{RedeliveryStore.Channel}', (extract(epoch FROM due_at) * 1000)::bigint::text) FROM stored
        """;

    private const string Headers = """{"MT-Activity-Id":"00-bench-01","Conveyor-Redelivery-Attempt":"1","Conveyor-First-Failure-At":"2026-01-01T00:00:00.0000000+00:00","Conveyor-Last-Error":"TransientFailureException: The payment gateway answered 503"}""";

    public async Task<BenchResult> RunAsync()
    {
        await DeclareQueuesAsync();
        await using var gateway = await InstantGateway.StartAsync();
        using var lateness = new LatenessListener();
        var settings = ConveyorWorkerVariant.Settings(environment, gateway, new ConsumeSettings(32, 16, 50));
        var worker = WorkerApp.Build(BenchEnvironment.Args(settings));
        await worker.StartAsync();
        await using var dataSource = NpgsqlDataSource.Create(environment.ConnectionString(options.RedeliveryInserters + 10));
        try
        {
            Console.WriteLine($"redelivery: paced, {options.RedeliveryRate}/s for {options.RedeliverySeconds} s, due {options.RedeliveryLeadSeconds} s after insert");
            var paced = await PacedAsync(dataSource, lateness);
            Console.WriteLine($"redelivery: paced arrival lateness p50 {Formats.Ms(paced.ArrivalP50)} ms, p99 {Formats.Ms(paced.ArrivalP99)} ms, max {Formats.Ms(paced.ArrivalMax)} ms; delivered {paced.Delivered}/{paced.Stored} at {Formats.Rate(paced.DeliveredPerSecond)}/s");

            var burst = new List<double>();
            var baseline = new List<double>();
            for (var round = 0; round < options.Runs; round++)
            {
                foreach (var dispatcher in round % 2 == 0 ? new[] { true, false } : [false, true])
                {
                    var rate = dispatcher ? await BurstAsync(dataSource) : await RawPublishAsync();
                    (dispatcher ? burst : baseline).Add(rate);
                    Console.WriteLine($"redelivery: round {round + 1}, {(dispatcher ? "dispatcher burst" : "raw confirmed publish")}: {Formats.Rate(rate)} msg/s");
                }
            }

            return Report(paced, burst, baseline);
        }
        finally
        {
            await worker.StopAsync();
            await worker.DisposeAsync();
        }
    }

    private BenchResult Report(PacedResult paced, List<double> burst, List<double> baseline)
    {
        var ratio = Stats.Median(burst.Zip(baseline, (b, r) => b / r));
        var rows = new List<IReadOnlyList<string>>
        {
            new[] { "paced: arrival − due (raw consumer)", Formats.Ms(paced.ArrivalP50), Formats.Ms(paced.ArrivalP99), Formats.Ms(paced.ArrivalMax), $"{Formats.Rate(paced.DeliveredPerSecond)} msg/s delivered ({paced.Delivered}/{paced.Stored})" },
            new[] { "paced: publish − due (conveyor.redelivery.lateness)", Formats.Ms(paced.HistogramP50), Formats.Ms(paced.HistogramP99), Formats.Ms(paced.HistogramMax), $"{paced.HistogramCount} recorded" },
            new[] { "baseline: raw publish → arrival at the same rate", Formats.Ms(paced.BaselineP50), Formats.Ms(paced.BaselineP99), Formats.Ms(paced.BaselineMax), "broker path alone" },
            new[] { "burst: dispatcher drain of a due backlog", "-", "-", "-", $"{Formats.Rate(Stats.Median(burst))} msg/s (runs {Formats.Runs(burst)}), {Formats.Ratio(ratio)} of raw" },
            new[] { "burst baseline: raw confirmed publish, batches of the dispatcher's size", "-", "-", "-", $"{Formats.Rate(Stats.Median(baseline))} msg/s (runs {Formats.Runs(baseline)})" },
        };
        var targetRateMet = paced.Delivered == paced.Stored && paced.DeliveredPerSecond >= options.RedeliveryRate * 0.95;
        return new BenchResult(
            "redelivery",
            "3. Redelivery dispatcher: lateness and throughput",
            DateTimeOffset.UtcNow,
            $"paced {options.RedeliveryRate}/s for {options.RedeliverySeconds} s ({options.RedeliveryInserters} inserting sessions, due {options.RedeliveryLeadSeconds} s after insert), burst {options.BurstMessages} due rows × {options.Runs} rounds, bodies {BodyBytes} bytes; dispatcher defaults (batch 200)",
            ["measurement", "p50 ms", "p99 ms", "max ms", "throughput"],
            rows,
            [
                "Rows are stored with RedeliveryStore's SQL (INSERT … ON CONFLICT DO NOTHING RETURNING, then pg_notify for every stored row); a statement carries every row whose insert time has come, so due times stay spread at the rate. The real RedeliveryDispatcher runs in a worker host (WorkerApp.Build).",
                paced.InsertLagP99 < options.RedeliveryLeadSeconds * 1000
                    ? $"The inserts kept pace: insert − schedule lag p99 {Formats.Ms(paced.InsertLagP99)} ms, below the {options.RedeliveryLeadSeconds} s lead, so every row was stored before it was due ({paced.Statements} statements)."
                    : $"THE INSERTS DID NOT KEEP PACE (insert − schedule lag p99 {Formats.Ms(paced.InsertLagP99)} ms > {options.RedeliveryLeadSeconds} s lead): lateness includes rows stored after their due time.",
                "Arrival is stamped by a RabbitMQ.Client consumer on the destination queue (same clock as the due times).",
                $"Dispatcher database commands in the paced phase (every Npgsql command of the process less the inserters' statements): {paced.DispatcherCommands} for {paced.Delivered} messages, {Formats.Number(paced.DispatcherCommands / (double)Math.Max(1, paced.Delivered), "0.00")} per message.",
                "Burst: rows inserted in one statement with due_at in the past, then one NOTIFY; rate = rows ÷ (last arrival − NOTIFY).",
            ],
            [
                new TargetCheck("redelivery: lateness p99 ≤ 1 s at 1,000 msg/s", $"p99 {Formats.Ms(paced.ArrivalP99)} ms (arrival), {Formats.Ms(paced.HistogramP99)} ms (publish)", paced.ArrivalP99 <= 1000 && paced.Delivered == paced.Stored),
                new TargetCheck($"redelivery: dispatcher sustains {options.RedeliveryRate} msg/s", $"{Formats.Rate(paced.DeliveredPerSecond)} msg/s paced, burst {Formats.Rate(Stats.Median(burst))} msg/s", targetRateMet),
            ]);
    }

    private async Task<PacedResult> PacedAsync(NpgsqlDataSource dataSource, LatenessListener lateness)
    {
        var total = options.RedeliveryRate * options.RedeliverySeconds;
        var due = new DateTimeOffset[total];
        var arrivals = Enumerable.Repeat(double.NaN, total).ToArray();
        var arrived = 0;
        long firstArrival = 0, lastArrival = 0;
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var consumer = await ConsumeAsync(PacedQueue, body =>
        {
            var seq = BinaryPrimitives.ReadInt64LittleEndian(body.Span);
            arrivals[seq] = (DateTimeOffset.UtcNow - due[seq]).TotalMilliseconds;
            var now = Stopwatch.GetTimestamp();
            Interlocked.CompareExchange(ref firstArrival, now, 0);
            Interlocked.Exchange(ref lastArrival, now);
            if (Interlocked.Increment(ref arrived) == total)
            {
                done.TrySetResult();
            }
        });

        lateness.Clear();
        var lead = TimeSpan.FromSeconds(options.RedeliveryLeadSeconds);
        var start = DateTimeOffset.UtcNow.AddMilliseconds(200);
        var clock = Stopwatch.StartNew();
        var startOffset = start - DateTimeOffset.UtcNow;
        var lags = new double[total];
        var stored = 0;
        var statements = 0;
        // Every command of this process: the inserters' statements and the dispatcher's queries.
        using var commands = new CommandCounter();
        // Each session stores, in one statement, every row whose insert time has come (so the rows'
        // due times stay spread at the rate however slow a commit is), with RedeliveryStore's SQL.
        var next = 0;
        var claim = new Lock();
        await Task.WhenAll(Enumerable.Range(0, options.RedeliveryInserters).Select(_ => Task.Run(async () =>
        {
            await using var connection = await dataSource.OpenConnectionAsync();
            while (true)
            {
                int from, to;
                lock (claim)
                {
                    if (next >= total)
                    {
                        return;
                    }

                    var now = clock.Elapsed - startOffset;
                    var reached = (int)Math.Min(total, Math.Floor(now.TotalSeconds * options.RedeliveryRate) + 1);
                    from = next;
                    to = Math.Max(from + 1, Math.Min(reached, from + 500));
                    next = to;
                }

                var insertAt = startOffset + TimeSpan.FromSeconds((double)from / options.RedeliveryRate);
                var wait = insertAt - clock.Elapsed;
                if (wait > TimeSpan.FromMilliseconds(1))
                {
                    await Task.Delay(wait);
                }

                for (var i = from; i < to; i++)
                {
                    due[i] = start + TimeSpan.FromSeconds((double)i / options.RedeliveryRate) + lead;
                }

                await StoreAsync(connection, from, to, due);
                Interlocked.Increment(ref statements);
                for (var i = from; i < to; i++)
                {
                    lags[i] = (clock.Elapsed - (startOffset + TimeSpan.FromSeconds((double)i / options.RedeliveryRate))).TotalMilliseconds;
                }

                Interlocked.Add(ref stored, to - from);
            }
        })));

        var last = options.RedeliveryLeadSeconds + 60;
        await Task.WhenAny(done.Task, Task.Delay(TimeSpan.FromSeconds(last)));
        var delivered = Volatile.Read(ref arrived);
        var dispatcherCommands = commands.Commands - Volatile.Read(ref statements);
        var late = arrivals.Where(a => !double.IsNaN(a)).ToArray();
        Array.Sort(late);
        var span = Stopwatch.GetElapsedTime(Interlocked.Read(ref firstArrival), Interlocked.Read(ref lastArrival)).TotalSeconds;
        var histogram = lateness.Snapshot();
        Array.Sort(lags);

        // Baseline: the broker path alone at the same rate (publish with confirm → consumer).
        var baseline = await BaselineLatencyAsync(Math.Min(total, options.RedeliveryRate * 10));
        return new PacedResult(
            stored,
            delivered,
            delivered > 1 && span > 0 ? (delivered - 1) / span : double.NaN,
            Stats.Percentile(late, 50), Stats.Percentile(late, 99), late.Length == 0 ? double.NaN : late[^1],
            histogram.Length,
            Stats.Percentile(histogram, 50), Stats.Percentile(histogram, 99), histogram.Length == 0 ? double.NaN : histogram[^1],
            baseline.P50, baseline.P99, baseline.Max,
            Stats.Percentile(lags, 99),
            statements,
            dispatcherCommands);
    }

    /// <summary>Rows already due, inserted in one statement, then one NOTIFY; rate until the last arrives.</summary>
    private async Task<double> BurstAsync(NpgsqlDataSource dataSource)
    {
        var total = options.BurstMessages;
        var arrived = 0;
        var done = new TaskCompletionSource<long>(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var consumer = await ConsumeAsync(BurstQueue, _ =>
        {
            if (Interlocked.Increment(ref arrived) == total)
            {
                done.TrySetResult(Stopwatch.GetTimestamp());
            }
        });
        await using (var connection = await dataSource.OpenConnectionAsync())
        {
            await using var insert = new NpgsqlCommand("""
                INSERT INTO scheduled_messages (dedupe_key, destination, due_at, attempt, content_type, message_id, headers, body, created_at)
                SELECT 'burst-' || @run || '-' || g, @destination, now() - interval '1 second', 1, 'application/vnd.masstransit+json',
                       gen_random_uuid()::text, CAST(@headers AS jsonb), @body, now()
                  FROM generate_series(1, @count) g
                """, connection);
            insert.Parameters.AddWithValue("run", Guid.NewGuid().ToString("N"));
            insert.Parameters.AddWithValue("destination", BurstQueue);
            insert.Parameters.AddWithValue("headers", Headers);
            insert.Parameters.AddWithValue("body", Body(0));
            insert.Parameters.AddWithValue("count", total);
            await insert.ExecuteNonQueryAsync();
        }

        var started = Stopwatch.GetTimestamp();
        await using (var connection = await dataSource.OpenConnectionAsync())
        {
            await using var notify = new NpgsqlCommand($"SELECT pg_notify('{RedeliveryStore.Channel}', '0')", connection);
            await notify.ExecuteNonQueryAsync();
        }

        var finished = await Task.WhenAny(done.Task, Task.Delay(TimeSpan.FromSeconds(120)));
        if (finished != done.Task)
        {
            throw new InvalidOperationException($"burst: {Volatile.Read(ref arrived)} of {total} arrived within 120 s");
        }

        return total / Stopwatch.GetElapsedTime(started, await done.Task).TotalSeconds;
    }

    /// <summary>What BrokerPublisher does without the database: batches of 200 publishes with confirms.</summary>
    private async Task<double> RawPublishAsync()
    {
        var total = options.BurstMessages;
        await using var connection = await environment.AmqpFactory().CreateConnectionAsync("conveyor-bench-raw-publisher");
        await using var channel = await connection.CreateChannelAsync(new CreateChannelOptions(
            publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true));
        var properties = new BasicProperties { ContentType = "application/vnd.masstransit+json", DeliveryMode = DeliveryModes.Persistent };
        var body = Body(0);
        var started = Stopwatch.GetTimestamp();
        for (var sent = 0; sent < total; sent += 200)
        {
            var batch = Math.Min(200, total - sent);
            await Task.WhenAll(Enumerable.Range(0, batch).Select(async _ =>
                await channel.BasicPublishAsync(string.Empty, BaselineQueue, mandatory: true, properties, body)));
        }

        var rate = total / Stopwatch.GetElapsedTime(started).TotalSeconds;
        await channel.QueuePurgeAsync(BaselineQueue);
        return rate;
    }

    private async Task<(double P50, double P99, double Max)> BaselineLatencyAsync(int count)
    {
        var sentAt = new long[count];
        var latencies = new double[count];
        var arrived = 0;
        var done = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        await using var consumer = await ConsumeAsync(BaselineQueue, body =>
        {
            var seq = BinaryPrimitives.ReadInt64LittleEndian(body.Span);
            latencies[seq] = Stopwatch.GetElapsedTime(sentAt[seq]).TotalMilliseconds;
            if (Interlocked.Increment(ref arrived) == count)
            {
                done.TrySetResult();
            }
        });
        await using var connection = await environment.AmqpFactory().CreateConnectionAsync("conveyor-bench-baseline");
        await using var channel = await connection.CreateChannelAsync(new CreateChannelOptions(
            publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true));
        var properties = new BasicProperties { DeliveryMode = DeliveryModes.Persistent };
        var clock = Stopwatch.StartNew();
        var pending = new List<Task>();
        for (var i = 0; i < count; i++)
        {
            var wait = TimeSpan.FromSeconds((double)i / options.RedeliveryRate) - clock.Elapsed;
            if (wait > TimeSpan.FromMilliseconds(1))
            {
                await Task.Delay(wait);
            }

            sentAt[i] = Stopwatch.GetTimestamp();
            pending.Add(channel.BasicPublishAsync(string.Empty, BaselineQueue, mandatory: true, properties, Body(i)).AsTask());
        }

        await Task.WhenAll(pending);
        await Task.WhenAny(done.Task, Task.Delay(TimeSpan.FromSeconds(30)));
        var sorted = latencies.Take(Volatile.Read(ref arrived)).ToArray();
        Array.Sort(sorted);
        return (Stats.Percentile(sorted, 50), Stats.Percentile(sorted, 99), sorted.Length == 0 ? double.NaN : sorted[^1]);
    }

    private async Task<IAsyncDisposable> ConsumeAsync(string queue, Action<ReadOnlyMemory<byte>> onMessage)
    {
        var connection = await environment.AmqpFactory().CreateConnectionAsync($"conveyor-bench-{queue}-consumer");
        var channel = await connection.CreateChannelAsync();
        await channel.BasicQosAsync(0, 1000, false);
        var consumer = new AsyncEventingBasicConsumer(channel);
        consumer.ReceivedAsync += async (_, delivery) =>
        {
            onMessage(delivery.Body);
            await channel.BasicAckAsync(delivery.DeliveryTag, multiple: false);
        };
        await channel.BasicConsumeAsync(queue, autoAck: false, consumer);
        return new Closer(connection, channel);
    }

    private async Task DeclareQueuesAsync()
    {
        await using var connection = await environment.AmqpFactory().CreateConnectionAsync("conveyor-bench-declare");
        await using var channel = await connection.CreateChannelAsync();
        foreach (var queue in new[] { PacedQueue, BurstQueue, BaselineQueue })
        {
            await channel.QueueDeclareAsync(queue, durable: true, exclusive: false, autoDelete: false);
        }
    }

    private static async Task StoreAsync(NpgsqlConnection connection, int from, int to, DateTimeOffset[] due)
    {
        var count = to - from;
        await using var command = new NpgsqlCommand(StoreSql, connection);
        command.Parameters.AddWithValue("destination", PacedQueue);
        command.Parameters.AddWithValue("headers", Headers);
        command.Parameters.AddWithValue("keys", Enumerable.Range(from, count).Select(i => $"paced-{i}").ToArray());
        command.Parameters.AddWithValue("dues", due.AsSpan(from, count).ToArray());
        command.Parameters.AddWithValue("messageIds", Enumerable.Range(0, count).Select(_ => Guid.NewGuid().ToString()).ToArray());
        command.Parameters.AddWithValue("bodies", Enumerable.Range(from, count).Select(i => Body(i)).ToArray());
        await using var reader = await command.ExecuteReaderAsync();
        while (await reader.ReadAsync())
        {
        }
    }

    private static byte[] Body(long seq)
    {
        var body = new byte[BodyBytes];
        BinaryPrimitives.WriteInt64LittleEndian(body, seq);
        body.AsSpan(8).Fill((byte)'x');
        return body;
    }

    private sealed record PacedResult(
        int Stored,
        int Delivered,
        double DeliveredPerSecond,
        double ArrivalP50,
        double ArrivalP99,
        double ArrivalMax,
        int HistogramCount,
        double HistogramP50,
        double HistogramP99,
        double HistogramMax,
        double BaselineP50,
        double BaselineP99,
        double BaselineMax,
        double InsertLagP99,
        int Statements,
        long DispatcherCommands);

    /// <summary>Collects what the dispatcher records in <c>conveyor.redelivery.lateness</c>, in milliseconds.</summary>
    private sealed class LatenessListener : IDisposable
    {
        // The worker's meter and instrument names: what operators scrape, so stable.
        private const string MeterName = "Conveyor.Worker";

        private readonly MeterListener _listener = new();
        private readonly ConcurrentQueue<double> _values = new();

        public LatenessListener()
        {
            _listener.InstrumentPublished = (instrument, listener) =>
            {
                if (instrument.Meter.Name == MeterName && instrument.Name == "conveyor.redelivery.lateness")
                {
                    listener.EnableMeasurementEvents(instrument);
                }
            };
            _listener.SetMeasurementEventCallback<double>((_, seconds, _, _) => _values.Enqueue(seconds * 1000));
            _listener.Start();
        }

        public void Clear() => _values.Clear();

        public double[] Snapshot()
        {
            var values = _values.ToArray();
            Array.Sort(values);
            return values;
        }

        public void Dispose() => _listener.Dispose();
    }

    private sealed class Closer(IConnection connection, IChannel channel) : IAsyncDisposable
    {
        public async ValueTask DisposeAsync()
        {
            await channel.CloseAsync();
            await channel.DisposeAsync();
            await connection.CloseAsync();
            await connection.DisposeAsync();
        }
    }
}
