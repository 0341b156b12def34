using System.Net;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;
using Microsoft.EntityFrameworkCore.Infrastructure;
using Microsoft.EntityFrameworkCore.Migrations;
using Npgsql;

namespace Conveyor.Tests.Observability;

/// <summary>
/// A pod whose database schema is behind its code (started before its migration Job ran) is not
/// ready: Kubernetes sends it no traffic and a rollout waits, instead of a ready Api answering 503 to
/// every submission. It gets ready by itself once the migrations are applied. While a migration runs
/// (EF Core holds the migrations history locked for its whole length), a pod that has seen its schema
/// stays ready and one that has not stays unready, each saying why, instead of every probe timing out.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class SchemaReadinessTests(ConveyorFixture fixture) : ScratchDatabaseTest(fixture, "behind")
{
    private string ConnectionString => Database.ConnectionString;

    [Fact]
    public async Task An_api_one_migration_ahead_of_its_database_is_unready_naming_it_until_the_migration_runs()
    {
        List<string> migrations;
        await using (var db = Database.CreateDbContext())
        {
            migrations = [.. db.Database.GetMigrations()];
            await db.Database.GetService<IMigrator>().MigrateAsync(migrations[^2]);
        }

        await using var api = await Fixture.StartApiAsync(new Dictionary<string, string?> { ["ConnectionStrings:Conveyor"] = ConnectionString });
        await Eventually.AssertAsync(async () =>
        {
            var (status, checks) = await BrokerOutageSignalsTests.ReadinessAsync(api);
            Assert.Equal(HttpStatusCode.ServiceUnavailable, status);
            var database = checks.GetProperty("database");
            Assert.Equal("Unhealthy", database.GetProperty("status").GetString());
            var description = database.GetProperty("description").GetString();
            Assert.Contains($"needs migration {migrations[^1]}", description, StringComparison.Ordinal);
            Assert.Contains($"the newest applied is {migrations[^2]}", description, StringComparison.Ordinal);
        }, TimeSpan.FromSeconds(30));

        await using (var db = Database.CreateDbContext())
        {
            await db.Database.MigrateAsync();
        }

        await Eventually.AssertAsync(async () =>
        {
            var (status, checks) = await BrokerOutageSignalsTests.ReadinessAsync(api);
            Assert.Equal("Healthy", checks.GetProperty("database").GetProperty("status").GetString());
            Assert.True(status == HttpStatusCode.OK, checks.ToString());
        }, TimeSpan.FromSeconds(30));
    }

    [Fact]
    public async Task An_api_on_a_database_never_migrated_is_unready_and_says_so()
    {
        await using var api = await Fixture.StartApiAsync(new Dictionary<string, string?> { ["ConnectionStrings:Conveyor"] = ConnectionString });
        await Eventually.AssertAsync(async () =>
        {
            var (status, checks) = await BrokerOutageSignalsTests.ReadinessAsync(api);
            Assert.Equal(HttpStatusCode.ServiceUnavailable, status);
            Assert.Contains("the newest applied is none", checks.GetProperty("database").GetProperty("description").GetString(), StringComparison.Ordinal);
        }, TimeSpan.FromSeconds(30));
    }

    [Fact]
    public async Task While_a_migration_holds_the_history_a_ready_api_stays_ready_and_a_new_one_waits_saying_why()
    {
        await using (var db = Database.CreateDbContext())
        {
            await db.Database.MigrateAsync();
        }

        await using var ready = await Fixture.StartApiAsync(new Dictionary<string, string?> { ["ConnectionStrings:Conveyor"] = ConnectionString });
        await Eventually.AssertAsync(async () =>
        {
            var (status, checks) = await BrokerOutageSignalsTests.ReadinessAsync(ready);
            Assert.True(status == HttpStatusCode.OK, checks.ToString());
        }, TimeSpan.FromSeconds(30));

        // What EF Core's migrator does for as long as it runs: the history locked in its transaction.
        await using var migration = new NpgsqlConnection(ConnectionString);
        await migration.OpenAsync();
        await using var transaction = await migration.BeginTransactionAsync();
        await using (var lockHistory = new NpgsqlCommand("LOCK TABLE __ef_migrations_history IN ACCESS EXCLUSIVE MODE", migration, transaction))
        {
            await lockHistory.ExecuteNonQueryAsync();
        }

        await using var starting = await Fixture.StartApiAsync(new Dictionary<string, string?> { ["ConnectionStrings:Conveyor"] = ConnectionString });
        for (var probe = 0; probe < 3; probe++)
        {
            // The database check is what the migration could turn unready; the broker's readings are another
            // check, which a busy machine's slow management API can hold up for a few seconds on its own.
            var (_, checks) = await BrokerOutageSignalsTests.ReadinessAsync(ready);
            var database = checks.GetProperty("database");
            Assert.True(database.GetProperty("status").GetString() == "Healthy", checks.ToString());
            Assert.Contains("a migration is running", database.GetProperty("description").GetString(), StringComparison.Ordinal);
        }

        await Eventually.AssertAsync(async () =>
        {
            var (status, checks) = await BrokerOutageSignalsTests.ReadinessAsync(starting);
            Assert.Equal(HttpStatusCode.ServiceUnavailable, status);
            var database = checks.GetProperty("database");
            Assert.Equal("Unhealthy", database.GetProperty("status").GetString());
            Assert.StartsWith("A migration is running", database.GetProperty("description").GetString(), StringComparison.Ordinal);
        }, TimeSpan.FromSeconds(30));

        await transaction.RollbackAsync();
        await Eventually.AssertAsync(async () =>
        {
            var (status, checks) = await BrokerOutageSignalsTests.ReadinessAsync(starting);
            Assert.True(status == HttpStatusCode.OK, checks.ToString());
        }, TimeSpan.FromSeconds(30));
    }
}
