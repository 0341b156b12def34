using Conveyor.Contracts;
using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.Http;
using Npgsql;
using System.Net;
using System.Net.Sockets;

namespace Conveyor.Tests.Api;

/// <summary>
/// The job-row writer (group commit) on the real database: which failures to write a row are an
/// unavailable database (503) and which are not (500).
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class JobRowsTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    /// <summary>A row the database refuses (here a CHECK constraint) is a fault, not an outage: 500, no Retry-After.</summary>
    [Fact]
    public async Task A_job_row_the_database_refuses_is_a_500_not_a_503()
    {
        await using var api = await fixture.StartApiAsync();
        await using var admin = await OpenAsync();
        await ExecuteAsync(admin, $"ALTER TABLE jobs ADD CONSTRAINT test_no_reports CHECK (kind <> '{JobKinds.GenerateReport}')");
        try
        {
            using var single = await api.Client.PostJobAsync(JobKinds.GenerateReport, JobRequests.GenerateReport(Guid.NewGuid()));
            await single.AssertProblemAsync(StatusCodes.Status500InternalServerError);
            Assert.Null(single.Headers.RetryAfter);

            using var batch = await JobBatchTests.PostBatchAsync(api, JobKinds.GenerateReport,
                JobBatchTests.Batch([JobRequests.GenerateReport(Guid.NewGuid()), JobRequests.GenerateReport(Guid.NewGuid())]));
            await batch.AssertProblemAsync(StatusCodes.Status500InternalServerError);

            // Other kinds are untouched.
            await api.Client.AcceptJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(Guid.NewGuid()));
        }
        finally
        {
            await ExecuteAsync(admin, "ALTER TABLE jobs DROP CONSTRAINT test_no_reports");
        }
    }

    /// <summary>A database that cannot be reached is still an outage: 503 with Retry-After.</summary>
    [Fact]
    public async Task A_job_row_the_database_cannot_be_reached_for_is_a_503()
    {
        // A loopback port nothing listens on: connections are refused.
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        var closedPort = ((IPEndPoint)listener.LocalEndpoint).Port;
        listener.Stop();
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings:Conveyor"] = new NpgsqlConnectionStringBuilder(fixture.ConnectionString) { Host = "127.0.0.1", Port = closedPort }.ConnectionString,
        });

        using var response = await api.Client.PostJobAsync(JobKinds.GenerateReport, JobRequests.GenerateReport(Guid.NewGuid()));

        await response.AssertProblemAsync(StatusCodes.Status503ServiceUnavailable);
        Assert.NotNull(response.Headers.RetryAfter);
    }

    private async Task<NpgsqlConnection> OpenAsync()
    {
        var connection = new NpgsqlConnection(fixture.ConnectionString);
        await connection.OpenAsync();
        return connection;
    }

    private static async Task ExecuteAsync(NpgsqlConnection connection, string sql)
    {
        await using var command = new NpgsqlCommand(sql, connection);
        await command.ExecuteNonQueryAsync();
    }
}
