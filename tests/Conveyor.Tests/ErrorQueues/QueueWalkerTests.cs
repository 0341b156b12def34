using Conveyor.Api.ErrorQueues;
using Conveyor.Storage.Operations;
using Conveyor.Tests.Infrastructure;
using RabbitMQ.Client;

namespace Conveyor.Tests.ErrorQueues;

/// <summary>
/// The walker's confirm bookkeeping against the real broker, with windows small enough that every
/// walk spans many confirm batches: a copy the broker returns or refuses keeps its original, and a walk cut off
/// anywhere (the connection dropped, as when the process dies) loses nothing and reorders nothing.
/// </summary>
[Collection(SecondLaneCollection.Name)]
public sealed class QueueWalkerTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Timeout = "System.TimeoutException";
    private const string Declined = "Conveyor.Worker.Payments.PaymentDeclinedException";

    private TestBroker _broker = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        _broker = await TestBroker.ConnectAsync(fixture);
    }

    public async Task DisposeAsync() => await _broker.DisposeAsync();

    [Fact]
    public async Task Copies_the_broker_returns_leave_their_originals_in_place_and_in_order()
    {
        // Every seventh message names a queue that does not exist: the broker returns its copy.
        var routed = new List<string>();
        var returned = new List<string>();
        for (var i = 0; i < 300; i++)
        {
            var lost = i % 7 == 3;
            var headers = lost ? new Dictionary<string, object?> { ["MT-Fault-InputAddress"] = "rabbitmq://127.0.0.1/test/no-such-queue" } : null;
            var id = (await _broker.DeadLetterChargeAsync(Timeout, "timed out", extraHeaders: headers)).ToString();
            (lost ? returned : routed).Add(id);
        }

        await using var connection = await ConnectAsync();
        var visitor = Visitor(MessageFilter.All);
        var walker = Walker(connection, visitor, prefetch: 40);
        var left = await walker.RunAsync(CancellationToken.None);

        Assert.Equal((300L, routed.Count, returned.Count), (visitor.Matched, visitor.Moved, visitor.Failed));
        Assert.Equal(returned.Count, left);
        Assert.Equal(returned, await _broker.IdsAsync(ErrorQueueKit.ChargeErrors));
        Assert.Equal(routed, await _broker.IdsAsync(ErrorQueueKit.ChargeQueue));
        Assert.Contains(visitor.Snapshot().Errors, error => error.Contains("returned", StringComparison.Ordinal));
    }

    [Fact]
    public async Task Copies_the_broker_refuses_leave_their_originals_in_place_and_in_order()
    {
        // A target that takes 100 messages and refuses (nacks) every publish after that.
        const string capped = "charge-payment-capped";
        await using var connection = await ConnectAsync();
        await using (var setup = await connection.CreateChannelAsync())
        {
            await setup.QueueDeclareAsync(capped, durable: true, exclusive: false, autoDelete: false, arguments: new Dictionary<string, object?>
            {
                ["x-max-length"] = 100,
                ["x-overflow"] = "reject-publish",
            });
        }

        var ids = new List<string>();
        for (var i = 0; i < 300; i++)
        {
            ids.Add((await _broker.DeadLetterChargeAsync(Timeout, "timed out")).ToString());
        }

        var visitor = new OperationVisitor(new OperationPlan(
            ErrorQueueOperationKinds.Move, ErrorQueueKit.ChargeErrors, MessageFilter.All, capped, null, false, Guid.NewGuid(), 1000));
        var left = await Walker(connection, visitor, prefetch: 40).RunAsync(CancellationToken.None);

        Assert.Equal((100L, 200L, 200L), (visitor.Moved, visitor.Failed, left));
        Assert.Equal(ids.Take(100), await _broker.IdsAsync(capped));
        Assert.Equal(ids.Skip(100), await _broker.IdsAsync(ErrorQueueKit.ChargeErrors));
        Assert.Contains(visitor.Snapshot().Errors, error => error.Contains("nack", StringComparison.Ordinal));
    }

    [Theory]
    [InlineData(1)]
    [InlineData(40)]
    [InlineData(97)]
    [InlineData(260)]
    public async Task A_walk_cut_off_at_any_point_loses_nothing_and_the_rest_keep_their_order(int cutAt)
    {
        var all = new List<string?>();
        var declined = new List<string?>();
        for (var i = 0; i < 300; i++)
        {
            var keep = i % 4 == 1;
            var id = (await _broker.DeadLetterChargeAsync(keep ? Declined : Timeout, "failed")).ToString();
            all.Add(id);
            if (keep)
            {
                declined.Add(id);
            }
        }

        // The connection drops while the walk decides message number cutAt: copies are in flight,
        // confirms outstanding, acknowledgements unsent.
        var connection = await ConnectAsync();
        var visitor = new CuttingVisitor(Visitor(new MessageFilter { ExceptionType = Timeout }), cutAt, () => connection.AbortAsync(TimeSpan.Zero));
        try
        {
            await Walker(connection, visitor, prefetch: 40).RunAsync(CancellationToken.None);
        }
        catch (Exception exception) when (exception is not Xunit.Sdk.XunitException)
        {
            // The walk ends with the connection; what it had not acknowledged returns to the queue.
        }

        await connection.DisposeAsync();
        Assert.True(visitor.Cut, "the walk ended before the cut");

        var (errors, copies) = await AccountedForAsync(all);

        // What stayed is in its original order, the kept ones all among it; only matches were copied.
        Assert.Equal(all.Where(errors.Contains), errors);
        Assert.Equal(declined, errors.Where(declined.Contains));
        Assert.DoesNotContain(copies, declined.Contains);
        Assert.Equal(copies.Distinct(), copies);

        // A second walk finishes the move; a message left in both places is copied twice, never lost.
        await using (var again = await ConnectAsync())
        {
            await Walker(again, Visitor(new MessageFilter { ExceptionType = Timeout }), prefetch: 40).RunAsync(CancellationToken.None);
        }

        Assert.Equal(declined, await _broker.IdsAsync(ErrorQueueKit.ChargeErrors));
        Assert.Equal(all.Except(declined).ToHashSet(), (await _broker.IdsAsync(ErrorQueueKit.ChargeQueue)).ToHashSet());
    }

    [Theory]
    [InlineData(1)]
    [InlineData(97)]
    public async Task A_walk_whose_broker_stops_answering_ends_and_loses_nothing(int stallAt)
    {
        var all = new List<string?>();
        for (var i = 0; i < 300; i++)
        {
            all.Add((await _broker.DeadLetterChargeAsync(Timeout, "failed")).ToString());
        }

        // Through a relay that stops moving bytes, as a broker blocking its publishers (memory or disk
        // alarm) stops reading: no confirm, no cancel-ok, and writes that never drain.
        var broker = fixture.RabbitOptions();
        await using var relay = await OutageProxy.ToAsync(broker.Host, broker.Port);
        // The client's own wait for a reply (RabbitMQ.Client's ContinuationTimeout) cut from its default of 20 s to 5 s:
        // the walk ends on whichever comes first, that or its confirm timeout, and the disposal below waits it out once
        // more. The walk's code is the same with either; the default only made this test wait 40 s more per case.
        var factory = fixture.AmqpFactory();
        factory.Port = relay.Port;
        factory.AutomaticRecoveryEnabled = false;
        factory.ContinuationTimeout = TimeSpan.FromSeconds(5);
        var connection = await factory.CreateConnectionAsync("tests-walker-stalled", CancellationToken.None);
        var visitor = new CuttingVisitor(Visitor(MessageFilter.All), stallAt, () =>
        {
            relay.Stall();
            return Task.CompletedTask;
        });
        var options = new ErrorQueueOptions { Prefetch = 40, IdleCheckMilliseconds = 500, ConfirmTimeoutSeconds = 2 };
        var walker = new QueueWalker(connection, new WalkPlan(ErrorQueueKit.ChargeErrors, long.MaxValue, options), visitor, new WalkProgress());

        // Bounded, not timed: before the fix the walk waited for ever.
        var walk = walker.RunAsync(CancellationToken.None);
        var ended = await Task.WhenAny(walk, Task.Delay(TimeSpan.FromMinutes(2)));
        Assert.True(ended == walk, "the walk did not end while the broker stopped answering");
        var failure = await Assert.ThrowsAsync<WalkInterruptedException>(() => walk);
        // No confirm within the timeout, or no answer to a request (the client's own timeout), whichever came first.
        Assert.Matches("^The broker (confirmed no copy|did not answer).*; stopped", failure.Message);
        Assert.False(connection.IsOpen, "the walk left its stuck connection open");
        var disposing = connection.DisposeAsync().AsTask();
        Assert.True(await Task.WhenAny(disposing, Task.Delay(TimeSpan.FromMinutes(1))) == disposing, "disposing the walk's connection hung");

        // The broker sees the connection go once the relay moves again; what was not acknowledged returns.
        relay.Resume();
        var (errors, _) = await AccountedForAsync(all);

        // Not the order: reading a queue here takes and requeues its messages, which interleaves with the
        // broker requeueing the dropped connection's (the cut-off test above checks the order).
        Assert.True(visitor.Cut, "the walk ended before the stall");
        Assert.True(errors.Count > 0, "every message moved: the stall came too late to test anything");
    }

    /// <summary>
    /// A header written as an AMQP timestamp in milliseconds, not seconds (a producer's slip), lies past the year
    /// 9999: reading it threw, the whole message was taken as unreadable and kept without a word, so a purge of
    /// every message succeeded in full and left it in the queue.
    /// </summary>
    [Theory]
    [InlineData(ErrorQueueOperationKinds.Purge)]
    [InlineData(ErrorQueueOperationKinds.Move)]
    public async Task A_message_with_a_timestamp_header_no_date_can_hold_is_purged_or_moved_as_any_other(string kind)
    {
        var milliseconds = new Dictionary<string, object?> { ["MT-Fault-Timestamp"] = new AmqpTimestamp(DateTimeOffset.UtcNow.ToUnixTimeMilliseconds()) };
        var ids = new List<string>
        {
            (await _broker.DeadLetterChargeAsync(Timeout, "timed out")).ToString(),
            (await _broker.DeadLetterChargeAsync(Timeout, "timed out", extraHeaders: milliseconds)).ToString(),
            (await _broker.DeadLetterChargeAsync(Timeout, "timed out")).ToString(),
        };

        await using var connection = await ConnectAsync();
        var visitor = new OperationVisitor(new OperationPlan(kind, ErrorQueueKit.ChargeErrors, MessageFilter.All, null, null, false, Guid.NewGuid(), 1000));
        var left = await Walker(connection, visitor, prefetch: 40).RunAsync(CancellationToken.None);

        Assert.Equal((3L, 3L, 0L, 0L), (visitor.Matched, visitor.Moved + visitor.Purged, visitor.Failed, left));
        Assert.Empty(await _broker.IdsAsync(ErrorQueueKit.ChargeErrors));
        Assert.Equal(kind == ErrorQueueOperationKinds.Move ? ids : [], await _broker.IdsAsync(ErrorQueueKit.ChargeQueue));
    }

    [Fact]
    public async Task A_throttled_move_cancelled_while_it_waits_for_its_turn_accounts_for_every_match()
    {
        var all = new List<string?>();
        for (var i = 0; i < 5; i++)
        {
            all.Add((await _broker.DeadLetterChargeAsync(Timeout, "failed")).ToString());
        }

        // One message a second: the second match waits for its turn, and the operation is cancelled then.
        using var cancel = new CancellationTokenSource();
        var visitor = new CuttingVisitor(Visitor(MessageFilter.All), 2, () => cancel.CancelAsync());
        await using var connection = await ConnectAsync();
        var options = new ErrorQueueOptions { Prefetch = 40, IdleCheckMilliseconds = 500, MaxMessagesPerSecond = 1 };
        var walker = new QueueWalker(connection, new WalkPlan(ErrorQueueKit.ChargeErrors, long.MaxValue, options), visitor, new WalkProgress());
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => walker.RunAsync(cancel.Token));

        var inner = visitor.Inner;
        Assert.True(inner.Matched >= 2, $"only {inner.Matched} matched before the cancellation");
        Assert.Equal(inner.Matched, inner.Moved + inner.Failed);
        Assert.Contains(inner.Snapshot().Errors, error => error.Contains("cancelled", StringComparison.Ordinal));
        await Eventually.AssertAsync(async () =>
        {
            var errors = await _broker.IdsAsync(ErrorQueueKit.ChargeErrors);
            var copies = await _broker.IdsAsync(ErrorQueueKit.ChargeQueue);
            Assert.Equal(inner.Moved, copies.Count);
            Assert.Equal(all, copies.Concat(errors));
        });
    }

    /// <summary>
    /// A dry run counts a match, then checks that its target queue exists. A check that threw (the operation cancelled
    /// while it waited for the broker's answer: the Api shutting down, the queue's lock lost; or the connection gone)
    /// left the match counted but neither as a message that would move nor as one that would fail, so the dry run's
    /// "would move" (matched less failed) counted a message whose target nobody had checked.
    /// </summary>
    [Fact]
    public async Task A_dry_run_stopped_while_it_checks_a_target_accounts_for_every_match()
    {
        var elsewhere = new Dictionary<string, object?> { ["MT-Fault-InputAddress"] = "rabbitmq://127.0.0.1/test/dry-run-elsewhere" };
        var all = new List<string>
        {
            (await _broker.DeadLetterChargeAsync(Timeout, "failed")).ToString(),
            (await _broker.DeadLetterChargeAsync(Timeout, "failed", extraHeaders: elsewhere)).ToString(),
            (await _broker.DeadLetterChargeAsync(Timeout, "failed")).ToString(),
        };

        // The second message names a target not checked yet: the operation is cancelled as it is decided, so its check throws.
        using var cancel = new CancellationTokenSource();
        var visitor = new CancellingVisitor(
            new OperationVisitor(new OperationPlan(ErrorQueueOperationKinds.Move, ErrorQueueKit.ChargeErrors, MessageFilter.All, null, null, true, Guid.NewGuid(), 1000)),
            2,
            cancel);
        await using var connection = await ConnectAsync();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => Walker(connection, visitor, prefetch: 40).RunAsync(cancel.Token));

        var inner = visitor.Inner;
        var (messageIds, _, targets, errors) = inner.Snapshot();
        Assert.Equal([all[0]], messageIds);
        Assert.Equal(new Dictionary<string, long> { [ErrorQueueKit.ChargeQueue] = 1 }, targets);
        Assert.Equal(2, inner.Matched);
        Assert.Equal(inner.Matched, messageIds.Count + inner.Failed);
        Assert.Contains(errors, error => error.StartsWith("Not checked", StringComparison.Ordinal));
        await Eventually.AssertAsync(async () => Assert.Equal(all, await _broker.IdsAsync(ErrorQueueKit.ChargeErrors)));
    }

    [Fact]
    public async Task A_move_of_large_messages_holds_about_MaxPendingBytes_of_them_not_a_prefetch_window()
    {
        // 120 messages of 256 KiB under the default window of 1,000 and a 1 MiB budget: a window sized in
        // messages alone would have all 30 MiB delivered and held at once.
        const int Size = 256 * 1024;
        var ids = new List<string?>();
        for (var i = 0; i < 120; i++)
        {
            ids.Add((await _broker.DeadLetterChargeAsync(Timeout, "timed out", bodyPadding: Size)).ToString());
        }

        await using var connection = await ConnectAsync();
        var visitor = Visitor(MessageFilter.All);
        var progress = new WalkProgress();
        var options = new ErrorQueueOptions { MaxPendingBytes = 1024 * 1024, IdleCheckMilliseconds = 500 };
        var left = await new QueueWalker(connection, new WalkPlan(ErrorQueueKit.ChargeErrors, long.MaxValue, options), visitor, progress)
            .RunAsync(CancellationToken.None);

        Assert.Equal((120L, 120L, 0L, 0L), (visitor.Matched, visitor.Moved, visitor.Failed, left));
        Assert.Equal(ids, await _broker.IdsAsync(ErrorQueueKit.ChargeQueue));
        // At most the first channel's window, taken before any size was known; then about the budget.
        Assert.InRange(progress.PeakHeldBytes, Size, (QueueWalker.FirstMovingWindow + 1) * (Size + 2048L));
    }

    [Fact]
    public async Task A_move_that_selects_large_messages_still_passes_over_as_many_as_the_full_window_lets_it()
    {
        // A large match first sizes the window down (1 MiB over ~257 KiB: 3); the 2,000 small messages the
        // filter leaves behind still get channels of the full window, 500 kept each, not 1 or 2 each.
        const int Size = 256 * 1024;
        var kept = new List<string?>();
        var moved = new List<string?> { (await _broker.DeadLetterChargeAsync(Timeout, "timed out", bodyPadding: Size)).ToString() };
        for (var i = 0; i < 2000; i++)
        {
            kept.Add((await _broker.DeadLetterChargeAsync(Declined, "declined")).ToString());
        }

        moved.Add((await _broker.DeadLetterChargeAsync(Timeout, "timed out", bodyPadding: Size)).ToString());

        await using var connection = await ConnectAsync();
        var visitor = Visitor(new MessageFilter { ExceptionType = Timeout });
        var options = new ErrorQueueOptions { MaxPendingBytes = 1024 * 1024, MaxChannels = 12, IdleCheckMilliseconds = 500 };
        var walker = new QueueWalker(connection, new WalkPlan(ErrorQueueKit.ChargeErrors, long.MaxValue, options), visitor, new WalkProgress());
        var left = await walker.RunAsync(CancellationToken.None);

        Assert.Null(walker.StoppedEarly);
        Assert.Equal((2L, 2000L), (visitor.Moved, left));
        Assert.Equal(moved, await _broker.IdsAsync(ErrorQueueKit.ChargeQueue));
        Assert.Equal(kept, await _broker.IdsAsync(ErrorQueueKit.ChargeErrors));
    }

    /// <summary>Waits until every message is in the error queue or among the copies, and reads both queues.</summary>
    private async Task<(IReadOnlyList<string?> Errors, IReadOnlyList<string?> Copies)> AccountedForAsync(IReadOnlyList<string?> all)
    {
        IReadOnlyList<string?> errors = [];
        IReadOnlyList<string?> copies = [];
        await Eventually.AssertAsync(async () =>
        {
            errors = await _broker.IdsAsync(ErrorQueueKit.ChargeErrors);
            copies = await _broker.IdsAsync(ErrorQueueKit.ChargeQueue);
            Assert.Equal(all.ToHashSet(), errors.Concat(copies).ToHashSet());
        });
        return (errors, copies);
    }

    [Fact]
    public async Task A_message_that_cannot_be_read_is_kept_in_place_counted_and_its_reason_reported()
    {
        var ids = new List<string>();
        for (var i = 0; i < 3; i++)
        {
            ids.Add((await _broker.DeadLetterChargeAsync(Timeout, "timed out")).ToString());
        }

        await using var connection = await ConnectAsync();
        var visitor = new FailingInspectionVisitor(Visitor(MessageFilter.All), ids[1]);
        var progress = new WalkProgress();
        var left = await new QueueWalker(
                connection, new WalkPlan(ErrorQueueKit.ChargeErrors, long.MaxValue, new ErrorQueueOptions { IdleCheckMilliseconds = 500 }), visitor, progress)
            .RunAsync(CancellationToken.None);

        Assert.Equal((3L, 2L, 1L), (progress.Examined, visitor.Inner.Moved, left));
        Assert.Equal([ids[1]], await _broker.IdsAsync(ErrorQueueKit.ChargeErrors));
        Assert.Equal(1, progress.Unreadable);
        Assert.Equal($"message {ids[1]}: System.FormatException: header out of its format", progress.FirstUnreadable);
    }

    private Task<IConnection> ConnectAsync() => ErrorQueueBroker.ConnectAsync(
        fixture.RabbitOptions(),
        "tests-walker",
        CancellationToken.None);

    private static OperationVisitor Visitor(MessageFilter filter) => new(new OperationPlan(
        ErrorQueueOperationKinds.Move, ErrorQueueKit.ChargeErrors, filter, null, null, false, Guid.NewGuid(), 1000));

    private static QueueWalker Walker(IConnection connection, WalkVisitor visitor, int prefetch) =>
        new(connection, new WalkPlan(ErrorQueueKit.ChargeErrors, long.MaxValue, new ErrorQueueOptions { Prefetch = prefetch, IdleCheckMilliseconds = 500 }), visitor, new WalkProgress());

    /// <summary>Decides as the move does, but reading the message with id <c>failOn</c> throws.</summary>
    private sealed class FailingInspectionVisitor(OperationVisitor inner, string failOn) : WalkVisitor
    {
        public OperationVisitor Inner => inner;

        public override bool Publishes => inner.Publishes;

        public override object? Inspect(FaultedMessage message, IReadOnlyBasicProperties properties, ReadOnlyMemory<byte> body) =>
            message.MessageId == failOn ? throw new FormatException("header out of its format") : inner.Inspect(message, properties, body);

        public override (WalkAction Action, ForwardCopy? Copy) Decide(FaultedMessage message, object? inspection) => inner.Decide(message, inspection);

        public override void Completed(FaultedMessage message, WalkOutcome outcome, string? target, string? failure) =>
            inner.Completed(message, outcome, target, failure);
    }

    /// <summary>Decides as the move does, and drops the connection when deciding message number <c>cutAt</c>.</summary>
    private sealed class CuttingVisitor(OperationVisitor inner, int cutAt, Func<Task> cut) : WalkVisitor
    {
        private int _decided;

        public bool Cut { get; private set; }

        public OperationVisitor Inner => inner;

        public override bool Publishes => inner.Publishes;

        public override object? Inspect(FaultedMessage message, IReadOnlyBasicProperties properties, ReadOnlyMemory<byte> body) =>
            inner.Inspect(message, properties, body);

        public override (WalkAction Action, ForwardCopy? Copy) Decide(FaultedMessage message, object? inspection)
        {
            if (++_decided == cutAt)
            {
                Cut = true;
                _ = Task.Run(cut);
            }

            return inner.Decide(message, inspection);
        }

        public override void Completed(FaultedMessage message, WalkOutcome outcome, string? target, string? failure) =>
            inner.Completed(message, outcome, target, failure);
    }

    /// <summary>Decides as the operation does, and cancels it (at once, on the walk's loop) when deciding message number <c>cancelAt</c>.</summary>
    private sealed class CancellingVisitor(OperationVisitor inner, int cancelAt, CancellationTokenSource cancel) : WalkVisitor
    {
        private int _decided;

        public OperationVisitor Inner => inner;

        public override bool Publishes => inner.Publishes;

        public override object? Inspect(FaultedMessage message, IReadOnlyBasicProperties properties, ReadOnlyMemory<byte> body) =>
            inner.Inspect(message, properties, body);

        public override (WalkAction Action, ForwardCopy? Copy) Decide(FaultedMessage message, object? inspection)
        {
            if (++_decided == cancelAt)
            {
                cancel.Cancel();
            }

            return inner.Decide(message, inspection);
        }

        public override void Completed(FaultedMessage message, WalkOutcome outcome, string? target, string? failure) =>
            inner.Completed(message, outcome, target, failure);
    }
}
