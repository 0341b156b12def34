using Conveyor.Api.Jobs;
using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.Http;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.DependencyInjection;
using Npgsql;
using System.Net;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;

namespace Conveyor.Tests.Api;

[Collection(ConveyorCollection.Name)]
public sealed class IdempotencyTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private RunningApp _api = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        _api = await fixture.StartApiAsync();
    }

    public async Task DisposeAsync() => await _api.DisposeAsync();

    [Fact]
    public async Task Repeated_idempotency_key_with_the_same_body_returns_the_same_job()
    {
        var key = $"order-{Guid.NewGuid()}";
        var json = JobRequests.ChargePayment(Guid.NewGuid());

        var first = await AcceptAsync(JobKinds.ChargePayment, json, key);
        var second = await AcceptAsync(JobKinds.ChargePayment, json, key);

        Assert.Equal(first.JobId, second.JobId);
        await using var db = fixture.CreateDbContext();
        Assert.Equal(1, await db.Jobs.CountAsync());
        Assert.Equal(1, await db.Jobs.CountAsync(j => j.IdempotencyKey == key));
    }

    [Fact]
    public async Task Repeated_idempotency_key_with_another_body_is_a_422_problem()
    {
        var key = $"order-{Guid.NewGuid()}";
        var paymentId = Guid.NewGuid();
        var first = await AcceptAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId, amountMinor: 100), key);

        using var response = await _api.Client.PostJobAsync(
            JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId, amountMinor: 999), key);

        await response.AssertProblemAsync(StatusCodes.Status422UnprocessableEntity);
        await using var db = fixture.CreateDbContext();
        var row = await db.Jobs.AsNoTracking().SingleAsync();
        Assert.Equal(first.JobId, row.Id);
    }

    [Fact]
    public async Task Idempotency_key_reused_for_another_kind_is_a_422_problem()
    {
        var key = $"order-{Guid.NewGuid()}";
        await AcceptAsync(JobKinds.GenerateReport, JobRequests.GenerateReport(Guid.NewGuid()), key);

        using var response = await _api.Client.PostJobAsync(
            JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()), key);

        await response.AssertProblemAsync(StatusCodes.Status422UnprocessableEntity);
    }

    [Fact]
    public async Task Same_business_id_without_a_key_returns_the_existing_job()
    {
        var paymentId = Guid.NewGuid();

        var first = await AcceptAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId), $"k-{Guid.NewGuid()}");
        var again = await AcceptAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId));
        var otherKey = await AcceptAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId), $"k-{Guid.NewGuid()}");

        Assert.Equal(first.JobId, again.JobId);
        Assert.Equal(first.JobId, otherKey.JobId);
        await using var db = fixture.CreateDbContext();
        Assert.Equal(1, await db.Jobs.CountAsync(j => j.BusinessKey == paymentId.ToString("D")));
    }

    /// <summary>
    /// A key first sent with a job that existed already (same business id, same command) is answered
    /// with that job, so it names that job from then on, as a key that created its job does: another
    /// body under it is a 422, and the first request repeated still gets its job.
    /// </summary>
    [Fact]
    public async Task A_key_answered_with_an_existing_job_names_that_job_and_another_body_with_it_is_a_422_problem()
    {
        var paymentId = Guid.NewGuid();
        var existing = await AcceptAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId));
        var key = $"order-{Guid.NewGuid()}";
        var keyed = await AcceptAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId), key);
        Assert.Equal(existing.JobId, keyed.JobId);

        using var reused = await _api.Client.PostJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()), key);
        using var reusedScheduled = await _api.Client.PostJobAsync(
            JobKinds.ChargePayment, JobRequests.ScheduledChargePayment(Guid.NewGuid(), DateTimeOffset.UtcNow.AddHours(1)), key);

        await reused.AssertProblemAsync(StatusCodes.Status422UnprocessableEntity);
        await reusedScheduled.AssertProblemAsync(StatusCodes.Status422UnprocessableEntity);
        var repeated = await AcceptAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId), key);
        Assert.Equal(existing.JobId, repeated.JobId);
        await using var db = fixture.CreateDbContext();
        Assert.Equal(1, await db.Jobs.CountAsync());
        Assert.Equal(0, await db.ScheduledMessages.CountAsync());
    }

    [Fact]
    public async Task Same_business_id_with_another_command_is_a_422_problem_naming_the_field_and_the_job_stays_as_it_was()
    {
        var paymentId = Guid.NewGuid();
        var first = await AcceptAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId, amountMinor: 100), $"k-{Guid.NewGuid()}");

        foreach (var (json, key) in new[]
        {
            (JobRequests.ChargePayment(paymentId, amountMinor: 101), (string?)null),
            (JobRequests.ChargePayment(paymentId, amountMinor: 100, currency: "USD"), $"k-{Guid.NewGuid()}"),
        })
        {
            using var response = await _api.Client.PostJobAsync(JobKinds.ChargePayment, json, key);
            await response.AssertProblemAsync(StatusCodes.Status422UnprocessableEntity);
            var problem = await response.ReadJsonAsync();
            Assert.Equal("Business id reused", problem.GetProperty("title").GetString());
            Assert.Equal(
                $"paymentId: {paymentId:D} names job {first.JobId}, submitted with other content. A new job needs a new paymentId; the same content again gets that job.",
                problem.GetProperty("detail").GetString());
        }

        // The same command in other bytes is the same job, and a new paymentId a new one.
        Assert.Equal(first.JobId, (await AcceptAsync(JobKinds.ChargePayment, JobRequests.ChargePaymentReordered(paymentId, amountMinor: 100))).JobId);
        Assert.NotEqual(first.JobId, (await AcceptAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid(), amountMinor: 101))).JobId);
        await using var db = fixture.CreateDbContext();
        var job = await db.Jobs.AsNoTracking().SingleAsync(j => j.BusinessKey == paymentId.ToString("D"));
        Assert.Equal(first.JobId, job.Id);
        Assert.Equal(Conveyor.Storage.PayloadFingerprint.Length, job.PayloadHash?.Length);
    }

    [Fact]
    public async Task Same_webhook_id_with_the_payload_members_in_another_order_gets_the_same_job_and_another_value_is_a_422_problem()
    {
        // A client whose JSON library writes the payload again on a retry may order its members otherwise.
        var webhookId = Guid.NewGuid();
        string Webhook(string payload) =>
            $$"""{"webhookId":"{{webhookId}}","url":"https://hooks.example.com/orders","eventType":"order.paid","payload":{{payload}}}""";
        var first = await AcceptAsync(JobKinds.DeliverWebhook, Webhook("""{"orderId":42,"amount":12.5,"customer":{"tier":"gold","id":7}}"""));

        Assert.Equal(first.JobId, (await AcceptAsync(JobKinds.DeliverWebhook, Webhook("""{"customer":{"id":7,"tier":"gold"},"amount":12.5,"orderId":42}"""))).JobId);
        // Numbers keep their text: 12.50 is another payload.
        using var response = await _api.Client.PostJobAsync(JobKinds.DeliverWebhook, Webhook("""{"orderId":42,"amount":12.50,"customer":{"tier":"gold","id":7}}"""));
        await response.AssertProblemAsync(StatusCodes.Status422UnprocessableEntity);
        Assert.Equal("Business id reused", (await response.ReadJsonAsync()).GetProperty("title").GetString());
    }

    [Fact]
    public async Task A_job_row_an_older_Api_wrote_for_a_payload_out_of_name_order_answers_the_same_request_with_the_job()
    {
        // Before the fingerprint put object members in name order, it took them as they came; rows keep that.
        var webhookId = Guid.NewGuid();
        var json = $$$"""{"webhookId":"{{{webhookId}}}","url":"https://hooks.example.com/orders","eventType":"order.paid","payload":{"orderId":42,"amount":12.5}}""";
        var first = await AcceptAsync(JobKinds.DeliverWebhook, json);
        var command = new Conveyor.Contracts.Webhooks.DeliverWebhook
        {
            WebhookId = webhookId, Url = new Uri("https://hooks.example.com/orders"), EventType = "order.paid",
            Payload = JsonDocument.Parse("""{"orderId":42,"amount":12.5}""").RootElement.Clone(),
        };
        var legacy = LegacyFingerprints.Of(command);
        await using (var db = fixture.CreateDbContext())
        {
            Assert.NotEqual(legacy, (await db.Jobs.AsNoTracking().SingleAsync(j => j.Id == first.JobId)).PayloadHash);
            Assert.Equal(1, await db.Jobs.Where(j => j.Id == first.JobId).ExecuteUpdateAsync(s => s.SetProperty(j => j.PayloadHash, legacy)));
        }

        Assert.Equal(first.JobId, (await AcceptAsync(JobKinds.DeliverWebhook, json)).JobId);
    }

    [Fact]
    public async Task A_job_row_without_a_fingerprint_answers_any_command_under_its_business_id_with_the_job()
    {
        // Rows written by a worker for a direct publish, or before fingerprints were kept.
        var paymentId = Guid.NewGuid();
        var first = await AcceptAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId, amountMinor: 100));
        await using (var db = fixture.CreateDbContext())
        {
            Assert.Equal(1, await db.Jobs.Where(j => j.Id == first.JobId).ExecuteUpdateAsync(s => s.SetProperty(j => j.PayloadHash, (byte[]?)null)));
        }

        Assert.Equal(first.JobId, (await AcceptAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId, amountMinor: 999))).JobId);
    }

    [Fact]
    public async Task Concurrent_identical_requests_create_one_job()
    {
        var key = $"order-{Guid.NewGuid()}";
        var json = JobRequests.ChargePayment(Guid.NewGuid());

        var accepted = await Task.WhenAll(
            Enumerable.Range(0, 8).Select(_ => AcceptAsync(JobKinds.ChargePayment, json, key)));

        Assert.Single(accepted.Select(a => a.JobId).Distinct());
        await using var db = fixture.CreateDbContext();
        Assert.Equal(1, await db.Jobs.CountAsync());
    }

    [Fact]
    public async Task Concurrent_submissions_repeating_each_other_create_one_job_per_business_id_each_with_its_command_queued()
    {
        await using var published = await ChargePaymentProbe.BindAsync(fixture);

        // Ten payments, each sent four times at once: twice without a key, twice each with a key of its own.
        var submissions = Enumerable.Range(0, 10)
            .Select(_ => JobRequests.ChargePayment(Guid.NewGuid()))
            .SelectMany(json => new[] { (json, (string?)null), (json, null), (json, $"order-{Guid.NewGuid()}"), (json, $"order-{Guid.NewGuid()}") })
            .OrderBy(_ => Random.Shared.Next())
            .ToList();
        var accepted = await Task.WhenAll(submissions.Select(s => AcceptAsync(JobKinds.ChargePayment, s.Item1, s.Item2)));

        var jobsPerPayment = submissions.Zip(accepted).GroupBy(pair => pair.First.Item1, pair => pair.Second.JobId).ToList();
        Assert.All(jobsPerPayment, payment => Assert.Single(payment.Distinct()));
        Assert.Equal(10, jobsPerPayment.Select(p => p.First()).Distinct().Count());
        await using (var db = fixture.CreateDbContext())
        {
            Assert.Equal(10, await db.Jobs.CountAsync());
        }

        // Every 202 came after a publish of its job's command was confirmed, so the queue holds each
        // job by now. A repeat that came while the first request could still be publishing published
        // the command too (the inbox applies a job once), so there may be more than one per job.
        var queued = new List<Guid>();
        while (await published.Channel.BasicGetAsync(published.Queue, autoAck: true) is { } message)
        {
            queued.Add(Guid.Parse(Encoding.UTF8.GetString((byte[])message.BasicProperties.Headers![JobHeaders.JobId]!)));
        }

        Assert.Equal(accepted.Select(a => a.JobId).ToHashSet(), queued.ToHashSet());
        Assert.InRange(queued.Count, 10, submissions.Count);
    }

    [Fact]
    public async Task Repeating_a_request_whose_command_never_reached_the_broker_publishes_it_again()
    {
        await using var published = await ChargePaymentProbe.BindAsync(fixture);
        var key = $"order-{Guid.NewGuid()}";
        var json = JobRequests.ChargePayment(Guid.NewGuid());
        var first = await AcceptAsync(JobKinds.ChargePayment, json, key);

        // As if the Api had died between the row's commit and the publish: the row is queued, older
        // than any submission can take, and there is no command.
        await published.Channel.QueuePurgeAsync(published.Queue);
        await fixture.BackdateJobAsync(first.JobId, TimeSpan.FromMinutes(1));

        // The client repeats the request it got no answer for.
        var again = await AcceptAsync(JobKinds.ChargePayment, json, key);
        Assert.Equal(first.JobId, again.JobId);
        var republished = await published.Channel.BasicGetAsync(published.Queue, autoAck: true);
        Assert.NotNull(republished);
        Assert.Equal(first.JobId.ToString(), Encoding.UTF8.GetString((byte[])republished.BasicProperties.Headers![JobHeaders.JobId]!));
        Assert.Equal(0u, await published.Channel.MessageCountAsync(published.Queue));

        // The republish counts as the job's latest update: a repeat right after it publishes nothing more.
        await AcceptAsync(JobKinds.ChargePayment, json, key);
        Assert.Equal(0u, await published.Channel.MessageCountAsync(published.Queue));

        // The same business id without the key, byte for byte the same body, is the same repeat.
        await fixture.BackdateJobAsync(first.JobId, TimeSpan.FromMinutes(1));
        var withoutKey = await AcceptAsync(JobKinds.ChargePayment, json);
        Assert.Equal(first.JobId, withoutKey.JobId);
        Assert.Equal(1u, await published.Channel.MessageCountAsync(published.Queue));
        await using var db = fixture.CreateDbContext();
        Assert.Equal(1, await db.Jobs.CountAsync());
    }

    /// <summary>
    /// A repeat that publishes its job's command again, answered by an Api replica whose clock is two minutes behind,
    /// while a replica whose clock is right writes the job (here the test, as another repeat or the stranded-job check
    /// does, between the repeat's look at the row and its write): the job's <c>updatedAt</c> still only grows. Before,
    /// the repeat stamped it with its own clock, two minutes back.
    /// </summary>
    [Fact]
    public async Task A_repeat_republished_by_an_api_whose_clock_is_behind_keeps_the_jobs_updated_at_growing()
    {
        await using var behind = await fixture.StartApiAsync(
            configure: builder => builder.Services.AddSingleton<TimeProvider>(new SkewedClock(TimeSpan.FromMinutes(-2))));
        var json = JobRequests.ChargePayment(Guid.NewGuid());
        var first = await AcceptAsync(JobKinds.ChargePayment, json);
        // Older than a submission can take even by the clock behind: a repeat publishes the command again.
        await fixture.BackdateJobAsync(first.JobId, TimeSpan.FromMinutes(5));

        Task<HttpResponseMessage> repeat;
        DateTimeOffset written;
        await using (var held = await HeldJobRow.LockAsync(fixture, first.JobId))
        {
            repeat = behind.Client.PostJobAsync(JobKinds.ChargePayment, json);
            // The repeat's write waits for the row.
            await fixture.WaitForLockWaitersAsync(1);
            await using (var write = new NpgsqlCommand(
                "UPDATE jobs SET updated_at = GREATEST(updated_at + interval '1 microsecond', now()) WHERE id = $1 RETURNING updated_at", held.Connection, held.Transaction))
            {
                write.Parameters.AddWithValue(first.JobId);
                written = new DateTimeOffset((DateTime)(await write.ExecuteScalarAsync())!);
            }

            await held.CommitAsync();
        }

        using (var response = await repeat)
        {
            Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        }

        var after = await _api.Client.GetJobAsync(first.JobId);
        Assert.True(after.UpdatedAt > written, $"updated {written:O} by the other writer, then {after.UpdatedAt:O}");
    }

    [Fact]
    public async Task Repeats_after_the_first_requests_time_that_are_not_the_same_request_or_find_the_job_moving_publish_nothing()
    {
        await using var published = await ChargePaymentProbe.BindAsync(fixture);
        var paymentId = Guid.NewGuid();
        var first = await AcceptAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId, amountMinor: 100));
        await published.Channel.QueuePurgeAsync(published.Queue);

        // Within the first request's time it may still be publishing, and would remove the row if that
        // failed: a repeat, even in another body, publishes the job's stored command itself before its 202.
        var early = await AcceptAsync(JobKinds.ChargePayment, JobRequests.ChargePaymentReordered(paymentId, amountMinor: 100));
        Assert.Equal(first.JobId, early.JobId);
        var command = await published.Channel.BasicGetAsync(published.Queue, autoAck: true);
        Assert.NotNull(command);
        using (var envelope = JsonDocument.Parse(command.Body))
        {
            Assert.Equal(100, envelope.RootElement.GetProperty("message").GetProperty("amountMinor").GetInt64());
        }

        Assert.Equal(0u, await published.Channel.MessageCountAsync(published.Queue));

        // Another body with the same command: whether this client got an answer before is not known, so it gets the job and publishes nothing.
        await fixture.BackdateJobAsync(first.JobId, TimeSpan.FromMinutes(1));
        var other = await AcceptAsync(JobKinds.ChargePayment, JobRequests.ChargePaymentReordered(paymentId, amountMinor: 100));
        Assert.Equal(first.JobId, other.JobId);
        Assert.Equal(0u, await published.Channel.MessageCountAsync(published.Queue));

        // Another command under the same business id is refused, early or late (ADR 0011).
        using (var conflicting = await _api.Client.PostJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId, amountMinor: 999)))
        {
            await conflicting.AssertProblemAsync(StatusCodes.Status422UnprocessableEntity);
        }

        Assert.Equal(0u, await published.Channel.MessageCountAsync(published.Queue));

        // A worker has taken it: its command did arrive.
        await using (var db = fixture.CreateDbContext())
        {
            await db.Jobs.Where(j => j.Id == first.JobId).ExecuteUpdateAsync(s => s.SetProperty(j => j.Status, JobStatus.Running));
        }

        await AcceptAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId, amountMinor: 100));
        Assert.Equal(0u, await published.Channel.MessageCountAsync(published.Queue));
    }

    [Fact]
    public async Task Repeated_scheduled_submission_returns_the_same_job_and_stores_one_command()
    {
        var key = $"order-{Guid.NewGuid()}";
        var json = JobRequests.ScheduledChargePayment(Guid.NewGuid(), DateTimeOffset.UtcNow.AddHours(1));

        var first = await AcceptAsync(JobKinds.ChargePayment, json, key);
        var again = await AcceptAsync(JobKinds.ChargePayment, json, key);
        var withoutKey = await AcceptAsync(JobKinds.ChargePayment, json);

        Assert.Equal(first.JobId, again.JobId);
        Assert.Equal(first.JobId, withoutKey.JobId);
        Assert.Equal(JobStatus.Scheduled, again.Status);
        await using var db = fixture.CreateDbContext();
        Assert.Equal(1, await db.Jobs.CountAsync());
        Assert.Equal(1, await db.ScheduledMessages.CountAsync());
    }

    private async Task<JobAccepted> AcceptAsync(string kind, string json, string? idempotencyKey = null)
    {
        using var response = await _api.Client.PostJobAsync(kind, json, idempotencyKey);
        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        var accepted = await response.Content.ReadFromJsonAsync<JobAccepted>();
        Assert.NotNull(accepted);
        return accepted;
    }
}
