using Conveyor.Storage;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Failures;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Storage;

/// <summary>How failures the real server raises are classified.</summary>
[Collection(ConveyorCollection.Name)]
public sealed class DatabaseFailuresTests(ConveyorFixture fixture)
{
    [Fact]
    public async Task A_statement_stopped_by_statement_timeout_is_retried_within_the_budget_not_waited_out_as_an_outage()
    {
        await using var db = fixture.CreateDbContext();
        await using var transaction = await db.Database.BeginTransactionAsync();
        await db.Database.ExecuteSqlRawAsync("SET LOCAL statement_timeout = 50");

        var failure = await Assert.ThrowsAnyAsync<Exception>(() => db.Database.ExecuteSqlRawAsync("SELECT pg_sleep(5)"));

        // Requeued as "database unavailable", a query that is always too slow would go round forever
        // with its retry budget untouched; as a transient failure it is retried, then dead-lettered.
        Assert.True(DatabaseFailures.IsQueryCanceled(failure), failure.ToString());
        Assert.False(DatabaseFailures.IsUnavailable(failure), failure.ToString());
        Assert.True(FailureClassifier.IsTransient(failure));
    }
}
