using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.ErrorQueues;

/// <summary>
/// The database refuses an operation's result: the operation must not read "running" until it is taken
/// for abandoned, but end at once as failed, saying why, with its counts.
/// </summary>
[Collection(SecondLaneCollection.Name)]
public sealed class UnsavedResultTests(ConveyorFixture fixture) : ErrorQueueApiSession(fixture)
{

    [Fact]
    public async Task An_operation_whose_result_the_database_refuses_ends_failed_with_the_reason_and_its_counts()
    {
        await Broker.DeadLetterChargeAsync("System.TimeoutException", "timed out");
        await using var db = Fixture.CreateDbContext();
        // Refuses the result's own state (progress keeps it running; the fallback after a refusal writes failed).
        await db.Database.ExecuteSqlRawAsync("""
            CREATE FUNCTION test_refuse_result() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF NEW.state NOT IN ('running', 'failed') THEN RAISE EXCEPTION 'test refuses the result'; END IF;
              RETURN NEW;
            END $$;
            CREATE TRIGGER test_refuse_result BEFORE UPDATE ON error_queue_operations
              FOR EACH ROW EXECUTE FUNCTION test_refuse_result();
            """);
        try
        {
            // Well short of the 30 s after which a row stuck as running reads interrupted.
            var operation = await Admin.RunOperationAsync(
                $"/api/error-queues/{ErrorQueueKit.ChargeErrors}/move", new { dryRun = true }, TimeSpan.FromSeconds(20));

            Assert.Equal("failed", operation.GetProperty("state").GetString());
            var detail = operation.GetProperty("detail").GetString();
            Assert.Contains("could not be recorded", detail, StringComparison.Ordinal);
            Assert.Contains("test refuses the result", detail, StringComparison.Ordinal);
            Assert.Equal((1, 1), (operation.GetProperty("examined").GetInt64(), operation.GetProperty("matched").GetInt64()));
            // Its ids may not all have been recorded.
            Assert.True(operation.GetProperty("messageIdsTruncated").GetBoolean());
            Assert.Equal(1u, await Broker.CountAsync(ErrorQueueKit.ChargeErrors));
        }
        finally
        {
            await db.Database.ExecuteSqlRawAsync("""
                DROP TRIGGER IF EXISTS test_refuse_result ON error_queue_operations;
                DROP FUNCTION IF EXISTS test_refuse_result();
                """);
        }
    }
}
