using System.Net;
using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Api;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.EntityFrameworkCore;
using Npgsql;

namespace Conveyor.Tests.Worker;

/// <summary>
/// A cancel that arrives while an attempt runs waits for the job row's lock; when the attempt fails
/// after its effect went out (the webhook was POSTed), the cancel must find the attempt recorded and
/// answer 409, never cancel a job as if it had not started.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class CancelDuringFailedAttemptTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Theory]
    [InlineData(1)]
    [InlineData(64)]
    public async Task A_cancel_waiting_for_a_failing_attempt_is_refused_and_the_attempt_stays_counted(int inboxBatchSize)
    {
        await using var receiver = await HeldWebhookReceiver.StartAsync();
        var settings = WorkerSettings.With();
        settings["Consumers:DeliverWebhook:InboxBatchSize"] = inboxBatchSize.ToString(System.Globalization.CultureInfo.InvariantCulture);
        settings["Consumers:DeliverWebhook:RetryLimit"] = "0";
        await using var worker = await fixture.StartWorkerAsync(settings);
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?> { ["Webhooks:AllowPrivateNetworks"] = "true" });

        var body = System.Text.Json.JsonSerializer.Serialize(new
        {
            webhookId = Guid.NewGuid(),
            url = new Uri(receiver.BaseAddress, "/hooks"),
            eventType = "order.paid",
            payload = new { orderId = 7 },
        });
        var accepted = await api.Client.AcceptJobAsync(JobKinds.DeliverWebhook, body);

        // The webhook is out: the attempt has had its effect, and holds the job row's lock.
        await receiver.FirstArrived.WaitAsync(TimeSpan.FromSeconds(60));
        var cancel = api.Client.CancelJobAsync(accepted.JobId);
        await WaitForCancelBlockedOnLockAsync();
        receiver.ReleaseFirst(HttpStatusCode.InternalServerError);

        using var response = await cancel;
        await response.AssertProblemAsync(StatusCodes.Status409Conflict);
        await using var db = fixture.CreateDbContext();
        var job = await db.Jobs.AsNoTracking().SingleAsync(j => j.Id == accepted.JobId);
        Assert.NotEqual(JobStatus.Cancelled, job.Status);
        Assert.Equal(1, job.Attempts);
        // The batched inbox writes the error just after its commit; the single one with it.
        await Eventually.AssertAsync(async () =>
        {
            await using var later = fixture.CreateDbContext();
            var recorded = await later.Jobs.AsNoTracking().SingleAsync(j => j.Id == accepted.JobId);
            Assert.Contains("500", recorded.LastError, StringComparison.Ordinal);
            Assert.Equal(1, recorded.Attempts);
        });
        Assert.Equal(1, receiver.Deliveries);
    }

    /// <summary>The Api's cancel UPDATE is waiting for a lock (the attempt's transaction holds the job row).</summary>
    private async Task WaitForCancelBlockedOnLockAsync()
    {
        await Eventually.AssertAsync(async () =>
        {
            await using var connection = new NpgsqlConnection(fixture.ConnectionString);
            await connection.OpenAsync();
            await using var query = new NpgsqlCommand(
                """
                SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock' AND query ILIKE 'UPDATE jobs%'
                """,
                connection);
            Assert.Equal(1L, (long)(await query.ExecuteScalarAsync())!);
        }, TimeSpan.FromSeconds(30));
    }

    /// <summary>A webhook endpoint that holds the first delivery until the test answers it; later ones get 204.</summary>
    private sealed class HeldWebhookReceiver : IAsyncDisposable
    {
        private readonly TaskCompletionSource _firstArrived = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly TaskCompletionSource<HttpStatusCode> _firstAnswer = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private LoopbackWebHost _host = null!;
        private int _deliveries;

        public Uri BaseAddress => _host.BaseAddress;

        public Task FirstArrived => _firstArrived.Task;

        public int Deliveries => Volatile.Read(ref _deliveries);

        public void ReleaseFirst(HttpStatusCode status) => _firstAnswer.TrySetResult(status);

        public static async Task<HeldWebhookReceiver> StartAsync()
        {
            var receiver = new HeldWebhookReceiver();
            receiver._host = await LoopbackWebHost.StartAsync(app => app.MapPost("/{**path}", (Func<HttpContext, Task<IResult>>)receiver.HandleAsync));
            return receiver;
        }

        private async Task<IResult> HandleAsync(HttpContext context)
        {
            await context.Request.Body.CopyToAsync(Stream.Null);
            if (Interlocked.Increment(ref _deliveries) > 1)
            {
                return Results.StatusCode(StatusCodes.Status204NoContent);
            }

            _firstArrived.TrySetResult();
            return Results.StatusCode((int)await _firstAnswer.Task);
        }

        public async ValueTask DisposeAsync()
        {
            _firstAnswer.TrySetResult(HttpStatusCode.InternalServerError);
            await _host.DisposeAsync();
        }
    }
}
