using System.Net.Http.Json;
using Conveyor.Api.ErrorQueues;
using Conveyor.Api.Jobs;
using Conveyor.Contracts;
using Conveyor.ServiceDefaults;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Microsoft.Extensions.DependencyInjection;
using RabbitMQ.Client;

namespace Conveyor.Tests.Api;

/// <summary>
/// Reads of jobs by time (<c>GET /api/jobs</c> and the stranded-job check) read about what they
/// return, however many other jobs the table holds and whatever its statistics say (ADR 0010). With
/// an index on (created_at, id) and one on (status, created_at, id), a kind's page read every newer
/// job of the other kinds, and the stranded-job check read another kind's whole backlog. A database
/// of the test's own, so that its counters count only this Api and its statistics stay as the test
/// left them (taken in a quiet spell, before the jobs below existed).
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class JobsByTimePlanTests(ConveyorFixture fixture) : ScratchDatabaseTest(fixture, "bytime")
{
    private const int PerKind = 30_000;
    private const int Page = 50;

    /// <summary>Far more than any read below needs, far less than reading the other kinds' rows.</summary>
    private const int PagesAllowed = 1_000;

    public override async Task InitializeAsync()
    {
        await base.InitializeAsync();
        await Database.MigrateAsync();
        await Database.ExecuteAsync($"""
            ALTER TABLE jobs SET (autovacuum_enabled = false);
            INSERT INTO jobs (id, kind, business_key, status, attempts, created_at, updated_at)
            SELECT gen_random_uuid(), '{JobKinds.GenerateReport}', gen_random_uuid()::text, '{JobStatus.Succeeded}', 1,
                   now() - interval '1 day', now() - interval '1 day'
              FROM generate_series(1, 500);
            ANALYZE jobs;
            """);
    }

    [Fact]
    public async Task A_page_of_one_kind_reads_about_a_page_however_many_newer_jobs_other_kinds_have()
    {
        // Old charges, then twice as many newer webhooks, then one job of a kind this version no longer runs.
        await Database.ExecuteAsync($"""
            INSERT INTO jobs (id, kind, business_key, status, attempts, created_at, updated_at)
            SELECT gen_random_uuid(), '{JobKinds.ChargePayment}', gen_random_uuid()::text, '{JobStatus.Succeeded}', 1,
                   now() - interval '3 hours' + g * interval '1 ms', now() - interval '3 hours' + g * interval '1 ms'
              FROM generate_series(1, {PerKind}) g;
            INSERT INTO jobs (id, kind, business_key, status, attempts, created_at, updated_at)
            SELECT gen_random_uuid(), '{JobKinds.DeliverWebhook}', gen_random_uuid()::text,
                   CASE WHEN g % 10 = 0 THEN '{JobStatus.DeadLettered}' ELSE '{JobStatus.Succeeded}' END, 1,
                   now() - interval '2 hours' + g * interval '1 ms', now() - interval '2 hours' + g * interval '1 ms'
              FROM generate_series(1, {2 * PerKind}) g;
            INSERT INTO jobs (id, kind, business_key, status, attempts, created_at, updated_at)
            VALUES (gen_random_uuid(), 'retired-kind', gen_random_uuid()::text, '{JobStatus.Succeeded}', 1, now(), now());
            """);
        await using var api = await StartApiAsync();

        var (charges, chargesRead) = await ListAsync(api, $"kind={JobKinds.ChargePayment}&limit={Page}");
        var (olderCharges, olderChargesRead) = await ListAsync(api, $"kind={JobKinds.ChargePayment}&limit={Page}&cursor={Uri.EscapeDataString(charges.NextCursor!)}");
        var (deadLettered, deadLetteredRead) = await ListAsync(api, $"status={JobStatus.DeadLettered}&limit={Page}");
        var (newest, newestRead) = await ListAsync(api, $"limit={Page}");

        Assert.All(charges.Items.Concat(olderCharges.Items), j => Assert.Equal(JobKinds.ChargePayment, j.Kind));
        var twoPages = charges.Items.Concat(olderCharges.Items).ToList();
        Assert.Equal(2 * Page, twoPages.Select(j => j.JobId).Distinct().Count());
        Assert.True(twoPages.Zip(twoPages.Skip(1)).All(p => p.First.CreatedAt > p.Second.CreatedAt), "newest first, the second page older than the first");
        Assert.All(deadLettered.Items, j => Assert.Equal((JobKinds.DeliverWebhook, JobStatus.DeadLettered), (j.Kind, j.Status)));
        Assert.Equal(Page, deadLettered.Items.Count);
        // The unfiltered listing merges every kind, a kind no longer deployed included.
        Assert.Equal("retired-kind", newest.Items[0].Kind);
        Assert.All(newest.Items.Skip(1), j => Assert.Equal(JobKinds.DeliverWebhook, j.Kind));

        Assert.True(chargesRead < PagesAllowed, $"a page of charges read {chargesRead} pages");
        Assert.True(olderChargesRead < PagesAllowed, $"the next page of charges read {olderChargesRead} pages");
        Assert.True(deadLetteredRead < PagesAllowed, $"a page of dead-lettered jobs read {deadLetteredRead} pages");
        Assert.True(newestRead < PagesAllowed, $"a page of every kind read {newestRead} pages");
    }

    [Fact]
    public async Task The_stranded_job_check_does_not_read_another_kinds_backlog()
    {
        // Webhooks: a backlog, their queue holding messages, none finished yet, so none is stranded.
        // Charges: three queued long ago, though one submitted after them has finished: stranded,
        // whether the broker's (lagging) counts show their queue empty or not.
        await Database.ExecuteAsync($"""
            INSERT INTO jobs (id, kind, business_key, status, attempts, created_at, updated_at)
            SELECT gen_random_uuid(), '{JobKinds.DeliverWebhook}', gen_random_uuid()::text, '{JobStatus.Queued}', 0,
                   now() - interval '2 hours', now() - interval '2 hours'
              FROM generate_series(1, {2 * PerKind});
            INSERT INTO jobs (id, kind, business_key, status, attempts, created_at, updated_at)
            SELECT gen_random_uuid(), '{JobKinds.ChargePayment}', gen_random_uuid()::text, '{JobStatus.Queued}', 0,
                   now() - interval '3 hours', now() - interval '3 hours'
              FROM generate_series(1, 3);
            INSERT INTO jobs (id, kind, business_key, status, attempts, request_hash, created_at, updated_at)
            VALUES (gen_random_uuid(), '{JobKinds.ChargePayment}', gen_random_uuid()::text, '{JobStatus.Succeeded}', 1, 'hash',
                    now() - interval '10 minutes', now() - interval '10 minutes');
            """);
        await using (var connection = await Fixture.AmqpFactory().CreateConnectionAsync())
        await using (var channel = await connection.CreateChannelAsync(new CreateChannelOptions(
            publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true)))
        {
            await channel.QueueDeclareAsync(JobKinds.DeliverWebhook, durable: true, exclusive: false, autoDelete: false, new RabbitMqOptions().JobQueueArguments(JobKinds.DeliverWebhook));
            await channel.BasicPublishAsync(string.Empty, JobKinds.DeliverWebhook, mandatory: true, new BasicProperties { Persistent = true }, "{}"u8.ToArray());
        }

        await using var api = await StartApiAsync();
        var monitor = api.Services.GetRequiredService<StrandedJobsMonitor>();
        // The broker's counts lag: until they show the webhooks' message, their queue may read empty.
        await Eventually.AssertAsync(async () =>
        {
            using var scope = api.Services.CreateScope();
            var queues = await scope.ServiceProvider.GetRequiredService<RabbitManagementClient>().QueuesAsync(CancellationToken.None);
            Assert.Contains(queues, q => q is { Name: JobKinds.DeliverWebhook, CountsKnown: true, Messages: > 0 });
        }, TimeSpan.FromSeconds(30));
        var before = await Database.PagesReadAsync("jobs");

        await monitor.RefreshAsync(CancellationToken.None);

        var read = await Database.PagesReadAsync("jobs");
        Assert.Equal(3, monitor.Stranded[JobKinds.ChargePayment]);
        Assert.Equal(0, monitor.Stranded[JobKinds.DeliverWebhook]);
        Assert.True(read - before < PagesAllowed, $"the check read {read - before} pages of jobs and its indexes");
    }

    /// <summary>An Api on this database whose first stranded-job check is over, so the counters count only what the test does.</summary>
    private async Task<RunningApp> StartApiAsync()
    {
        var api = await Fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings:Conveyor"] = Database.ConnectionString,
            ["Jobs:StrandedAfterSeconds"] = "60",
            ["Jobs:StrandedCheckSeconds"] = "3600",
        });
        var monitor = api.Services.GetRequiredService<StrandedJobsMonitor>();
        await Eventually.AssertAsync(() =>
        {
            Assert.Equal(JobKinds.All.Count, monitor.Stranded.Count);
            return Task.CompletedTask;
        });
        return api;
    }

    private async Task<(JobPage Page, long PagesRead)> ListAsync(RunningApp api, string query)
    {
        var before = await Database.PagesReadAsync("jobs");
        var page = await api.Client.GetFromJsonAsync<JobPage>(new Uri($"/api/jobs?{query}", UriKind.Relative));
        var after = await Database.PagesReadAsync("jobs");
        Assert.NotNull(page);
        return (page, after - before);
    }
}
