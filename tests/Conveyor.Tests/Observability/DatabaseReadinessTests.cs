using System.Net;
using Conveyor.ServiceDefaults;
using Conveyor.Tests.Infrastructure;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace Conveyor.Tests.Observability;

/// <summary>
/// A readiness answer that fails on the database says why, without the password, and a failing probe
/// logs one warning when the state changes, not an error per probe.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class DatabaseReadinessTests(ConveyorFixture fixture)
{
    private const string Password = "not-the-password-7d1e";

    public static TheoryData<string, string> Failures => new()
    {
        // Nothing listens: Npgsql's "Failed to connect to ..." over the socket error.
        { "closed port", "Connection refused" },
        // PostgreSQL answers and refuses the credentials.
        { "wrong password", "password authentication failed" },
    };

    [Theory]
    [MemberData(nameof(Failures))]
    public async Task Readiness_names_the_database_failure_without_the_password(string failure, string reason)
    {
        var connection = new NpgsqlConnectionStringBuilder(fixture.ConnectionString) { Password = Password };
        if (failure == "closed port")
        {
            connection.Port = ClosedPort.Number;
        }

        var logs = new CapturedLogs();
        await using var api = await fixture.StartApiAsync(
            new Dictionary<string, string?> { ["ConnectionStrings:Conveyor"] = connection.ConnectionString },
            builder => builder.Logging.AddProvider(logs));

        for (var probe = 0; probe < 3; probe++)
        {
            var (status, checks) = await BrokerOutageSignalsTests.ReadinessAsync(api);
            Assert.Equal(HttpStatusCode.ServiceUnavailable, status);
            var database = checks.GetProperty("database");
            Assert.Equal("Unhealthy", database.GetProperty("status").GetString());
            var description = database.GetProperty("description").GetString();
            Assert.NotNull(description);
            Assert.Contains(reason, description, StringComparison.Ordinal);
            Assert.DoesNotContain(Password, description, StringComparison.Ordinal);
            Assert.InRange(description.Length, 1, HealthReasons.MaxLength);
        }

        // Three failing probes, one line: the change of state, with the reason.
        var warnings = logs.Of(LogLevel.Warning, "Conveyor.ServiceDefaults.HealthTransitions").Where(e => e.Message.Contains("database", StringComparison.Ordinal)).ToList();
        var line = Assert.Single(warnings);
        Assert.Contains(reason, line.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(Password, line.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_database_that_stops_answering_makes_readiness_answer_503_with_the_reason_not_hang()
    {
        var server = new NpgsqlConnectionStringBuilder(fixture.ConnectionString);
        await using var proxy = await OutageProxy.ToAsync(server.Host!, server.Port);
        var connection = new NpgsqlConnectionStringBuilder(fixture.ConnectionString) { Host = "127.0.0.1", Port = proxy.Port };
        var logs = new CapturedLogs();
        await using var api = await fixture.StartApiAsync(
            new Dictionary<string, string?> { ["ConnectionStrings:Conveyor"] = connection.ConnectionString },
            builder => builder.Logging.AddProvider(logs));
        await Eventually.AssertAsync(async () => Assert.Equal(HttpStatusCode.OK, (await BrokerOutageSignalsTests.ReadinessAsync(api)).Status));

        // Connections stay open and nothing answers: a failover in progress, a network dropping packets.
        proxy.Stall();
        try
        {
            // Bounded far above the check's own limit: without it the probe waited for Npgsql's timeouts.
            var (status, checks) = await BrokerOutageSignalsTests.ReadinessAsync(api).WaitAsync(TimeSpan.FromSeconds(10));

            Assert.Equal(HttpStatusCode.ServiceUnavailable, status);
            var database = checks.GetProperty("database");
            Assert.Equal("Unhealthy", database.GetProperty("status").GetString());
            Assert.StartsWith("No answer within 1.5 s", database.GetProperty("description").GetString(), StringComparison.Ordinal);
            var warning = Assert.Single(logs.Of(LogLevel.Warning, "Conveyor.ServiceDefaults.HealthTransitions"),
                e => e.Message.Contains("database", StringComparison.Ordinal));
            Assert.Contains("No answer within", warning.Message, StringComparison.Ordinal);
        }
        finally
        {
            proxy.Resume();
        }
    }
}
