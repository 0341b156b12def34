using Conveyor.Api.Jobs;
using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;
using System.Globalization;
using System.Net;
using System.Net.Http.Json;
using System.Text.Json;

namespace Conveyor.Tests.Api;

/// <summary>
/// <c>runAt</c> written with an offset other than UTC's, as the README shows it
/// (<c>2030-01-31T10:30:00+01:00</c>): the job is scheduled for the same instant, stored in UTC
/// (PostgreSQL's timestamptz takes nothing else). No worker runs: the jobs are an hour ahead.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class RunAtOffsetTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Theory]
    [InlineData("+01:00")]
    [InlineData("-05:30")]
    public async Task A_job_with_a_runAt_offset_is_scheduled_for_the_same_instant(string offset)
    {
        await using var api = await fixture.StartApiAsync();
        var (runAt, text) = AnHourAhead(offset);

        var accepted = await api.Client.AcceptJobAsync(JobKinds.GenerateReport, ScheduledReport(Guid.NewGuid(), text));

        Assert.Equal(JobStatus.Scheduled, accepted.Status);
        Assert.Equal(runAt, (await api.Client.GetJobAsync(accepted.JobId)).NextAttemptAt);
        await AssertScheduledAtAsync(accepted.JobId, runAt);
    }

    [Fact]
    public async Task A_batch_with_runAt_offsets_schedules_each_job_for_its_instant()
    {
        await using var api = await fixture.StartApiAsync();
        var (runAt, text) = AnHourAhead("+01:00");
        var (later, laterText) = AnHourAhead("-08:00", runAt.AddMinutes(5));

        using var response = await JobBatchTests.PostBatchAsync(api, JobKinds.GenerateReport,
            JobBatchTests.Batch([ScheduledReport(Guid.NewGuid(), text), ScheduledReport(Guid.NewGuid(), laterText)]));

        Assert.True(response.StatusCode == HttpStatusCode.Accepted, $"{(int)response.StatusCode}: {await response.Content.ReadAsStringAsync()}");
        var answer = await response.Content.ReadFromJsonAsync<JobBatchAccepted>();
        Assert.NotNull(answer);
        Assert.All(answer.Jobs, job => Assert.Equal(JobStatus.Scheduled, job.Status));
        await AssertScheduledAtAsync(answer.Jobs[0].JobId!.Value, runAt);
        await AssertScheduledAtAsync(answer.Jobs[1].JobId!.Value, later);
    }

    /// <summary>An instant in whole seconds (so that text and row compare exactly), and how a client in <paramref name="offset"/> writes it.</summary>
    private static (DateTimeOffset Instant, string Text) AnHourAhead(string offset, DateTimeOffset? instant = null)
    {
        var at = instant ?? DateTimeOffset.UtcNow.AddHours(1);
        at = new DateTimeOffset(at.UtcTicks - (at.UtcTicks % TimeSpan.TicksPerSecond), TimeSpan.Zero);
        var local = at.ToOffset(TimeSpan.Parse(offset.TrimStart('+'), CultureInfo.InvariantCulture));
        var text = local.ToString("yyyy-MM-dd'T'HH:mm:sszzz", CultureInfo.InvariantCulture);
        Assert.EndsWith(offset, text, StringComparison.Ordinal);
        return (at, text);
    }

    private static string ScheduledReport(Guid reportId, string runAt) =>
        JsonSerializer.Serialize(new { reportId, currency = "USD", pageSize = 500, runAt });

    /// <summary>The job's row and its stored command are due at <paramref name="runAt"/>.</summary>
    private async Task AssertScheduledAtAsync(Guid jobId, DateTimeOffset runAt)
    {
        await using var db = fixture.CreateDbContext();
        var job = await db.Jobs.AsNoTracking().SingleAsync(j => j.Id == jobId);
        Assert.Equal(runAt, job.NextAttemptAt);
        var dedupeKey = $"job:{jobId}";
        var message = await db.ScheduledMessages.AsNoTracking().SingleAsync(m => m.DedupeKey == dedupeKey);
        Assert.Equal(runAt, message.DueAt);
    }
}
