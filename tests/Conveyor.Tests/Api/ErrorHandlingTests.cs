using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.Http;
using Npgsql;

namespace Conveyor.Tests.Api;

[Collection(ConveyorCollection.Name)]
public sealed class ErrorHandlingTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private RunningApp _api = null!;

    public async Task InitializeAsync()
    {
        var missingDatabase = new NpgsqlConnectionStringBuilder(fixture.ConnectionString) { Database = "conveyor_no_such_database" };
        _api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings:Conveyor"] = missingDatabase.ConnectionString,
        });
    }

    public async Task DisposeAsync() => await _api.DisposeAsync();

    [Fact]
    public async Task Unexpected_failure_is_a_500_problem_that_shows_no_internals()
    {
        using var response = await _api.Client.GetAsync(new Uri($"/api/jobs/{Guid.NewGuid()}", UriKind.Relative));

        await response.AssertProblemAsync(StatusCodes.Status500InternalServerError);
        var body = await response.Content.ReadAsStringAsync();
        Assert.DoesNotContain("Npgsql", body, StringComparison.OrdinalIgnoreCase);
        Assert.DoesNotContain(" at ", body, StringComparison.Ordinal);
        Assert.DoesNotContain("conveyor_no_such_database", body, StringComparison.Ordinal);
    }
}
