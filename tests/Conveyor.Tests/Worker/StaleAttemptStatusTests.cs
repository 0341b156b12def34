using System.Diagnostics.Metrics;
using System.Globalization;
using System.Net;
using Conveyor.Contracts;
using Conveyor.Contracts.Payments;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Jobs;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.DependencyInjection;

namespace Conveyor.Tests.Worker;

/// <summary>
/// The status a failed attempt writes on its way out (dead-lettered, retry-scheduled, queued after a
/// shutdown) belongs to that attempt: once a newer attempt of the job has been claimed, an older one's
/// late write must not overwrite what the newer one says.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class StaleAttemptStatusTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Queue = "charge-payment";

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Theory]
    [InlineData(1)]
    [InlineData(64)]
    public async Task A_copy_dead_lettered_late_leaves_a_newer_copys_pending_redelivery_showing(int inboxBatchSize)
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        // Copy A is refused for good; copy B, which runs after it, fails transiently.
        gateway.FailNext(1, HttpStatusCode.BadRequest);
        gateway.FailNext(1, HttpStatusCode.ServiceUnavailable);
        await fixture.DeclareAsync(Queue + "_error");
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway).Override(
            ("Consumers:ChargePayment:InboxBatchSize", inboxBatchSize.ToString(CultureInfo.InvariantCulture)),
            ("Consumers:ChargePayment:RetryLimit", "0"),
            ("Consumers:ChargePayment:RedeliveryLimit", "1"),
            // Pending for the whole test.
            ("Consumers:ChargePayment:RedeliveryBaseDelayMilliseconds", "600000")));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        using var deadLettering = new HeldDeadLetter(JobKinds.ChargePayment, worker.Services.GetRequiredService<IMeterFactory>());
        var payment = new ChargePayment { PaymentId = Guid.NewGuid(), AccountId = "acct-stale", AmountMinor = 300, Currency = "EUR" };
        var key = payment.PaymentId.ToString();

        // Copy A fails; its failure path is held just before it writes dead-lettered.
        await publisher.PublishAsync(payment);
        await deadLettering.Reached.WaitAsync(TimeSpan.FromSeconds(60));

        // Copy B (a duplicate publish, or an operator's move back from _error) claims the job as attempt 2,
        // fails transiently, and stores its redelivery.
        await publisher.PublishAsync(payment);
        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            var job = await db.Jobs.AsNoTracking().SingleAsync(j => j.BusinessKey == key);
            Assert.Equal((JobStatus.RetryScheduled, 2), (job.Status, job.Attempts));
            Assert.Equal(1, await db.ScheduledMessages.CountAsync());
        });

        // A's failure path goes on: its copy lands in _error, after its status write.
        deadLettering.Release();
        await Eventually.AssertAsync(async () => Assert.Equal(1u, await fixture.ReadyAsync(Queue + "_error")));

        await using var check = fixture.CreateDbContext();
        var after = await check.Jobs.AsNoTracking().SingleAsync(j => j.BusinessKey == key);
        // B's redelivery will run the job again: it is waiting for it, not dead.
        Assert.Equal((JobStatus.RetryScheduled, 2), (after.Status, after.Attempts));
        Assert.NotNull(after.NextAttemptAt);
        Assert.Null(after.FinishedAt);
        Assert.Contains("503", after.LastError, StringComparison.Ordinal);
        Assert.Equal(1, await check.ScheduledMessages.CountAsync());

        // A's copy in _error says how many attempts A had, not the count B's claim left in the row.
        await using var reader = await RawAmqpProducer.ConnectAsync(fixture);
        var dead = Assert.Single(await reader.TakeAllAsync(Queue + "_error"));
        Assert.Equal("1", dead.Header("Conveyor-Attempts"));
        Assert.Equal(after.Id.ToString(), dead.Header(JobHeaders.JobId));
    }

    /// <summary>
    /// Holds the first dead-lettering of <c>kind</c> by the worker whose meters <c>scope</c> made, at its metric, which the job
    /// outcome filter records just before it writes the status: a failure path that is slow there.
    /// </summary>
    private sealed class HeldDeadLetter : IDisposable
    {
        private readonly MeterListener _listener = new();
        private readonly TaskCompletionSource _reached = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private readonly ManualResetEventSlim _released = new();
        private int _held;

        public HeldDeadLetter(string kind, IMeterFactory scope)
        {
            _listener.InstrumentPublished = (instrument, listener) =>
            {
                // That worker's alone (Meter.Scope): other lanes' workers are not held.
                if (instrument.Meter.Scope == scope && instrument.Meter.Name == JobMetrics.MeterName && instrument.Name == "conveyor.jobs.dead_lettered")
                {
                    listener.EnableMeasurementEvents(instrument);
                }
            };
            _listener.SetMeasurementEventCallback<long>((_, _, tags, _) =>
            {
                foreach (var tag in tags)
                {
                    if (tag.Key == "kind" && kind.Equals(tag.Value as string, StringComparison.Ordinal) && Interlocked.Exchange(ref _held, 1) == 0)
                    {
                        _reached.TrySetResult();
                        // Bounded: a test that fails elsewhere must not leave a worker thread stuck.
                        _released.Wait(TimeSpan.FromSeconds(120));
                    }
                }
            });
            _listener.Start();
        }

        public Task Reached => _reached.Task;

        public void Release() => _released.Set();

        public void Dispose()
        {
            _released.Set();
            _listener.Dispose();
            _released.Dispose();
        }
    }
}
