using System.Globalization;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Storage.Redelivery;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Redelivery;
using Microsoft.EntityFrameworkCore;
using RabbitMQ.Client;

namespace Conveyor.Tests.Worker;

/// <summary>
/// A stored command whose queue no longer exists is kept (never lost) and tried again; its due time
/// moves on with each try, yet an operator sees it: as overdue since it was first refused, as refused
/// rows in the gauges and the readiness report, and in its job's last error.
/// </summary>
[Collection(AloneCollection.Name)]
public sealed class RefusedRedeliveryTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private readonly string _queue = $"refused-test-{Guid.NewGuid():N}";

    public Task InitializeAsync() => fixture.ResetAsync();

    public async Task DisposeAsync()
    {
        await using var connection = await fixture.AmqpFactory().CreateConnectionAsync();
        await using var channel = await connection.CreateChannelAsync();
        await channel.QueueDeleteAsync(_queue);
    }

    [Fact]
    public async Task A_stored_command_for_a_missing_queue_is_kept_and_shown_as_refused_and_overdue_and_its_job_says_why()
    {
        var due = DateTimeOffset.UtcNow.AddSeconds(-2);
        var job = new Job
        {
            Id = Guid.NewGuid(),
            Kind = JobKinds.ChargePayment,
            BusinessKey = Guid.NewGuid().ToString(),
            Status = JobStatus.RetryScheduled,
            Attempts = 1,
            LastError = "TransientFailureException: the gateway answered 503",
            NextAttemptAt = due,
            CreatedAt = due.AddMinutes(-1),
            UpdatedAt = due.AddMinutes(-1),
        };
        await using (var db = fixture.CreateDbContext())
        {
            db.Jobs.Add(job);
            db.ScheduledMessages.Add(new ScheduledMessage
            {
                DedupeKey = $"{job.BusinessKey}:1",
                Destination = _queue,
                DueAt = due,
                Attempt = 1,
                ContentType = "application/json",
                MessageId = Guid.NewGuid().ToString(),
                Headers = "{}",
                Body = Encoding.UTF8.GetBytes("{}"),
                CreatedAt = due,
                JobId = job.Id,
                JobAttempts = 1,
            });
            await db.SaveChangesAsync();
        }

        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("Redelivery:FailedPublishBackoffSeconds", "1"),
            ("Redelivery:MaxIdleSeconds", "1"),
            ("Redelivery:OverdueAfterSeconds", "3"),
            ("Redelivery:BacklogRefreshSeconds", "1")));

        // Refused at every try for longer than OverdueAfterSeconds: reported, though its due time keeps moving.
        await Eventually.AssertAsync(async () =>
        {
            var entry = await ReadinessAsync(worker);
            Assert.Equal("Degraded", entry.GetProperty("status").GetString());
            Assert.Contains("refused 1 of them", entry.GetProperty("description").GetString(), StringComparison.Ordinal);
        }, TimeSpan.FromSeconds(30));
        var metrics = await worker.Client.GetStringAsync(new Uri("/metrics", UriKind.Relative));
        Assert.Equal(1, Gauge(metrics, "conveyor_redelivery_refused"));
        Assert.InRange(Gauge(metrics, "conveyor_redelivery_refused_for_seconds"), 3, 600);
        Assert.InRange(Gauge(metrics, "conveyor_redelivery_overdue_seconds"), 3, 600);

        await using (var db = fixture.CreateDbContext())
        {
            var kept = await db.ScheduledMessages.AsNoTracking().SingleAsync();
            Assert.True(kept.DueAt > due, "the row was not given a later try");
            var waiting = await db.Jobs.AsNoTracking().WithoutRequestBody().SingleAsync();
            Assert.Equal(JobStatus.RetryScheduled, waiting.Status);
            Assert.StartsWith("PublishRefused:", waiting.LastError, StringComparison.Ordinal);
            Assert.Contains(_queue, waiting.LastError, StringComparison.Ordinal);
            Assert.True(waiting.NextAttemptAt > due, $"the job still shows its first due time {waiting.NextAttemptAt:O}");
        }

        // The queue is back: the row is published at its next try and nothing is refused any more.
        await fixture.DeclareAsync(_queue);
        await Eventually.AssertAsync(async () =>
        {
            Assert.Equal(1u, await fixture.ReadyAsync(_queue));
            Assert.Equal("Healthy", (await ReadinessAsync(worker)).GetProperty("status").GetString());
        }, TimeSpan.FromSeconds(30));
        await using (var db = fixture.CreateDbContext())
        {
            Assert.Equal(0, await db.ScheduledMessages.CountAsync());
        }
    }

    private static async Task<JsonElement> ReadinessAsync(RunningApp worker)
    {
        using var response = await worker.Client.GetAsync(new Uri("/health/ready", UriKind.Relative));
        var report = await response.Content.ReadFromJsonAsync<JsonElement>();
        return report.GetProperty("checks").GetProperty(ScheduledBacklog.HealthCheckName).Clone();
    }

    /// <summary>A gauge's one sample, with or without labels.</summary>
    private static double Gauge(string exposition, string name)
    {
        var line = exposition.Split('\n').Single(l => l.StartsWith(name + "{", StringComparison.Ordinal) || l.StartsWith(name + " ", StringComparison.Ordinal));
        var value = line[(line.LastIndexOf('}') is var brace and >= 0 ? brace + 1 : name.Length)..].Trim().Split(' ')[0];
        return double.Parse(value, CultureInfo.InvariantCulture);
    }
}
