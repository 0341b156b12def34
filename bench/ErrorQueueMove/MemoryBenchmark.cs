using System.Globalization;
using Conveyor.Api.ErrorQueues;
using Conveyor.Storage.Operations;
using RabbitMQ.Client;

namespace Conveyor.Bench.ErrorQueueMove;

/// <summary>
/// The error-queue guarantee "memory stays bounded when a queue holds 100,000 messages", measured:
/// this process's live managed heap (after a full collection) and resident set, sampled while the
/// Api's walker (<see cref="QueueWalker"/> + <see cref="OperationVisitor"/>, default options) runs
/// over an error queue of N/10 and of N messages. Two walks each: a move of every message, and a
/// move of one message in ten, which keeps the nine others unacknowledged until the end (across
/// rotated channels). Bounded means the peaks do not grow with N. Not a speed measurement: the
/// sampler forces a full collection five times a second.
/// </summary>
public static class MemoryBenchmark
{
    private const string Moved = "System.TimeoutException";
    private const string Kept = "System.InvalidOperationException";

    private static readonly (string Name, MessageFilter Filter, int MovedPerTen)[] Walks =
    [
        ("move all", MessageFilter.All, 10),
        ("move 1 in 10 (exceptionType filter), keep 9", new MessageFilter { ExceptionType = "TimeoutException" }, 1),
    ];

    public static Task<int> RunAsync(BenchSettings settings) => BenchVhost.RunAsync(settings, "memory", async scratch =>
    {
        Console.WriteLine($"Walker memory: error queues of {settings.Messages / 10:N0} and {settings.Messages:N0} messages ({MoveBenchmark.Describe(settings)}), vhost {scratch.Name}");
        Console.WriteLine();
        Console.WriteLine("| walk | messages in the error queue | moved | left in the error queue | peak live heap growth, MiB | peak RSS growth, MiB |");
        Console.WriteLine("|---|---:|---:|---:|---:|---:|");
        var failures = 0;
        foreach (var count in new[] { Math.Max(10, settings.Messages / 10), settings.Messages })
        {
            foreach (var walk in Walks)
            {
                var (row, ok) = await MeasureAsync(scratch, settings with { Messages = count }, walk.Name, walk.Filter, walk.MovedPerTen);
                Console.WriteLine(row);
                failures += ok ? 0 : 1;
            }
        }

        Console.WriteLine();
        MoveBenchmark.PrintFinished();
        return failures == 0 ? 0 : 1;
    });

    private static async Task<(string Row, bool Ok)> MeasureAsync(BenchVhost scratch, BenchSettings settings, string name, MessageFilter filter, int movedPerTen)
    {
        var queue = $"memory-{settings.Messages}-{movedPerTen}";
        var errorQueue = queue + ErrorQueueNames.ErrorSuffix;
        await MoveBenchmark.FillAsync(scratch.Connection, queue, settings, i => i % 10 < movedPerTen ? Moved : Kept);

        var heapBefore = GC.GetTotalMemory(forceFullCollection: true);
        var rssBefore = ResidentBytes();
        var (peakHeap, peakRss) = (heapBefore, rssBefore);
        using var stop = new CancellationTokenSource();
        var sampler = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                peakHeap = Math.Max(peakHeap, GC.GetTotalMemory(forceFullCollection: true));
                peakRss = Math.Max(peakRss, ResidentBytes());
                await Task.Delay(200, stop.Token).ContinueWith(_ => { }, TaskScheduler.Default);
            }
        });

        var options = new ErrorQueueOptions();
        var visitor = new OperationVisitor(new OperationPlan(
            ErrorQueueOperationKinds.Move, errorQueue, filter, null, null, false, Guid.NewGuid(), options.AuditMessageIdLimit));
        long left;
        string? stoppedEarly;
        await using (var own = await ErrorQueueBroker.ConnectAsync(scratch.Broker, "bench-memory", CancellationToken.None))
        {
            var walker = new QueueWalker(own, new WalkPlan(errorQueue, long.MaxValue, options), visitor, new WalkProgress());
            left = await walker.RunAsync(CancellationToken.None);
            stoppedEarly = walker.StoppedEarly;
        }

        await stop.CancelAsync();
        await sampler;

        long inTarget;
        await using (var probe = await scratch.Connection.CreateChannelAsync())
        {
            inTarget = (await probe.QueueDeclarePassiveAsync(queue)).MessageCount;
            await probe.QueueDeleteAsync(queue);
            await probe.QueueDeleteAsync(errorQueue);
        }

        var expectedMoved = (long)settings.Messages / 10 * movedPerTen;
        var ok = visitor.Moved == expectedMoved && inTarget == expectedMoved && left == settings.Messages - expectedMoved && stoppedEarly is null;
        var row = $"| {name} | {settings.Messages:N0} | {visitor.Moved:N0} | {left:N0} | {Mib(peakHeap - heapBefore)} | {Mib(peakRss - rssBefore)} |"
            + (ok ? "" : $" **unexpected: {inTarget:N0} in the target, expected {expectedMoved:N0} moved; {stoppedEarly}**");
        return (row, ok);
    }

    private static string Mib(long bytes) => (bytes / 1024d / 1024d).ToString("F1", CultureInfo.InvariantCulture);

    /// <summary>VmRSS of this process, from /proc/self/status (0 where there is none).</summary>
    private static long ResidentBytes()
    {
        var line = File.Exists("/proc/self/status")
            ? File.ReadLines("/proc/self/status").FirstOrDefault(l => l.StartsWith("VmRSS:", StringComparison.Ordinal))
            : null;
        return line is null ? 0 : long.Parse(line["VmRSS:".Length..].Trim().Split(' ')[0], CultureInfo.InvariantCulture) * 1024;
    }
}
