using System.Collections.Concurrent;
using System.Data.Common;
using System.Diagnostics.Metrics;
using System.Globalization;
using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using Conveyor.Contracts;
using Conveyor.ServiceDefaults;
using Conveyor.Storage;
using Conveyor.Storage.Jobs;
using Conveyor.Storage.Redelivery;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Redelivery;
using Microsoft.EntityFrameworkCore;
using Microsoft.EntityFrameworkCore.Diagnostics;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using Npgsql;
using RabbitMQ.Client;

namespace Conveyor.Tests.Worker;

/// <summary>
/// The redelivery dispatcher built on its own against the real database and broker, on a clock the
/// test controls, so what it takes for "now" does not depend on how fast the machine is.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class RedeliveryDispatcherTests(ConveyorFixture fixture) : IAsyncLifetime
{
    /// <summary>Where the tests' scheduled messages go: a queue of their own, removed afterwards.</summary>
    private readonly string _queue = $"dispatcher-test-{Guid.NewGuid():N}";
    private IConnection _connection = null!;
    private IChannel _channel = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        _connection = await fixture.AmqpFactory().CreateConnectionAsync();
        _channel = await _connection.CreateChannelAsync();
        await _channel.QueueDeclareAsync(_queue, durable: true, exclusive: false, autoDelete: false);
    }

    public async Task DisposeAsync()
    {
        await _channel.QueueDeleteAsync(_queue);
        await _channel.DisposeAsync();
        await _connection.DisposeAsync();
    }

    [Fact]
    public void A_wait_of_less_than_a_millisecond_is_not_taken_for_no_timeout()
    {
        // Npgsql reads a timeout that truncates to zero milliseconds as "wait for a NOTIFY, however long".
        Assert.Equal(TimeSpan.FromMilliseconds(1), RedeliveryDispatcher.ListenTimeout(TimeSpan.FromMilliseconds(0.4)));
        Assert.Equal(TimeSpan.FromMilliseconds(3), RedeliveryDispatcher.ListenTimeout(TimeSpan.FromMilliseconds(2.01)));
    }

    [Fact]
    public async Task A_dispatcher_whose_clock_runs_behind_publishes_what_is_due_by_the_databases_clock()
    {
        var messageId = await ScheduleAsync(await DatabaseNowAsync() - TimeSpan.FromSeconds(1));
        await using var publisher = Publisher();
        using var dispatcher = Dispatcher(publisher, clock: new SkewedClock(TimeSpan.FromMinutes(-10)));

        Assert.Equal(1, await dispatcher.DispatchDueAsync(CancellationToken.None));

        var copy = await _channel.BasicGetAsync(_queue, autoAck: true);
        Assert.Equal(messageId, copy?.BasicProperties.MessageId);
        await using var db = fixture.CreateDbContext();
        Assert.Equal(0, await db.ScheduledMessages.CountAsync());
    }

    [Fact]
    public async Task A_dispatcher_whose_clock_runs_ahead_leaves_what_is_not_due_by_the_databases_clock()
    {
        var messageId = await ScheduleAsync(await DatabaseNowAsync() + TimeSpan.FromMinutes(5));
        await using var publisher = Publisher();
        using var dispatcher = Dispatcher(publisher, clock: new SkewedClock(TimeSpan.FromMinutes(10)));

        Assert.Equal(0, await dispatcher.DispatchDueAsync(CancellationToken.None));

        Assert.Null(await _channel.BasicGetAsync(_queue, autoAck: true));
        await using var db = fixture.CreateDbContext();
        Assert.Equal(messageId, (await db.ScheduledMessages.SingleAsync()).MessageId);
    }

    [Fact]
    public async Task The_backlog_reads_how_late_scheduled_messages_are_by_the_databases_clock()
    {
        using var services = new ServiceCollection().AddMetrics().BuildServiceProvider();
        ScheduledBacklog Backlog(TimeSpan skew) => new(services.GetRequiredService<System.Diagnostics.Metrics.IMeterFactory>(), fixture.DbContextFactory(),
            Options.Create(new DispatcherOptions()), new SkewedClock(skew), NullLogger<ScheduledBacklog>.Instance);

        // Due in a minute: not overdue, though a pod ten minutes ahead would count it nine minutes late.
        await ScheduleAsync(await DatabaseNowAsync() + TimeSpan.FromMinutes(1));
        var ahead = await Backlog(TimeSpan.FromMinutes(10)).CheckHealthAsync(new HealthCheckContext());
        Assert.Equal((HealthStatus.Healthy, "No scheduled message is overdue"), (ahead.Status, ahead.Description));

        // Due five minutes ago: overdue past the two-minute limit, though a pod ten minutes behind would not see it due yet.
        await ScheduleAsync(await DatabaseNowAsync() - TimeSpan.FromMinutes(5));
        var behind = await Backlog(TimeSpan.FromMinutes(-10)).CheckHealthAsync(new HealthCheckContext());
        Assert.Equal(HealthStatus.Degraded, behind.Status);
        Assert.StartsWith("Scheduled messages are overdue: the oldest was due 30", behind.Description, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_row_stored_while_the_dispatcher_sleeps_is_published_when_due_after_its_notify()
    {
        // The safety-net wake-up is 300 s away, beyond what the test waits: once the dispatcher has
        // read the table and gone to sleep, only the row's NOTIFY can tell it when the row is due.
        await using var publisher = Publisher();
        using var dispatcher = Dispatcher(publisher, new DispatcherOptions { MaxIdleSeconds = 300 });
        var started = DateTimeOffset.UtcNow;
        await dispatcher.StartAsync(CancellationToken.None);
        try
        {
            await Eventually.AssertAsync(async () => Assert.True(await DispatcherHasReadItsNextWakeUpAsync(started)));
            var dueAt = DateTimeOffset.UtcNow.AddSeconds(1);
            var messageId = await ScheduleAsync(dueAt);
            await NotifyAsync(dueAt.ToUnixTimeMilliseconds().ToString(CultureInfo.InvariantCulture));

            await AssertPublishedNextAsync(messageId);
        }
        finally
        {
            await dispatcher.StopAsync(CancellationToken.None);
        }
    }

    /// <summary>
    /// Every stored redelivery and scheduled job sends a NOTIFY; each woke every dispatcher for a whole round (the claim,
    /// the next due time), whether or not its row was due before the one the dispatcher already sleeps for. During a
    /// downstream outage that stores redeliveries by the hundred a second, each due half a minute on, every worker then
    /// queried the database for each of them, to find nothing due. The payload says when the row is due: only one due
    /// before the dispatcher's next wake-up wakes it.
    /// </summary>
    [Fact]
    public async Task Notifies_of_rows_due_after_the_next_wake_up_do_not_wake_the_dispatcher_and_an_earlier_one_does()
    {
        await ScheduleAsync(await DatabaseNowAsync() + TimeSpan.FromMinutes(2));
        var commands = new CommandCounter();
        await using var publisher = Publisher();
        using var dispatcher = Dispatcher(publisher, new DispatcherOptions { MaxIdleSeconds = 300 }, database: commands.Factory(fixture));
        var started = DateTimeOffset.UtcNow;
        await dispatcher.StartAsync(CancellationToken.None);
        try
        {
            // Asleep until the row it holds is due, two minutes on.
            await Eventually.AssertAsync(async () => Assert.True(await DispatcherHasReadItsNextWakeUpAsync(started)));
            await Task.Delay(TimeSpan.FromMilliseconds(200));
            var before = commands.Count;
            var later = (await DatabaseNowAsync() + TimeSpan.FromMinutes(5)).ToUnixTimeMilliseconds().ToString(CultureInfo.InvariantCulture);
            for (var i = 0; i < 50; i++)
            {
                await NotifyAsync(later);
            }

            await Task.Delay(TimeSpan.FromSeconds(2));
            var woken = commands.Count - before;
            Assert.True(woken <= 2, $"{woken} database commands for 50 NOTIFYs of rows due after the dispatcher's next wake-up");

            // A row due before it still wakes it, and goes out when due.
            var dueAt = await DatabaseNowAsync() + TimeSpan.FromSeconds(1);
            var soon = await ScheduleAsync(dueAt);
            await NotifyAsync(dueAt.ToUnixTimeMilliseconds().ToString(CultureInfo.InvariantCulture));
            await AssertPublishedNextAsync(soon);
        }
        finally
        {
            await dispatcher.StopAsync(CancellationToken.None);
        }
    }

    [Fact]
    public async Task Due_rows_another_dispatcher_holds_are_not_asked_for_in_a_loop_and_are_published_once_let_go()
    {
        var ids = new[] { await ScheduleAsync(DateTimeOffset.UtcNow.AddSeconds(-5)), await ScheduleAsync(DateTimeOffset.UtcNow.AddSeconds(-5)) };
        // Another dispatcher's claim: the due rows locked in an open transaction (its publishes wait out
        // a broker alarm, say), on a connection of its own.
        var unpooled = new NpgsqlConnectionStringBuilder(fixture.ConnectionString) { Pooling = false };
        await using var holder = new NpgsqlConnection(unpooled.ConnectionString);
        await holder.OpenAsync();
        await using var claim = await holder.BeginTransactionAsync();
        await using (var lockRows = new NpgsqlCommand("SELECT id FROM scheduled_messages FOR UPDATE", holder, claim))
        {
            await lockRows.ExecuteNonQueryAsync();
        }

        var commands = new CommandCounter();
        await using var publisher = Publisher();
        using var dispatcher = Dispatcher(publisher, database: commands.Factory(fixture));
        await dispatcher.StartAsync(CancellationToken.None);
        try
        {
            // Running, and it has found the rows it cannot claim at least twice.
            await Eventually.AssertAsync(() => Assert.True(commands.Count >= 4, $"{commands.Count} commands"), TimeSpan.FromSeconds(30));
            var before = commands.Count;
            await Task.Delay(TimeSpan.FromSeconds(2));
            var during = commands.Count - before;

            // A few rounds a second at most (two commands each), not one after the other.
            Assert.True(during <= 40, $"{during} database commands in 2 s while the due rows were held elsewhere");
            await using (var db = fixture.CreateDbContext())
            {
                Assert.Equal(2, await db.ScheduledMessages.CountAsync());
            }

            await claim.RollbackAsync();
            await Eventually.AssertAsync(async () =>
            {
                await using var db = fixture.CreateDbContext();
                Assert.Equal(0, await db.ScheduledMessages.CountAsync());
            }, TimeSpan.FromSeconds(30));
        }
        finally
        {
            await dispatcher.StopAsync(CancellationToken.None);
        }

        var published = new List<string>();
        while (await _channel.BasicGetAsync(_queue, autoAck: true) is { } copy)
        {
            published.Add(copy.BasicProperties.MessageId!);
        }

        Assert.Equal(ids.Order(), published.Order());
    }

    [Fact]
    public async Task A_dispatcher_that_cannot_listen_publishes_due_rows_on_its_idle_poll_and_listens_once_it_can()
    {
        // The LISTEN session's database does not exist; the store's own is fine. Nothing sends a NOTIFY.
        var first = await ScheduleAsync(DateTimeOffset.UtcNow.AddSeconds(-1));
        await using var publisher = Publisher();
        using var dispatcher = Dispatcher(publisher, new DispatcherOptions { MaxIdleSeconds = 1 });
        dispatcher.ListenConnectionString = new NpgsqlConnectionStringBuilder(fixture.ConnectionString) { Database = $"no_such_database_{Guid.NewGuid():N}" }.ConnectionString;
        await dispatcher.StartAsync(CancellationToken.None);
        try
        {
            await AssertPublishedNextAsync(first, TimeSpan.FromSeconds(30));

            // A row stored while it sleeps, with no NOTIFY it could hear, is found by its idle poll.
            var asleep = DateTimeOffset.UtcNow;
            await Eventually.AssertAsync(async () => Assert.True(await DispatcherHasReadItsNextWakeUpAsync(asleep)), TimeSpan.FromSeconds(30));
            var second = await ScheduleAsync(DateTimeOffset.UtcNow.AddSeconds(-1));
            await AssertPublishedNextAsync(second, TimeSpan.FromSeconds(30));

            // Once its database is there, a later round opens the session and LISTENs again.
            dispatcher.ListenConnectionString = null;
            await Eventually.AssertAsync(async () => Assert.True(await SomeSessionListensAsync()), TimeSpan.FromSeconds(30));
        }
        finally
        {
            await dispatcher.StopAsync(CancellationToken.None);
        }
    }

    [Fact]
    public async Task A_dispatcher_stopped_after_its_confirms_commits_them_and_no_row_goes_out_twice()
    {
        var errorQueue = _queue + BrokerPublisher.ErrorQueueSuffix;
        await _channel.QueueDeclareAsync(errorQueue, durable: true, exclusive: false, autoDelete: false);
        try
        {
            var due = DateTimeOffset.UtcNow.AddSeconds(-5);
            var published = new[] { await ScheduleAsync(due), await ScheduleAsync(due), await ScheduleAsync(due) };
            // Headers that are no map of strings: the row goes to _error and dead-letters its job.
            var job = await AddWaitingJobAsync();
            var unpublishable = await ScheduleAsync(due, """{"X-Count": 5}""", job);

            // The shutdown (SIGTERM) comes once every row is confirmed or moved, as the round starts writing
            // what it did: the dead-lettered job's status.
            RedeliveryDispatcher dispatcher = null!;
            Task? stopping = null;
            var stopper = new OnFirstCommand("UPDATE jobs SET status", () => stopping = dispatcher.StopAsync(CancellationToken.None));
            await using var publisher = Publisher();
            using (dispatcher = Dispatcher(publisher, database: stopper.Factory(fixture)))
            {
                await dispatcher.StartAsync(CancellationToken.None);
                try
                {
                    await Eventually.AssertAsync(() => Assert.NotNull(stopping), TimeSpan.FromSeconds(30));
                    await stopping!.WaitAsync(TimeSpan.FromSeconds(60));
                }
                finally
                {
                    await dispatcher.StopAsync(CancellationToken.None);
                }
            }

            await using (var db = fixture.CreateDbContext())
            {
                Assert.Equal(0, await db.ScheduledMessages.CountAsync());
                Assert.Equal(JobStatus.DeadLettered, (await db.Jobs.AsNoTracking().SingleAsync(j => j.Id == job.Id)).Status);
            }

            // Another pod's dispatcher finds nothing left to publish again.
            await using var otherPublisher = Publisher();
            using var other = Dispatcher(otherPublisher);
            Assert.Equal(0, await other.DispatchDueAsync(CancellationToken.None));

            Assert.Equal(published.Order(), (await TakeAllAsync(_queue)).Order());
            Assert.Equal([unpublishable], await TakeAllAsync(errorQueue));
        }
        finally
        {
            await _channel.QueueDeleteAsync(errorQueue);
        }
    }

    /// <summary>A job waiting for its redelivery, as the worker leaves it when it stores one.</summary>
    private async Task<Job> AddWaitingJobAsync()
    {
        var created = DateTimeOffset.UtcNow.AddMinutes(-5);
        var job = new Job
        {
            Id = Guid.CreateVersion7(),
            Kind = JobKinds.ChargePayment,
            BusinessKey = Guid.NewGuid().ToString(),
            Status = JobStatus.RetryScheduled,
            Attempts = 1,
            LastError = "HttpRequestException: 503",
            CreatedAt = created,
            UpdatedAt = created,
            NextAttemptAt = created.AddMinutes(1),
        };
        await using var db = fixture.CreateDbContext();
        db.Jobs.Add(job);
        await db.SaveChangesAsync();
        return job;
    }

    /// <summary>Waits for the next message in the queue (within <paramref name="timeout"/>, if given) and asserts it is <paramref name="messageId"/>'s.</summary>
    private async Task AssertPublishedNextAsync(string messageId, TimeSpan? timeout = null)
    {
        BasicGetResult? copy = null;
        await Eventually.AssertAsync(async () => Assert.NotNull(copy = await _channel.BasicGetAsync(_queue, autoAck: true)), timeout);
        Assert.Equal(messageId, copy!.BasicProperties.MessageId);
    }

    /// <summary>The message ids <paramref name="queue"/> holds, taken from it.</summary>
    private async Task<List<string>> TakeAllAsync(string queue)
    {
        var taken = new List<string>();
        while (await _channel.BasicGetAsync(queue, autoAck: true) is { } message)
        {
            taken.Add(message.BasicProperties.MessageId!);
        }

        return taken;
    }

    /// <summary>Whether a session of this run's database has LISTENed (asked on a connection of its own, as below).</summary>
    private async Task<bool> SomeSessionListensAsync()
    {
        var unpooled = new NpgsqlConnectionStringBuilder(fixture.ConnectionString) { Pooling = false };
        await using var connection = new NpgsqlConnection(unpooled.ConnectionString);
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand("""
            SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                            WHERE datname = current_database() AND query ILIKE 'LISTEN %')
            """, connection);
        return (bool)(await command.ExecuteScalarAsync())!;
    }

    /// <summary>
    /// A session of this run's database is idle after a query for the next due time made since
    /// <paramref name="since"/>. Asked on a connection of its own, outside the pool the dispatcher
    /// shares: a pooled check could reuse the very session the dispatcher just returned, and its own
    /// query would then replace the one it is looking for.
    /// </summary>
    private async Task<bool> DispatcherHasReadItsNextWakeUpAsync(DateTimeOffset since)
    {
        var unpooled = new NpgsqlConnectionStringBuilder(fixture.ConnectionString) { Pooling = false };
        await using var connection = new NpgsqlConnection(unpooled.ConnectionString);
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand("""
            SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                            WHERE datname = current_database() AND state = 'idle' AND query_start >= $1
                              AND query ILIKE '%min(%scheduled_messages%')
            """, connection);
        command.Parameters.Add(new NpgsqlParameter { Value = since });
        return (bool)(await command.ExecuteScalarAsync())!;
    }

    private async Task NotifyAsync(string payload)
    {
        await using var db = fixture.CreateDbContext();
        await db.Database.ExecuteSqlInterpolatedAsync($"SELECT pg_notify({RedeliveryStore.Channel}, {payload})");
    }

    [Fact]
    public async Task An_overdue_scheduled_message_marks_the_worker_degraded_until_a_dispatcher_publishes_it()
    {
        var settings = WorkerSettings.With();
        settings["Redelivery:DispatcherEnabled"] = "false";
        settings["Redelivery:BacklogRefreshSeconds"] = "1";
        await using var stalled = await fixture.StartWorkerAsync(settings);

        var (status, entry) = await ReadinessAsync(stalled);
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal("Healthy", entry.GetProperty("status").GetString());

        // A row due later is not a problem; one due ten minutes ago is.
        await ScheduleAsync(DateTimeOffset.UtcNow.AddHours(1));
        Assert.Equal("Healthy", (await ReadinessAsync(stalled)).Entry.GetProperty("status").GetString());
        var overdueId = await ScheduleAsync(DateTimeOffset.UtcNow.AddMinutes(-10));
        (status, entry) = await ReadinessAsync(stalled);
        Assert.Equal(HttpStatusCode.OK, status); // Degraded: the worker stays in service
        Assert.Equal("Degraded", entry.GetProperty("status").GetString());
        Assert.Contains("overdue", entry.GetProperty("description").GetString(), StringComparison.Ordinal);
        await Eventually.AssertAsync(() => Assert.InRange(HostMeters.OverdueGauge(stalled.Services.GetRequiredService<IMeterFactory>()), 9 * 60, 60 * 60));

        await using var dispatching = await fixture.StartWorkerAsync(WorkerSettings.With());
        await Eventually.AssertAsync(async () =>
            Assert.Equal("Healthy", (await ReadinessAsync(stalled)).Entry.GetProperty("status").GetString()));
        await Eventually.AssertAsync(() => Assert.Equal(0, HostMeters.OverdueGauge(stalled.Services.GetRequiredService<IMeterFactory>())));
        var copy = await _channel.BasicGetAsync(_queue, autoAck: true);
        Assert.NotNull(copy);
        Assert.Equal(overdueId, copy.BasicProperties.MessageId);
        await using (var db = fixture.CreateDbContext())
        {
            Assert.Equal(1, await db.ScheduledMessages.CountAsync()); // the one due later
        }
    }

    [Fact]
    public async Task A_batch_whose_confirms_never_come_is_released_after_the_publish_timeout_for_another_dispatcher()
    {
        var rabbit = fixture.RabbitOptions();
        await using var proxy = await OutageProxy.ToAsync(rabbit.Host, rabbit.Port);
        var viaProxy = fixture.RabbitOptions();
        viaProxy.Port = proxy.Port;
        await using var stalledPublisher = Publisher(viaProxy);
        // The test's rows come with no NOTIFY, nor does a claim rolled back: both dispatchers poll every second
        // (their default 10 s made the test wait 10-20 s for wake-ups).
        using var stalled = Dispatcher(stalledPublisher, new DispatcherOptions { PublishTimeoutSeconds = 2, MaxIdleSeconds = 1 });
        await stalled.StartAsync(CancellationToken.None);
        await using var healthyPublisher = Publisher();
        using var healthy = Dispatcher(healthyPublisher, new DispatcherOptions { MaxIdleSeconds = 1 });
        try
        {
            // The first dispatcher's connection works, then its broker stops answering (as in an alarm).
            await ScheduleAsync(DateTimeOffset.UtcNow.AddSeconds(-1));
            await Eventually.AssertAsync(async () => Assert.Equal(1u, await _channel.MessageCountAsync(_queue)), TimeSpan.FromSeconds(30));
            proxy.Stall();
            var held = await ScheduleAsync(DateTimeOffset.UtcNow.AddSeconds(-1));
            await Eventually.AssertAsync(async () => Assert.True(await IsLockedAsync(), "the stalled dispatcher has not claimed the row"), TimeSpan.FromSeconds(30));

            // Another dispatcher cannot take the row while it is held; once the publish timeout has
            // rolled the claim back, it does.
            await healthy.StartAsync(CancellationToken.None);
            await Eventually.AssertAsync(async () =>
            {
                await using var db = fixture.CreateDbContext();
                Assert.Equal(0, await db.ScheduledMessages.CountAsync());
            }, TimeSpan.FromSeconds(30));
            await _channel.BasicGetAsync(_queue, autoAck: true);
            var copy = await _channel.BasicGetAsync(_queue, autoAck: true);
            Assert.Equal(held, copy?.BasicProperties.MessageId);
        }
        finally
        {
            proxy.Resume();
            await healthy.StopAsync(CancellationToken.None);
            await stalled.StopAsync(CancellationToken.None);
        }
    }

    [Fact]
    public async Task A_batch_claimed_by_a_dispatcher_that_vanished_mid_batch_is_released_for_another_dispatcher()
    {
        // The first dispatcher reaches its database through a relay that goes silent once its publishes are
        // confirmed, as its node's network does when the node dies: no byte and no FIN reaches the server,
        // which holds the session, idle in its transaction, until TCP keepalive gives up (over two hours by
        // default). No command timeout on its side either: a dead client never gives up its connection.
        var database = new NpgsqlConnectionStringBuilder(fixture.ConnectionString);
        await using var proxy = await OutageProxy.ToAsync(database.Host!, database.Port);
        var viaProxy = new NpgsqlConnectionStringBuilder(fixture.ConnectionString) { Port = proxy.Port, CommandTimeout = 0 };
        var ids = new[] { await ScheduleAsync(DateTimeOffset.UtcNow.AddSeconds(-1)), await ScheduleAsync(DateTimeOffset.UtcNow.AddSeconds(-1)) };
        var silence = new OnFirstCommand("DELETE FROM scheduled_messages", proxy.Stall);
        // The server ends the silent session once it has been idle in its claim for the claim's limit: cut to
        // 5 s here (from 4 x PublishTimeoutSeconds + 30 s, 34 s with this publish timeout) so the test need not
        // wait it out. What the claim asks for is checked: 34 s.
        var shortClaims = new ClaimIdleLimitOf(TimeSpan.FromSeconds(5));
        var contexts = new InterceptedContexts(viaProxy.ConnectionString, silence, shortClaims);
        await using var vanishedPublisher = Publisher();
        using var vanished = Dispatcher(vanishedPublisher, new DispatcherOptions { PublishTimeoutSeconds = 1 }, database: contexts);
        await vanished.StartAsync(CancellationToken.None);
        await using var healthyPublisher = Publisher();
        using var healthy = Dispatcher(healthyPublisher);
        try
        {
            await Eventually.AssertAsync(async () => Assert.True(await IsLockedAsync(), "the first dispatcher has not claimed the rows"), TimeSpan.FromSeconds(30));
            await Eventually.AssertAsync(async () => Assert.Equal(2u, await _channel.MessageCountAsync(_queue)), TimeSpan.FromSeconds(30));
            Assert.Equal("34000", shortClaims.Asked);

            // The rows it claimed go out again through another dispatcher (the inbox absorbs the copies),
            // instead of waiting for the server to notice that their claimant is gone.
            await healthy.StartAsync(CancellationToken.None);
            await Eventually.AssertAsync(async () =>
            {
                await using var db = fixture.CreateDbContext();
                Assert.Equal(0, await db.ScheduledMessages.CountAsync());
            }, TimeSpan.FromSeconds(90));
            var published = new List<string>();
            while (await _channel.BasicGetAsync(_queue, autoAck: true) is { } copy)
            {
                published.Add(copy.BasicProperties.MessageId!);
            }

            Assert.Equal(ids.Concat(ids).Order(), published.Order());
        }
        finally
        {
            proxy.Cut();
            await healthy.StopAsync(CancellationToken.None);
            await vanished.StopAsync(CancellationToken.None);
        }
    }

    [Fact]
    public async Task A_batch_loads_and_publishes_only_the_due_rows_its_byte_budget_holds_and_a_larger_row_alone()
    {
        // Bodies of 400 KiB under a 1 MiB budget (bound from configuration, as the worker binds it), with
        // room for far more rows in BatchSize: two rows a batch. One of 1.5 MiB, over the budget on its own,
        // goes out alone, and the next batch starts after it.
        var options = new DispatcherOptions();
        new ConfigurationBuilder()
            .AddInMemoryCollection(new Dictionary<string, string?> { ["MaxBatchBytes"] = "1048576" })
            .Build()
            .Bind(options);
        var start = await DatabaseNowAsync() - TimeSpan.FromMinutes(1);
        var kib = new[] { 400, 400, 400, 1536, 400, 400 };
        var messageIds = new List<string>();
        for (var i = 0; i < kib.Length; i++)
        {
            messageIds.Add(await ScheduleAsync(start.AddSeconds(i), body: new byte[kib[i] * 1024]));
        }

        List<long> rows;
        await using (var db = fixture.CreateDbContext())
        {
            rows = await db.ScheduledMessages.OrderBy(m => m.DueAt).Select(m => m.Id).ToListAsync();
        }

        var deletes = new DeletedBatches();
        await using var publisher = Publisher();
        using var dispatcher = Dispatcher(publisher, options, database: deletes.Factory(fixture));

        Assert.Equal(kib.Length, await dispatcher.DispatchDueAsync(CancellationToken.None));

        // What each batch published and deleted, in due order; every row once.
        Assert.Equal<long[]>([[rows[0], rows[1]], [rows[2]], [rows[3]], [rows[4], rows[5]]], deletes.Batches);
        Assert.Equal(messageIds, await TakeAllAsync(_queue));
        await using (var db = fixture.CreateDbContext())
        {
            Assert.Equal(0, await db.ScheduledMessages.CountAsync());
        }
    }

    [Fact]
    public async Task Rows_moved_to_error_one_by_one_for_longer_than_the_claims_idle_limit_are_moved_once()
    {
        // Fifteen rows that can never be published, so each is moved to _error on its own, through a broker
        // that confirms every publish, but slowly: the moves together take longer than the claim may stay
        // idle in its transaction, while each one alone takes far less. The limit is cut to 3 s (from
        // 4 x PublishTimeoutSeconds + 30 s) so that the test need not wait minutes; in production, 200 rows
        // each confirmed in a second outlast the 150 s the same way.
        var errorQueue = _queue + BrokerPublisher.ErrorQueueSuffix;
        await _channel.QueueDeclareAsync(errorQueue, durable: true, exclusive: false, autoDelete: false);
        var rabbit = fixture.RabbitOptions();
        await using var proxy = await OutageProxy.ToAsync(rabbit.Host, rabbit.Port);
        var viaProxy = fixture.RabbitOptions();
        viaProxy.Port = proxy.Port;
        var shortClaims = new ClaimIdleLimitOf(TimeSpan.FromSeconds(3));
        await using var slowPublisher = Publisher(viaProxy);
        using var slow = Dispatcher(slowPublisher, database: shortClaims.Factory(fixture));
        try
        {
            // Its broker connection is open before the broker slows down.
            var warmUp = await ScheduleAsync(DateTimeOffset.UtcNow.AddSeconds(-1));
            Assert.Equal(1, await slow.DispatchDueAsync(CancellationToken.None));
            Assert.Equal([warmUp], await TakeAllAsync(_queue));

            var due = DateTimeOffset.UtcNow.AddSeconds(-5);
            var unpublishable = new List<string>();
            for (var i = 0; i < 15; i++)
            {
                // Headers that are no map of strings: the row goes to _error.
                unpublishable.Add(await ScheduleAsync(due, """{"X-Count": 5}"""));
            }

            proxy.Latency = TimeSpan.FromMilliseconds(200);
            var failed = await Record.ExceptionAsync(() => slow.DispatchDueAsync(CancellationToken.None));
            proxy.Latency = TimeSpan.Zero;

            // Another pod's dispatcher then finds nothing left to move again.
            await using var otherPublisher = Publisher();
            using var other = Dispatcher(otherPublisher);
            await other.DispatchDueAsync(CancellationToken.None);

            Assert.Equal(unpublishable.Order(), (await TakeAllAsync(errorQueue)).Order());
            Assert.Null(failed);
            await using var db = fixture.CreateDbContext();
            Assert.Equal(0, await db.ScheduledMessages.CountAsync());
        }
        finally
        {
            await _channel.QueueDeleteAsync(errorQueue);
        }
    }

    [Fact]
    public async Task Rows_claimed_past_the_byte_budget_are_free_for_another_dispatcher_while_the_batch_publishes()
    {
        // The first dispatcher's budget (the least allowed, 64 KiB) holds one row of 40 KiB; three are due.
        // Its broker stops answering once its batch is loaded, so its publish waits (as in an alarm).
        var rabbit = fixture.RabbitOptions();
        await using var proxy = await OutageProxy.ToAsync(rabbit.Host, rabbit.Port);
        var viaProxy = fixture.RabbitOptions();
        viaProxy.Port = proxy.Port;
        var loaded = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var stall = new OnBatchLoaded(() =>
        {
            proxy.Stall();
            loaded.TrySetResult();
        });
        await using var stalledPublisher = Publisher(viaProxy);
        using var stalled = Dispatcher(
            stalledPublisher, new DispatcherOptions { MaxBatchBytes = 65_536, PublishTimeoutSeconds = 120 }, database: stall.Factory(fixture));
        await using var healthyPublisher = Publisher();
        using var healthy = Dispatcher(healthyPublisher);
        Task<int>? first = null;
        try
        {
            var warmUp = await ScheduleAsync(DateTimeOffset.UtcNow.AddSeconds(-1));
            Assert.Equal(1, await stalled.DispatchDueAsync(CancellationToken.None));
            Assert.Equal([warmUp], await TakeAllAsync(_queue));
            stall.Arm();

            var start = await DatabaseNowAsync() - TimeSpan.FromMinutes(1);
            var ids = new List<string>();
            for (var i = 0; i < 3; i++)
            {
                ids.Add(await ScheduleAsync(start.AddSeconds(i), body: new byte[40 * 1024]));
            }

            first = stalled.DispatchDueAsync(CancellationToken.None);
            await loaded.Task.WaitAsync(TimeSpan.FromSeconds(60));

            // The rows the first dispatcher claimed but will not publish in this batch go out through
            // another dispatcher now, not after the first one's batch.
            Assert.Equal(2, await healthy.DispatchDueAsync(CancellationToken.None));
            Assert.Equal(ids[1..], await TakeAllAsync(_queue));

            proxy.Resume();
            Assert.Equal(1, await first.WaitAsync(TimeSpan.FromSeconds(120)));
            Assert.Equal([ids[0]], await TakeAllAsync(_queue));
            await using var db = fixture.CreateDbContext();
            Assert.Equal(0, await db.ScheduledMessages.CountAsync());
        }
        finally
        {
            proxy.Resume();
            if (first is not null)
            {
                await Record.ExceptionAsync(() => first);
            }
        }
    }

    [Fact]
    public async Task A_plain_batch_costs_five_database_round_trips()
    {
        // Counted on the wire, through a relay in front of the database: EF's and Npgsql's own events miss
        // what the driver sends of its own (BEGIN, COMMIT) and cannot tell statements sent together from
        // statements sent one by one. A plain batch: one due row, published at once, nothing past the budget.
        var database = new NpgsqlConnectionStringBuilder(fixture.ConnectionString);
        await using var proxy = await OutageProxy.ToAsync(database.Host!, database.Port);
        var viaProxy = new NpgsqlConnectionStringBuilder(fixture.ConnectionString) { Port = proxy.Port };
        await using var publisher = Publisher();
        using var dispatcher = Dispatcher(publisher, database: new InterceptedContexts(viaProxy.ConnectionString, new CommandCounter()));

        // Its pooled connection is open (the handshake and the type loading are behind it), its statements known.
        for (var i = 0; i < 3; i++)
        {
            await ScheduleAsync(DateTimeOffset.UtcNow.AddSeconds(-1));
            Assert.Equal(1, await dispatcher.DispatchDueAsync(CancellationToken.None));
        }

        var messageId = await ScheduleAsync(DateTimeOffset.UtcNow.AddSeconds(-1));
        var before = proxy.RoundTrips;
        Assert.Equal(1, await dispatcher.DispatchDueAsync(CancellationToken.None));
        var roundTrips = proxy.RoundTrips - before;

        // BEGIN with the claim's idle limit; the claim with its savepoint; the load; the DELETE; the COMMIT.
        Assert.Equal(5, roundTrips);
        Assert.Equal(messageId, (await TakeAllAsync(_queue))[^1]);
    }

    /// <summary>Whether another session holds a lock on a scheduled row (the dispatcher's claim).</summary>
    private async Task<bool> IsLockedAsync()
    {
        await using var db = fixture.CreateDbContext();
        await using var transaction = await db.Database.BeginTransactionAsync();
        var free = await db.ScheduledMessages.FromSqlRaw("SELECT * FROM scheduled_messages FOR UPDATE SKIP LOCKED").CountAsync();
        var all = await db.ScheduledMessages.CountAsync();
        return free < all;
    }

    /// <summary>A dispatcher's own broker connection, to the tests' vhost (or through <paramref name="rabbit"/>, a proxy).</summary>
    private BrokerPublisher Publisher(RabbitMqOptions? rabbit = null) => new(Options.Create(rabbit ?? fixture.RabbitOptions()));

    /// <summary>A dispatcher as a worker runs it, on the tests' database unless <paramref name="database"/> counts its commands.</summary>
    private RedeliveryDispatcher Dispatcher(
        BrokerPublisher publisher, DispatcherOptions? options = null, TimeProvider? clock = null, IDbContextFactory<ConveyorDbContext>? database = null) =>
        new(database ?? fixture.DbContextFactory(), publisher, Options.Create(options ?? new DispatcherOptions()), HostMeters.OwnJobMetrics(), clock ?? TimeProvider.System,
            NullLogger<RedeliveryDispatcher>.Instance);

    private async Task<DateTimeOffset> DatabaseNowAsync()
    {
        await using var db = fixture.CreateDbContext();
        return await db.Database.SqlQuery<DateTimeOffset>($"SELECT clock_timestamp() AS \"Value\"").SingleAsync();
    }

    private async Task<string> ScheduleAsync(DateTimeOffset dueAt, string headers = "{}", Job? job = null, byte[]? body = null)
    {
        var messageId = Guid.NewGuid().ToString();
        await using var db = fixture.CreateDbContext();
        db.ScheduledMessages.Add(new ScheduledMessage
        {
            DedupeKey = messageId,
            Destination = _queue,
            DueAt = dueAt,
            Attempt = 1,
            ContentType = "application/json",
            MessageId = messageId,
            Headers = headers,
            Body = body ?? Encoding.UTF8.GetBytes("{}"),
            CreatedAt = DateTimeOffset.UtcNow,
            JobId = job?.Id,
            JobAttempts = job?.Attempts,
        });
        await db.SaveChangesAsync();
        return messageId;
    }

    /// <summary>The worker's readiness status code and its <c>scheduled-messages</c> entry.</summary>
    private static async Task<(HttpStatusCode Status, JsonElement Entry)> ReadinessAsync(RunningApp worker)
    {
        using var response = await worker.Client.GetAsync(new Uri("/health/ready", UriKind.Relative));
        var report = await response.Content.ReadFromJsonAsync<JsonElement>();
        return (response.StatusCode, report.GetProperty("checks").GetProperty(ScheduledBacklog.HealthCheckName).Clone());
    }

    /// <summary>Counts the database commands of the contexts its <see cref="Factory"/> makes.</summary>
    private sealed class CommandCounter : DbCommandInterceptor
    {
        private int _count;

        public int Count => Volatile.Read(ref _count);

        public InterceptedContexts Factory(ConveyorFixture fixture) => new InterceptedContexts(fixture.ConnectionString, this);

        public override DbCommand CommandInitialized(CommandEndEventData eventData, DbCommand result)
        {
            Interlocked.Increment(ref _count);
            return result;
        }
    }

    /// <summary>
    /// The row ids each DELETE of the contexts its <see cref="Factory"/> makes removes: what each batch of
    /// a dispatcher published, batch by batch.
    /// </summary>
    private sealed class DeletedBatches : DbCommandInterceptor
    {
        private readonly ConcurrentQueue<long[]> _batches = new();

        public IReadOnlyList<long[]> Batches => [.. _batches];

        public InterceptedContexts Factory(ConveyorFixture fixture) => new InterceptedContexts(fixture.ConnectionString, this);

        public override ValueTask<InterceptionResult<DbDataReader>> ReaderExecutingAsync(
            DbCommand command, CommandEventData eventData, InterceptionResult<DbDataReader> result, CancellationToken cancellationToken = default)
        {
            if (command.CommandText.Contains("DELETE FROM scheduled_messages", StringComparison.Ordinal))
            {
                _batches.Enqueue(command.Parameters.Cast<DbParameter>().Select(p => p.Value).OfType<long[]>().Single());
            }

            return ValueTask.FromResult(result);
        }
    }

    /// <summary>
    /// Runs <paramref name="action"/> once, when the contexts its <see cref="Factory"/> makes first run a
    /// command whose text contains <paramref name="text"/>, just before that command executes.
    /// </summary>
    private sealed class OnFirstCommand(string text, Action action) : DbCommandInterceptor
    {
        private int _seen;

        public InterceptedContexts Factory(ConveyorFixture fixture) => new InterceptedContexts(fixture.ConnectionString, this);

        public override ValueTask<InterceptionResult<DbDataReader>> ReaderExecutingAsync(
            DbCommand command, CommandEventData eventData, InterceptionResult<DbDataReader> result, CancellationToken cancellationToken = default)
        {
            if (command.CommandText.Contains(text, StringComparison.Ordinal) && Interlocked.Exchange(ref _seen, 1) == 0)
            {
                action();
            }

            return ValueTask.FromResult(result);
        }
    }

    /// <summary>
    /// Sets the <c>idle_in_transaction_session_timeout</c> a claim of the contexts its <see cref="Factory"/>
    /// makes asks for to <paramref name="limit"/>: the server ends a session idle in its claim that long.
    /// </summary>
    private sealed class ClaimIdleLimitOf(TimeSpan limit) : DbCommandInterceptor
    {
        /// <summary>The limit the claim asked for, in milliseconds, before it was cut (null until a claim ran).</summary>
        public string? Asked { get; private set; }

        public InterceptedContexts Factory(ConveyorFixture fixture) => new InterceptedContexts(fixture.ConnectionString, this);

        public override ValueTask<InterceptionResult<int>> NonQueryExecutingAsync(
            DbCommand command, CommandEventData eventData, InterceptionResult<int> result, CancellationToken cancellationToken = default)
        {
            if (command.CommandText.Contains("idle_in_transaction_session_timeout", StringComparison.Ordinal))
            {
                Asked = command.Parameters[0].Value as string;
                command.Parameters[0].Value = limit.TotalMilliseconds.ToString(CultureInfo.InvariantCulture);
            }

            return ValueTask.FromResult(result);
        }
    }

    /// <summary>
    /// Once <see cref="Arm"/>ed, runs <paramref name="action"/> once, when the contexts its <see cref="Factory"/>
    /// makes have read the rows of a batch to publish (their bodies), before anything is published.
    /// </summary>
    private sealed class OnBatchLoaded(Action action) : DbCommandInterceptor
    {
        private int _armed;

        public InterceptedContexts Factory(ConveyorFixture fixture) => new InterceptedContexts(fixture.ConnectionString, this);

        public void Arm() => Volatile.Write(ref _armed, 1);

        public override InterceptionResult DataReaderDisposing(DbCommand command, DataReaderDisposingEventData eventData, InterceptionResult result)
        {
            if (command.CommandText.Contains(".body", StringComparison.Ordinal) && Interlocked.Exchange(ref _armed, 0) == 1)
            {
                action();
            }

            return result;
        }
    }

    /// <summary>Contexts on <paramref name="connectionString"/>, as the worker configures them, with <paramref name="interceptors"/> added.</summary>
    private sealed class InterceptedContexts(string connectionString, params IInterceptor[] interceptors) : IDbContextFactory<ConveyorDbContext>
    {
        public ConveyorDbContext CreateDbContext()
        {
            var options = new DbContextOptionsBuilder<ConveyorDbContext>();
            StorageServiceCollectionExtensions.Configure(options, connectionString);
            options.AddInterceptors(interceptors);
            return new ConveyorDbContext(options.Options);
        }
    }
}
