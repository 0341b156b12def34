using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.Worker;

/// <summary>A connection string no connection could be opened with stops the worker and the Api at start, naming the setting.</summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class ConnectionStringTests(ConveyorFixture fixture)
{
    [Theory]
    [InlineData("", "is empty")]
    [InlineData("   ", "is empty")]
    [InlineData("Database=conveyor;Username=conveyor", "names no Host")]
    [InlineData("this is no connection string", "is not a valid Npgsql connection string")]
    // Each keyword parses alone; Npgsql refuses the combination only when a connection is opened, so the
    // worker ran unready for good, its readiness saying why only as a database failure.
    [InlineData("Host=127.0.0.1;Minimum Pool Size=50;Maximum Pool Size=10", "is not a valid Npgsql connection string")]
    [InlineData("Host=127.0.0.1;Maximum Pool Size=0", "is not a valid Npgsql connection string")]
    public async Task The_worker_refuses_to_start(string connectionString, string reason)
    {
        var settings = WorkerSettings.With().Override(("ConnectionStrings:Conveyor", connectionString));

        var failure = await Assert.ThrowsAnyAsync<Exception>(async () => await fixture.StartWorkerAsync(settings));

        Assert.Contains($"ConnectionStrings:Conveyor (env ConnectionStrings__Conveyor) {reason}", failure.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("")]
    [InlineData("Database=conveyor;Username=conveyor")]
    [InlineData("Host=127.0.0.1;Minimum Pool Size=50;Maximum Pool Size=10")]
    public async Task The_api_refuses_to_start(string connectionString)
    {
        var failure = await Assert.ThrowsAnyAsync<Exception>(async () => await fixture.StartApiAsync(
            new Dictionary<string, string?> { ["ConnectionStrings:Conveyor"] = connectionString }));

        Assert.Contains("ConnectionStrings:Conveyor", failure.Message, StringComparison.Ordinal);
    }
}
