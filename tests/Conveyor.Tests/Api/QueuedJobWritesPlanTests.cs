using System.Net.Http.Json;
using Conveyor.Api.Jobs;
using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.Api;

/// <summary>
/// The writes to one queued job (a repeat of a recent submission re-reads and touches its row; an
/// unpublished row is removed; the stranded-job reconciler hands claims back; the redelivery
/// dispatcher notes a refused publish) find the row by its primary key, whatever the statistics say
/// of the <c>queued</c> status. Statistics taken while few jobs were queued sent them through the
/// (status, created_at, id) index jobs then had, over every queued job: during a backlog, when they run most.
/// A database of the test's own, so that its counters count only this Api and its statistics stay
/// as the test left them.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class QueuedJobWritesPlanTests(ConveyorFixture fixture) : ScratchDatabaseTest(fixture, "queued")
{
    private const int Backlog = 60_000;

    [Fact]
    public async Task A_repeated_submission_during_a_backlog_touches_its_job_without_reading_the_backlog()
    {
        await Database.MigrateAsync();

        // Statistics from a quiet spell (finished jobs, none queued), then a backlog they know nothing of.
        await Database.ExecuteAsync($"""
            ALTER TABLE jobs SET (autovacuum_enabled = false);
            INSERT INTO jobs (id, kind, business_key, status, attempts, created_at, updated_at)
            SELECT gen_random_uuid(), '{JobKinds.ChargePayment}', gen_random_uuid()::text, '{JobStatus.Succeeded}', 1, now(), now()
              FROM generate_series(1, 500);
            ANALYZE jobs;
            """);
        await using var api = await Fixture.StartApiAsync(new Dictionary<string, string?> { ["ConnectionStrings:Conveyor"] = Database.ConnectionString });
        await Database.ExecuteAsync($"""
            INSERT INTO jobs (id, kind, business_key, status, attempts, created_at, updated_at)
            SELECT gen_random_uuid(), '{JobKinds.ChargePayment}', gen_random_uuid()::text, '{JobStatus.Queued}', 0, now() - interval '1 hour', now() - interval '1 hour'
              FROM generate_series(1, {Backlog});
            """);
        var request = JobRequests.ChargePayment(Guid.NewGuid());
        var accepted = await api.Client.AcceptJobAsync(JobKinds.ChargePayment, request);
        var before = await Database.PagesReadAsync("jobs");

        // Sent again at once (its answer lost): the Api re-reads the queued row and publishes again.
        using var repeated = await api.Client.PostJobAsync(JobKinds.ChargePayment, request);

        var after = await Database.PagesReadAsync("jobs");
        Assert.True(repeated.IsSuccessStatusCode, $"{(int)repeated.StatusCode}");
        Assert.Equal(accepted.JobId, (await repeated.Content.ReadFromJsonAsync<JobAccepted>())!.JobId);
        // A few index descents and row reads; the queued part of the status index alone is hundreds of pages.
        Assert.True(after - before < 100, $"the repeat read {after - before} pages of jobs and its indexes");
    }
}
