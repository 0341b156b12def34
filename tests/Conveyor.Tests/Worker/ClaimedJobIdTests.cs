using System.Globalization;
using System.Text.Json;
using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Worker;

/// <summary>
/// The <c>Conveyor-Job-Id</c> header is a claim any sender can make. A command whose header names
/// another job (of any kind) must neither take that job's id nor break the messages handled with it.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class ClaimedJobIdTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Exchange = "Conveyor.Contracts.Payments:ChargePayment";
    private const string MessageUrn = "urn:message:Conveyor.Contracts.Payments:ChargePayment";

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Theory]
    [InlineData(64)]
    [InlineData(1)]
    public async Task A_job_id_header_naming_another_job_is_ignored_and_fails_no_other_message(int inboxBatchSize)
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        var settings = WorkerSettings.With(gateway).Override(
            ("Consumers:ChargePayment:InboxBatchSize", inboxBatchSize.ToString(CultureInfo.InvariantCulture)));
        var other = await InsertOtherJobAsync();
        // Declares the queues, so the commands wait for the next worker and arrive together.
        await (await fixture.StartWorkerAsync(settings)).DisposeAsync();

        await using var producer = await RawAmqpProducer.ConnectAsync(fixture);
        var (invalid, plain, valid) = (Guid.NewGuid(), Guid.NewGuid(), Guid.NewGuid());
        await PublishChargeAsync(producer, invalid, "XXX", claimedJobId: other.Id);
        await PublishChargeAsync(producer, plain, "EUR", claimedJobId: null);
        await PublishChargeAsync(producer, valid, "EUR", claimedJobId: other.Id);
        await using var worker = await fixture.StartWorkerAsync(settings);

        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            var statuses = await db.Jobs.Where(j => j.Kind == JobKinds.ChargePayment).ToDictionaryAsync(j => j.BusinessKey, j => j.Status);
            Assert.Equal(JobStatus.DeadLettered, statuses.GetValueOrDefault(invalid.ToString()));
            Assert.Equal(JobStatus.Succeeded, statuses.GetValueOrDefault(plain.ToString()));
            Assert.Equal(JobStatus.Succeeded, statuses.GetValueOrDefault(valid.ToString()));
        }, () => PipelineState.DescribeAsync(fixture));
        await fixture.AssertDrainedAsync(worker, "charge-payment");

        await using var check = fixture.CreateDbContext();
        // Both good payments charged once and in the ledger.
        Assert.Equal(2, await check.Ledger.CountAsync(l => l.PaymentId == plain || l.PaymentId == valid));
        Assert.Equal(1, gateway.RequestsFor(plain.ToString()));
        Assert.Equal(1, gateway.RequestsFor(valid.ToString()));
        // The named job is untouched and keeps its id; the commands' jobs got ids of their own.
        var named = await check.Jobs.AsNoTracking().SingleAsync(j => j.Id == other.Id);
        Assert.Equal((other.Kind, other.BusinessKey, other.Status, other.Attempts), (named.Kind, named.BusinessKey, named.Status, named.Attempts));
        var invalidJob = await check.Jobs.AsNoTracking().SingleAsync(j => j.BusinessKey == invalid.ToString());
        Assert.NotEqual(other.Id, invalidJob.Id);
        Assert.NotEqual(other.Id, (await check.Jobs.SingleAsync(j => j.BusinessKey == valid.ToString())).Id);

        // Only the invalid command is dead-lettered, under its own job's id: a move of the named job's
        // commands (by its id) must not pick it up.
        var dead = Assert.Single(await producer.TakeAllAsync("charge-payment_error"));
        Assert.Contains(invalid.ToString(), System.Text.Encoding.UTF8.GetString(dead.Body), StringComparison.Ordinal);
        Assert.Equal(invalidJob.Id.ToString(), dead.Header(JobHeaders.JobId));
    }

    private async Task<Job> InsertOtherJobAsync()
    {
        var now = DateTimeOffset.UtcNow;
        var job = new Job
        {
            Id = Guid.NewGuid(),
            Kind = JobKinds.GenerateReport,
            BusinessKey = Guid.NewGuid().ToString(),
            Status = JobStatus.Succeeded,
            Attempts = 1,
            CreatedAt = now,
            UpdatedAt = now,
            FinishedAt = now,
        };
        await using var db = fixture.CreateDbContext();
        db.Jobs.Add(job);
        await db.SaveChangesAsync();
        return job;
    }

    /// <summary>A MassTransit envelope whose headers carry the job id, as the Api's publish puts it there.</summary>
    private static Task PublishChargeAsync(RawAmqpProducer producer, Guid paymentId, string currency, Guid? claimedJobId)
    {
        var messageId = Guid.NewGuid();
        var envelope = new
        {
            messageId,
            messageType = new[] { MessageUrn },
            sentTime = DateTimeOffset.UtcNow,
            headers = claimedJobId is { } id ? new Dictionary<string, string> { [JobHeaders.JobId] = id.ToString() } : [],
            message = new { paymentId, accountId = "acct-claim", amountMinor = 1200, currency },
        };
        return producer.PublishRawAsync(
            Exchange, JsonSerializer.SerializeToUtf8Bytes(envelope, JsonSerializerOptions.Web), RawAmqpProducer.EnvelopeContentType, messageId.ToString());
    }
}
