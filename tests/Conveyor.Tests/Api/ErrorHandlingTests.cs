using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.Http;
using Npgsql;

namespace Conveyor.Tests.Api;

[Collection(ConveyorCollection.Name)]
public sealed class ErrorHandlingTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private RunningApp _api = null!;

    // A database that exists without the schema: every query fails (42P01 undefined_table) on a server
    // that answers, a bug rather than an outage. A missing database or a refused login would be a 503.
    private string EmptyDatabase => $"{fixture.DatabaseName}_no_schema";

    public async Task InitializeAsync()
    {
        await ExecuteAsync($"CREATE DATABASE \"{EmptyDatabase}\"");
        var emptyDatabase = new NpgsqlConnectionStringBuilder(fixture.ConnectionString) { Database = EmptyDatabase };
        _api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings:Conveyor"] = emptyDatabase.ConnectionString,
        });
    }

    public async Task DisposeAsync()
    {
        await _api.DisposeAsync();
        await ExecuteAsync($"DROP DATABASE IF EXISTS \"{EmptyDatabase}\" WITH (FORCE)");
    }

    [Fact]
    public async Task Unexpected_failure_is_a_500_problem_that_shows_no_internals()
    {
        using var response = await _api.Client.GetAsync(new Uri($"/api/jobs/{Guid.NewGuid()}", UriKind.Relative));

        await response.AssertProblemAsync(StatusCodes.Status500InternalServerError);
        var body = await response.Content.ReadAsStringAsync();
        Assert.DoesNotContain("Npgsql", body, StringComparison.OrdinalIgnoreCase);
        Assert.DoesNotContain(" at ", body, StringComparison.Ordinal);
        Assert.DoesNotContain(EmptyDatabase, body, StringComparison.Ordinal);
    }

    private async Task ExecuteAsync(string sql)
    {
        await using var connection = new NpgsqlConnection(fixture.ConnectionString);
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand(sql, connection);
        await command.ExecuteNonQueryAsync();
    }
}
