using System.Net;
using Conveyor.ServiceDefaults;
using Conveyor.Tests.Api;
using Conveyor.Tests.Infrastructure;
using Microsoft.Extensions.Logging;
using Npgsql;

namespace Conveyor.Tests.Observability;

/// <summary>
/// A readiness answer that fails on the database says why, without the password, and a failing probe
/// logs one warning when the state changes, not an error per probe.
/// </summary>
[Collection(ConveyorCollection.Name)]
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
            connection.Port = BrokerUnavailableTests.ClosedPort();
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
}
