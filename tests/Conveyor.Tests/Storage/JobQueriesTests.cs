using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;
using System.Reflection;

namespace Conveyor.Tests.Storage;

[Collection(ThirdLaneCollection.Name)]
public sealed class JobQueriesTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    /// <summary>
    /// The index that every read by time goes through holds only the statuses it lists (ADR 0010): a
    /// status added later but not to <see cref="JobStatus.All"/> and to the index, by a migration,
    /// would leave its jobs out of every listing and every retention sweep.
    /// </summary>
    [Fact]
    public async Task Every_status_is_in_the_index_that_reads_by_time()
    {
        var constants = typeof(JobStatus).GetFields(BindingFlags.Public | BindingFlags.Static)
            .Where(f => f.IsLiteral).Select(f => (string)f.GetRawConstantValue()!);
        Assert.Equal(constants.Order(StringComparer.Ordinal), JobStatus.All.Order(StringComparer.Ordinal));

        await using var db = fixture.CreateDbContext();
        var definition = await db.Database.SqlQuery<string>(
            $"SELECT indexdef AS \"Value\" FROM pg_indexes WHERE tablename = 'jobs' AND indexname = 'ix_jobs_kind_status_created_at_id'").SingleAsync();
        Assert.All(JobStatus.All, status => Assert.Contains($"'{status}'", definition, StringComparison.Ordinal));
    }

    /// <summary>
    /// <see cref="JobQueries.WithoutRequestBody"/> lists the columns it reads by hand: a column added to
    /// <see cref="Job"/> later and forgotten there would read as its default in every listing. Every
    /// mapped property gets a value that is not its default, and each must come back.
    /// </summary>
    [Fact]
    public async Task Reading_without_the_request_body_returns_every_other_column()
    {
        await using var db = fixture.CreateDbContext();
        var properties = db.Model.FindEntityType(typeof(Job))!.GetProperties().Select(p => p.PropertyInfo!).ToList();
        var job = new Job { Kind = "charge-payment", BusinessKey = "k", Status = JobStatus.Queued };
        foreach (var property in properties)
        {
            property.SetValue(job, NonDefaultValue(property.PropertyType, property.Name));
        }

        db.Jobs.Add(job);
        await db.SaveChangesAsync();

        await using var read = fixture.CreateDbContext();
        var found = await read.Jobs.WithoutRequestBody().SingleAsync(j => j.Id == job.Id);

        Assert.Null(found.RequestBody);
        Assert.All(properties.Where(p => p.Name != nameof(Job.RequestBody)), property =>
            Assert.True(Same(property.GetValue(job), property.GetValue(found)), $"{property.Name} was not read"));
    }

    private static bool Same(object? written, object? read) =>
        written is byte[] bytes ? read is byte[] other && bytes.AsSpan().SequenceEqual(other) : Equals(written, read);

    private static object NonDefaultValue(Type type, string name) => (Nullable.GetUnderlyingType(type) ?? type) switch
    {
        var t when t == typeof(Guid) => Guid.CreateVersion7(),
        var t when t == typeof(string) => name == nameof(Job.Status) ? JobStatus.Running : $"value-of-{name}",
        var t when t == typeof(int) => 7,
        var t when t == typeof(long) => 7L,
        var t when t == typeof(byte[]) => new byte[] { 1, 2, 3 },
        // Whole milliseconds: PostgreSQL keeps microseconds, .NET ticks are finer.
        var t when t == typeof(DateTimeOffset) => new DateTimeOffset(2026, 11, 29, 10, 0, 0, TimeSpan.Zero).AddMinutes(name.Length),
        _ => throw new InvalidOperationException($"Job.{name} has a type this test cannot fill yet ({type}); add it here."),
    };
}
