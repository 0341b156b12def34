using System.Data.Common;
using System.Net;
using System.Net.Http.Json;
using System.Text;
using Conveyor.Api.Jobs;
using Conveyor.Contracts;
using Conveyor.ServiceDefaults;
using Conveyor.Storage;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Conveyor.Tests.Observability;
using Microsoft.EntityFrameworkCore;
using Microsoft.EntityFrameworkCore.Diagnostics;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Npgsql;
using RabbitMQ.Client;

namespace Conveyor.Tests.Api;

/// <summary>
/// Jobs whose command was most likely never published (ADR 0006) are still <c>queued</c> past the
/// threshold while their queue holds no message. The Api publishes them again from their stored
/// request (ADR 0007) and counts those it cannot. A backlog is not stranded.
/// </summary>
[Collection(AloneCollection.Name)]
public sealed class StrandedJobsTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private RunningApp _api = null!;
    private IConnection _connection = null!;

    /// <summary>The tests' own channel to the broker, with publisher confirms.</summary>
    private IChannel _channel = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        _api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["Jobs:StrandedAfterSeconds"] = "60",
            // The test drives the checks itself.
            ["Jobs:StrandedCheckSeconds"] = "3600",
        });
        _connection = await fixture.AmqpFactory().CreateConnectionAsync();
        _channel = await _connection.CreateChannelAsync(new CreateChannelOptions(
            publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true));
    }

    public async Task DisposeAsync()
    {
        await _channel.DisposeAsync();
        await _connection.DisposeAsync();
        await _api.DisposeAsync();
    }

    [Fact]
    public async Task Old_queued_jobs_of_an_empty_queue_are_stranded_and_those_of_a_backlog_are_not()
    {
        var old = DateTimeOffset.UtcNow.AddMinutes(-5);
        await using (var db = fixture.CreateDbContext())
        {
            db.Jobs.AddRange(
                Job(JobKinds.ChargePayment, JobStatus.Queued, old),
                Job(JobKinds.ChargePayment, JobStatus.Queued, old),
                Job(JobKinds.ChargePayment, JobStatus.Queued, DateTimeOffset.UtcNow), // within its publish time
                Job(JobKinds.ChargePayment, JobStatus.Succeeded, old),
                Job(JobKinds.ChargePayment, JobStatus.Running, old),
                Job(JobKinds.DeliverWebhook, JobStatus.Queued, old)); // its queue holds a message: a backlog
            await db.SaveChangesAsync();
        }

        await HoldAMessageInAsync(JobKinds.DeliverWebhook);

        var monitor = _api.Services.GetRequiredService<StrandedJobsMonitor>();
        await Eventually.AssertAsync(async () =>
        {
            // The management API's statistics take a few seconds to show the new message.
            await monitor.RefreshAsync(CancellationToken.None);
            Assert.Equal(2, monitor.Stranded[JobKinds.ChargePayment]);
            Assert.Equal(0, monitor.Stranded[JobKinds.DeliverWebhook]);
            Assert.Equal(0, monitor.Stranded[JobKinds.GenerateReport]);
        });

        var metrics = await _api.Client.GetStringAsync(new Uri("/metrics", UriKind.Relative));
        Assert.Equal(2, PrometheusText.Sum(metrics, "conveyor_jobs_stranded", "kind=\"charge-payment\""));

        // Once its queue is empty, the webhook job is stranded too.
        await _channel.QueuePurgeAsync(JobKinds.DeliverWebhook);

        await Eventually.AssertAsync(async () =>
        {
            await monitor.RefreshAsync(CancellationToken.None);
            Assert.Equal(1, monitor.Stranded[JobKinds.DeliverWebhook]);
        });
    }

    [Fact]
    public async Task In_a_busy_queue_a_job_queued_a_threshold_before_a_later_finished_job_is_stranded()
    {
        await using var published = await ChargePaymentProbe.BindAsync(fixture);
        // The queue always holds a message, as a busy one does.
        await HoldAMessageInAsync(JobKinds.ChargePayment);
        await Eventually.AssertAsync(async () =>
            Assert.True((await fixture.Rabbit.QueueAsync(fixture.VirtualHost, JobKinds.ChargePayment))?.Messages > 0));

        var now = DateTimeOffset.UtcNow;
        var stranded = QueuedCharge(now.AddMinutes(-30));
        var inOrder = QueuedCharge(now.AddMinutes(-10.5)); // within the threshold (60 s) of the finished one
        var finished = Job(JobKinds.ChargePayment, JobStatus.Succeeded, now.AddMinutes(-10));
        finished.RequestHash = "submitted through the Api";
        // Published directly: its row was written when a worker received it, not when it was published.
        var direct = Job(JobKinds.ChargePayment, JobStatus.Succeeded, now.AddMinutes(-1));
        await using (var db = fixture.CreateDbContext())
        {
            db.Jobs.AddRange(stranded, inOrder, finished, direct);
            await db.SaveChangesAsync();
        }

        var monitor = _api.Services.GetRequiredService<StrandedJobsMonitor>();
        await monitor.RefreshAsync(CancellationToken.None);

        var copy = await published.Channel.BasicGetAsync(published.Queue, autoAck: true);
        Assert.NotNull(copy);
        Assert.Equal(stranded.Id.ToString(), Encoding.UTF8.GetString((byte[])copy.BasicProperties.Headers![JobHeaders.JobId]!));
        Assert.Equal(0u, await published.Channel.MessageCountAsync(published.Queue));
        Assert.Equal(0, monitor.Stranded[JobKinds.ChargePayment]);
    }

    [Fact]
    public async Task A_stranded_job_is_published_again_from_its_stored_request_once_and_runs_once()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        // A worker declares the job queue and its binding, then stops: nothing consumes the command.
        await (await fixture.StartWorkerAsync(WorkerSettings.With(gateway))).DisposeAsync();

        var paymentId = Guid.NewGuid();
        var json = JobRequests.ChargePayment(paymentId);
        using var response = await _api.Client.PostJobAsync(JobKinds.ChargePayment, json);
        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        var jobId = (await response.Content.ReadFromJsonAsync<JobAccepted>())!.JobId;
        await using (var db = fixture.CreateDbContext())
        {
            var row = await db.Jobs.AsNoTracking().SingleAsync(j => j.Id == jobId);
            Assert.Equal(Encoding.UTF8.GetBytes(json), row.RequestBody);
        }

        // As if the Api had died between the row's commit and the publish: the command is gone and
        // the client does not repeat the request.
        Assert.Equal(1u, await _channel.QueuePurgeAsync(JobKinds.ChargePayment));
        await fixture.BackdateJobAsync(jobId, TimeSpan.FromMinutes(5));

        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway));
        var monitor = _api.Services.GetRequiredService<StrandedJobsMonitor>();
        await Eventually.AssertAsync(async () =>
        {
            // The management API's statistics take a few seconds to show the queue empty.
            await monitor.RefreshAsync(CancellationToken.None);
            await using var db = fixture.CreateDbContext();
            var job = await db.Jobs.AsNoTracking().SingleAsync(j => j.Id == jobId);
            Assert.Equal(JobStatus.Succeeded, job.Status);
            Assert.Null(job.RequestBody); // cleared by the worker when the command arrived
        });

        // Checks after it publish nothing more, and nothing is left stranded.
        await monitor.RefreshAsync(CancellationToken.None);
        Assert.Equal(0, monitor.Stranded[JobKinds.ChargePayment]);
        await Eventually.AssertAsync(async () => Assert.Equal(0u, await _channel.MessageCountAsync(JobKinds.ChargePayment)));
        Assert.Equal(1, gateway.RequestsFor(paymentId.ToString()));
        Assert.Equal(1, gateway.SuccessfulRequestsFor(paymentId.ToString()));
        var metrics = await _api.Client.GetStringAsync(new Uri("/metrics", UriKind.Relative));
        Assert.Equal(1, PrometheusText.Sum(metrics, "conveyor_jobs_republished_total", "kind=\"charge-payment\""));
    }

    [Fact]
    public async Task Only_stranded_jobs_with_a_valid_stored_request_are_published_again_and_the_rest_stay_counted()
    {
        await using var published = await ChargePaymentProbe.BindAsync(fixture);
        var old = DateTimeOffset.UtcNow.AddMinutes(-5);
        var valid = QueuedCharge(old);
        var withoutRequest = Job(JobKinds.ChargePayment, JobStatus.Queued, old);
        var refused = Job(JobKinds.ChargePayment, JobStatus.Queued, old);
        refused.RequestBody = Encoding.UTF8.GetBytes(JobRequests.ChargePayment(Guid.Parse(refused.BusinessKey), amountMinor: 0));
        var fresh = QueuedCharge(DateTimeOffset.UtcNow);
        await using (var db = fixture.CreateDbContext())
        {
            db.Jobs.AddRange(valid, withoutRequest, refused, fresh);
            await db.SaveChangesAsync();
        }

        var monitor = _api.Services.GetRequiredService<StrandedJobsMonitor>();
        await Eventually.AssertAsync(async () =>
        {
            // Another test's command may still show in the queue's statistics for a few seconds.
            await monitor.RefreshAsync(CancellationToken.None);
            Assert.Equal(2, monitor.Stranded[JobKinds.ChargePayment]);
        });

        var copy = await published.Channel.BasicGetAsync(published.Queue, autoAck: true);
        Assert.NotNull(copy);
        Assert.Equal(valid.Id.ToString(), Encoding.UTF8.GetString((byte[])copy.BasicProperties.Headers![JobHeaders.JobId]!));
        Assert.Contains(valid.BusinessKey, Encoding.UTF8.GetString(copy.Body.Span), StringComparison.Ordinal);
        Assert.Equal(0u, await published.Channel.MessageCountAsync(published.Queue));

        await using (var db = fixture.CreateDbContext())
        {
            var rows = await db.Jobs.AsNoTracking().ToDictionaryAsync(j => j.Id);
            Assert.True(rows[valid.Id].UpdatedAt > old.AddMinutes(4), "the published job counts as updated now");
            Assert.Equal(old, rows[refused.Id].UpdatedAt, TimeSpan.FromMilliseconds(1)); // handed back: still stranded
            Assert.Equal(old, rows[withoutRequest.Id].UpdatedAt, TimeSpan.FromMilliseconds(1));
        }

        // The next check publishes nothing: the published job is fresh, the others cannot be.
        await monitor.RefreshAsync(CancellationToken.None);
        Assert.Equal(2, monitor.Stranded[JobKinds.ChargePayment]);
        Assert.Equal(0u, await published.Channel.MessageCountAsync(published.Queue));
    }

    [Fact]
    public async Task Stored_requests_the_Api_refuses_do_not_keep_a_valid_stranded_job_waiting_behind_them()
    {
        await using var published = await ChargePaymentProbe.BindAsync(fixture);
        // More refused jobs than one check claims, all older than the valid one.
        var older = DateTimeOffset.UtcNow.AddMinutes(-10);
        var refused = Enumerable.Range(0, StrandedJobRepublisher.BatchSize + 1).Select(_ =>
        {
            var job = Job(JobKinds.ChargePayment, JobStatus.Queued, older);
            job.RequestBody = Encoding.UTF8.GetBytes(JobRequests.ChargePayment(Guid.Parse(job.BusinessKey), amountMinor: 0));
            return job;
        }).ToList();
        var valid = QueuedCharge(DateTimeOffset.UtcNow.AddMinutes(-5));
        await using (var db = fixture.CreateDbContext())
        {
            db.Jobs.AddRange(refused);
            db.Jobs.Add(valid);
            await db.SaveChangesAsync();
        }

        var monitor = _api.Services.GetRequiredService<StrandedJobsMonitor>();
        await Eventually.AssertAsync(async () =>
        {
            await monitor.RefreshAsync(CancellationToken.None);
            Assert.Equal(1u, await published.Channel.MessageCountAsync(published.Queue));
        }, TimeSpan.FromSeconds(30));

        var copy = await published.Channel.BasicGetAsync(published.Queue, autoAck: true);
        Assert.Equal(valid.Id.ToString(), Encoding.UTF8.GetString((byte[])copy!.BasicProperties.Headers![JobHeaders.JobId]!));
        await using var check = fixture.CreateDbContext();
        // The refused ones are still stranded, as they were: counted, for an operator.
        Assert.Equal(refused.Count, await check.Jobs.CountAsync(j => j.Status == JobStatus.Queued && j.UpdatedAt < older.AddSeconds(1)));
    }

    [Fact]
    public async Task A_queue_listed_without_message_counts_is_not_taken_for_empty()
    {
        // Statistics off, or the first moments after a broker restart: the queue is listed, its counts not.
        await using var management = await FakeRabbitManagement.StartAsync();
        management.Queues = [new() { ["name"] = JobKinds.ChargePayment, ["consumers"] = 1 }];
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["Jobs:StrandedAfterSeconds"] = "60",
            ["Jobs:StrandedCheckSeconds"] = "3600",
            ["RabbitMq:ManagementPort"] = management.Port.ToString(System.Globalization.CultureInfo.InvariantCulture),
        });
        await using var published = await ChargePaymentProbe.BindAsync(fixture);
        await using (var db = fixture.CreateDbContext())
        {
            db.Jobs.AddRange(QueuedCharge(DateTimeOffset.UtcNow.AddMinutes(-5)), QueuedCharge(DateTimeOffset.UtcNow.AddMinutes(-5)));
            await db.SaveChangesAsync();
        }

        var monitor = api.Services.GetRequiredService<StrandedJobsMonitor>();
        await monitor.RefreshAsync(CancellationToken.None);

        // Maybe a backlog: with no job finished after them, nothing tells, so nothing is published again.
        Assert.Equal(0, monitor.Stranded[JobKinds.ChargePayment]);
        Assert.Equal(0u, await published.Channel.MessageCountAsync(published.Queue));
    }

    [Fact]
    public async Task Jobs_another_api_is_claiming_are_skipped_not_waited_for_and_each_job_is_published_once()
    {
        await using var published = await ChargePaymentProbe.BindAsync(fixture);
        var old = DateTimeOffset.UtcNow.AddMinutes(-5);
        var jobs = Enumerable.Range(0, 60).Select(_ => QueuedCharge(old)).ToList();
        // A later job that finished makes them stranded by the queue's order too, so the checks find
        // them whether or not charge-payment (bound to the exchange if a worker ran before in this
        // run) holds the copies the first check publishes.
        var finished = Job(JobKinds.ChargePayment, JobStatus.Succeeded, DateTimeOffset.UtcNow);
        finished.RequestHash = "submitted through the Api";
        await using (var db = fixture.CreateDbContext())
        {
            db.Jobs.AddRange(jobs);
            db.Jobs.Add(finished);
            await db.SaveChangesAsync();
        }

        var monitor = _api.Services.GetRequiredService<StrandedJobsMonitor>();
        var claimedElsewhere = jobs.Take(20).Select(j => j.Id).ToArray();
        await using (var otherReplica = fixture.CreateDbContext())
        await using (var claim = await otherReplica.Database.BeginTransactionAsync())
        {
            // Another Api's claim in progress holds these rows; this check neither waits for them nor publishes them.
            await otherReplica.Database.ExecuteSqlInterpolatedAsync($"SELECT 1 FROM jobs WHERE id = ANY({claimedElsewhere}) FOR UPDATE");
            using var bounded = new CancellationTokenSource(TimeSpan.FromSeconds(30));
            await monitor.RefreshAsync(bounded.Token);
            Assert.Equal(40u, await published.Channel.MessageCountAsync(published.Queue));
            await claim.RollbackAsync();
        }

        // Once they are free, the next check takes them.
        await monitor.RefreshAsync(CancellationToken.None);
        var jobIds = new List<string>();
        while (await published.Channel.BasicGetAsync(published.Queue, autoAck: true) is { } copy)
        {
            jobIds.Add(Encoding.UTF8.GetString((byte[])copy.BasicProperties.Headers![JobHeaders.JobId]!));
        }

        Assert.Equal(jobs.Select(j => j.Id.ToString()).Order(), jobIds.Order());
        Assert.Equal(0, monitor.Stranded[JobKinds.ChargePayment]);
    }

    [Fact]
    public async Task Jobs_another_api_holds_in_its_claim_are_not_counted_as_left_over()
    {
        await using var published = await ChargePaymentProbe.BindAsync(fixture);
        var old = DateTimeOffset.UtcNow.AddMinutes(-5);
        var claimedElsewhere = new[] { QueuedCharge(old), QueuedCharge(old) };
        var withoutRequest = Job(JobKinds.ChargePayment, JobStatus.Queued, old);
        // Stranded by the queue's order, whatever the queue's statistics show.
        var finished = Job(JobKinds.ChargePayment, JobStatus.Succeeded, DateTimeOffset.UtcNow);
        finished.RequestHash = "submitted through the Api";
        await using (var db = fixture.CreateDbContext())
        {
            db.Jobs.AddRange(claimedElsewhere);
            db.Jobs.AddRange(withoutRequest, finished);
            await db.SaveChangesAsync();
        }

        var monitor = _api.Services.GetRequiredService<StrandedJobsMonitor>();
        var ids = claimedElsewhere.Select(j => j.Id).ToArray();
        await using var otherReplica = fixture.CreateDbContext();
        await using var claim = await otherReplica.Database.BeginTransactionAsync();
        // Another Api's claim in progress holds these rows: it is publishing them, no operator need act.
        await otherReplica.Database.ExecuteSqlInterpolatedAsync($"SELECT 1 FROM jobs WHERE id = ANY({ids}) FOR UPDATE");
        using var bounded = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await monitor.RefreshAsync(bounded.Token);

        Assert.Equal(1, monitor.Stranded[JobKinds.ChargePayment]);
        Assert.Equal(0u, await published.Channel.MessageCountAsync(published.Queue));
        await claim.RollbackAsync();
    }

    /// <summary>
    /// More stranded jobs than one claim takes, as an Api killed amid a burst of submissions leaves
    /// them: one check publishes them all, and counts none of them as left over for an operator to
    /// cancel or submit again.
    /// </summary>
    [Fact]
    public async Task A_burst_of_stranded_jobs_larger_than_a_claim_is_published_in_one_check_and_none_is_counted_as_left_over()
    {
        await using var published = await ChargePaymentProbe.BindAsync(fixture);
        var old = DateTimeOffset.UtcNow.AddMinutes(-5);
        var jobs = Enumerable.Range(0, StrandedJobRepublisher.BatchSize + 20).Select(_ => QueuedCharge(old)).ToList();
        // Stranded by the queue's order too, whatever the queue's statistics show.
        var finished = Job(JobKinds.ChargePayment, JobStatus.Succeeded, DateTimeOffset.UtcNow);
        finished.RequestHash = "submitted through the Api";
        await using (var db = fixture.CreateDbContext())
        {
            db.Jobs.AddRange(jobs);
            db.Jobs.Add(finished);
            await db.SaveChangesAsync();
        }

        var monitor = _api.Services.GetRequiredService<StrandedJobsMonitor>();
        await monitor.RefreshAsync(CancellationToken.None);

        Assert.Equal(0, monitor.Stranded[JobKinds.ChargePayment]);
        Assert.Equal((uint)jobs.Count, await published.Channel.MessageCountAsync(published.Queue));
    }

    [Fact]
    public async Task A_claim_whose_answer_cannot_be_read_says_how_many_jobs_it_took_and_when_they_are_tried_again_and_loses_none()
    {
        await using var published = await ChargePaymentProbe.BindAsync(fixture);
        var old = DateTimeOffset.UtcNow.AddMinutes(-5);
        var jobs = new[] { QueuedCharge(old), QueuedCharge(old) };
        await using (var db = fixture.CreateDbContext())
        {
            db.Jobs.AddRange(jobs);
            await db.SaveChangesAsync();
        }

        // The claim commits, then its answer is lost on the way back (a connection that breaks, a shutdown).
        // On a clock stopped at a whole second, so the times logged read as the database keeps them.
        var claimedAt = DateTimeOffset.FromUnixTimeSeconds(DateTimeOffset.UtcNow.ToUnixTimeSeconds());
        var logs = new CapturedLogs();
        using var loggers = LoggerFactory.Create(builder => builder.AddProvider(logs));
        var lost = ActivatorUtilities.CreateInstance<StrandedJobRepublisher>(
            _api.Services, new ContextsWith(fixture.ConnectionString, new ClaimAnswerLost()), new StoppedClock(claimedAt),
            loggers.CreateLogger<StrandedJobRepublisher>());
        Dictionary<string, DateTimeOffset> StrandedBefore(DateTimeOffset before) => new() { [JobKinds.ChargePayment] = before };

        await Assert.ThrowsAsync<NpgsqlException>(() => lost.RepublishAsync(StrandedBefore(claimedAt.AddSeconds(-60)), CancellationToken.None));

        await using (var db = fixture.CreateDbContext())
        {
            Assert.All(
                await db.Jobs.AsNoTracking().Where(j => j.Kind == JobKinds.ChargePayment).ToListAsync(),
                job => Assert.Equal((JobStatus.Queued, claimedAt), (job.Status, job.UpdatedAt)));
        }

        Assert.Equal(0u, await published.Channel.MessageCountAsync(published.Queue));
        var warning = Assert.Single(logs.Of(LogLevel.Warning, typeof(StrandedJobRepublisher).FullName!));
        Assert.StartsWith($"2 stranded job(s) were claimed at {claimedAt:O}", warning.Message, StringComparison.Ordinal);
        Assert.Contains($"tried again from {claimedAt.AddSeconds(60):O} on", warning.Message, StringComparison.Ordinal);

        // Nothing is lost: a check before then leaves them; one from then on (Jobs:StrandedAfterSeconds is 60) publishes both.
        var republisher = _api.Services.GetRequiredService<StrandedJobRepublisher>();
        Assert.Equal(0, await republisher.RepublishAsync(StrandedBefore(claimedAt), CancellationToken.None));
        Assert.Equal(2, await republisher.RepublishAsync(StrandedBefore(claimedAt.AddTicks(10)), CancellationToken.None));
        var jobIds = new List<string>();
        while (await published.Channel.BasicGetAsync(published.Queue, autoAck: true) is { } copy)
        {
            jobIds.Add(Encoding.UTF8.GetString((byte[])copy.BasicProperties.Headers![JobHeaders.JobId]!));
        }

        Assert.Equal(jobs.Select(j => j.Id.ToString()).Order(), jobIds.Order());
    }

    [Fact]
    public async Task An_api_whose_stranding_threshold_is_within_a_submissions_time_refuses_to_start()
    {
        var failure = await Assert.ThrowsAnyAsync<Exception>(async () => await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["Jobs:StrandedAfterSeconds"] = "60",
            ["RabbitMq:ConnectTimeoutSeconds"] = "50",
        }));

        Assert.Contains("Jobs:StrandedAfterSeconds (60)", failure.Message, StringComparison.Ordinal);
        Assert.Contains("RabbitMq:ConnectTimeoutSeconds (50)", failure.Message, StringComparison.Ordinal);
    }

    /// <summary>
    /// Declares <paramref name="queue"/> as the worker declares it (so that the tests after this one
    /// find the queue they expect) and leaves a message in it.
    /// </summary>
    private async Task HoldAMessageInAsync(string queue)
    {
        await _channel.QueueDeclareAsync(queue, durable: true, exclusive: false, autoDelete: false, new RabbitMqOptions().JobQueueArguments(queue));
        await _channel.BasicPublishAsync(string.Empty, queue, mandatory: true, new BasicProperties { Persistent = true }, "{}"u8.ToArray());
    }

    /// <summary>A queued charge with its stored request, as the Api writes it.</summary>
    private static Job QueuedCharge(DateTimeOffset updatedAt)
    {
        var job = Job(JobKinds.ChargePayment, JobStatus.Queued, updatedAt);
        job.RequestBody = Encoding.UTF8.GetBytes(JobRequests.ChargePayment(Guid.Parse(job.BusinessKey)));
        return job;
    }

    /// <summary>Throws once the claim of stranded jobs has run and committed, before its rows are read.</summary>
    private sealed class ClaimAnswerLost : DbCommandInterceptor
    {
        public override ValueTask<DbDataReader> ReaderExecutedAsync(
            DbCommand command, CommandExecutedEventData eventData, DbDataReader result, CancellationToken cancellationToken = default) =>
            command.CommandText.Contains("UPDATE jobs SET updated_at", StringComparison.Ordinal)
                ? throw new NpgsqlException("The connection was lost while the claim's answer was read (simulated)")
                : ValueTask.FromResult(result);
    }

    /// <summary>Contexts on <paramref name="connectionString"/>, as the Api configures them, with <paramref name="interceptor"/> added.</summary>
    private sealed class ContextsWith(string connectionString, IInterceptor interceptor) : IDbContextFactory<ConveyorDbContext>
    {
        public ConveyorDbContext CreateDbContext()
        {
            var options = new DbContextOptionsBuilder<ConveyorDbContext>();
            StorageServiceCollectionExtensions.Configure(options, connectionString);
            options.AddInterceptors(interceptor);
            return new ConveyorDbContext(options.Options);
        }
    }

    private sealed class StoppedClock(DateTimeOffset now) : TimeProvider
    {
        public override DateTimeOffset GetUtcNow() => now;
    }

    private static Job Job(string kind, string status, DateTimeOffset updatedAt) => new()
    {
        Id = Guid.CreateVersion7(),
        Kind = kind,
        BusinessKey = Guid.NewGuid().ToString("D"),
        Status = status,
        CreatedAt = updatedAt,
        UpdatedAt = updatedAt,
    };
}
