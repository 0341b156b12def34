using System.Net;
using Conveyor.Contracts.Payments;
using Conveyor.Contracts.Reports;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.Extensions.DependencyInjection;

namespace Conveyor.Tests.Worker;

/// <summary>
/// A job's times read in order whatever the clocks of the processes that wrote them: <c>createdAt</c> ≤
/// <c>finishedAt</c> ≤ <c>updatedAt</c>. A row a worker creates for a command published directly is stamped by the
/// database's clock (ADR 0013), but every later write of the worker stamped <c>updated_at</c> and <c>finished_at</c>
/// by its own: on a worker whose clock is behind the database's, a job read as updated and finished before it was
/// created, and a job written by workers whose clocks disagree could read as updated earlier than before.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class JobTimestampOrderTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    /// <summary>
    /// On the batched, the single-message and the lease inbox: a job that succeeds after a failed try (retried in
    /// memory), and a charge the gateway declines (dead-lettered), each on a worker two minutes behind the database.
    /// </summary>
    [Theory]
    [InlineData("batched", JobStatus.Succeeded)]
    [InlineData("batched", JobStatus.DeadLettered)]
    [InlineData("single", JobStatus.Succeeded)]
    [InlineData("single", JobStatus.DeadLettered)]
    [InlineData("lease", JobStatus.Succeeded)]
    public async Task A_job_run_by_a_worker_whose_clock_is_behind_the_databases_is_never_updated_or_finished_before_it_was_created(
        string inbox, string outcome)
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        if (outcome == JobStatus.DeadLettered)
        {
            gateway.DeclineNext(1);
        }
        else
        {
            gateway.FailNext(1, HttpStatusCode.ServiceUnavailable);
        }

        var settings = WorkerSettings.With(gateway)
            .Override(("Consumers:ChargePayment:InboxBatchSize", inbox == "single" ? "1" : "64"));
        await using var worker = await fixture.StartWorkerAsync(
            settings, builder => builder.Services.AddSingleton<TimeProvider>(new SkewedClock(TimeSpan.FromMinutes(-2))));
        await using var publisher = await TestPublisher.StartAsync(fixture);

        var key = Guid.NewGuid();
        if (inbox == "lease")
        {
            await publisher.PublishAsync(new GenerateReport { ReportId = key });
        }
        else
        {
            await publisher.PublishAsync(new ChargePayment { PaymentId = key, AccountId = "acct-times", AmountMinor = 1250, Currency = "EUR" });
        }

        var job = await fixture.WaitForJobAsync(key.ToString(), outcome);

        Assert.True(job.CreatedAt <= job.UpdatedAt, $"updated {job.UpdatedAt:O} before created {job.CreatedAt:O}");
        Assert.NotNull(job.FinishedAt);
        Assert.True(
            job.CreatedAt <= job.FinishedAt && job.FinishedAt <= job.UpdatedAt,
            $"finished {job.FinishedAt:O} outside created {job.CreatedAt:O} .. updated {job.UpdatedAt:O}");
    }

    /// <summary>
    /// Written by a worker whose clock is ahead, then by one whose clock is behind: the second write's time is after
    /// the first's, not two minutes before it.
    /// </summary>
    [Fact]
    public async Task A_job_written_by_workers_whose_clocks_disagree_is_never_updated_earlier_than_before()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        gateway.DeclineNext(1);
        var key = Guid.NewGuid();
        Job first;
        await using (var ahead = await fixture.StartWorkerAsync(
            WorkerSettings.With(gateway), builder => builder.Services.AddSingleton<TimeProvider>(new SkewedClock(TimeSpan.FromMinutes(2)))))
        {
            await using var publisher = await TestPublisher.StartAsync(fixture);
            await publisher.PublishAsync(new ChargePayment { PaymentId = key, AccountId = "acct-times", AmountMinor = 1250, Currency = "EUR" });
            first = await fixture.WaitForJobAsync(key.ToString(), JobStatus.DeadLettered);
        }

        // A corrected command under the dead-lettered job's key runs (ADR 0011), on a worker two minutes behind.
        await using var behind = await fixture.StartWorkerAsync(
            WorkerSettings.With(gateway), builder => builder.Services.AddSingleton<TimeProvider>(new SkewedClock(TimeSpan.FromMinutes(-2))));
        await using (var publisher = await TestPublisher.StartAsync(fixture))
        {
            await publisher.PublishAsync(new ChargePayment { PaymentId = key, AccountId = "acct-times", AmountMinor = 1251, Currency = "EUR" });
        }

        var second = await fixture.WaitForJobAsync(key.ToString(), JobStatus.Succeeded);

        Assert.Equal(first.Id, second.Id);
        Assert.True(second.UpdatedAt > first.UpdatedAt, $"updated {second.UpdatedAt:O} after {first.UpdatedAt:O}");
        Assert.True(second.FinishedAt >= first.UpdatedAt, $"finished {second.FinishedAt:O} before the last update {first.UpdatedAt:O}");
    }
}
