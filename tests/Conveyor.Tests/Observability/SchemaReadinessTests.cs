using System.Net;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;
using Microsoft.EntityFrameworkCore.Infrastructure;
using Microsoft.EntityFrameworkCore.Migrations;

namespace Conveyor.Tests.Observability;

/// <summary>
/// A pod whose database schema is behind its code (started before its migration Job ran) is not
/// ready: Kubernetes sends it no traffic and a rollout waits, instead of a ready Api answering 503 to
/// every submission. It gets ready by itself once the migrations are applied.
/// </summary>
[Collection(ConveyorCollection.Name)]
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
}
