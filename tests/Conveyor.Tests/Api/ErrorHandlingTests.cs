using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;

namespace Conveyor.Tests.Api;

[Collection(ConveyorCollection.Name)]
public sealed class ErrorHandlingTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string FailingPath = "/api/failing-for-the-test";

    /// <summary>Words of the failure's message that no answer may show.</summary>
    private const string Internals = "Npgsql internal detail Host=db.internal;Password=secret";

    private RunningApp _api = null!;

    public async Task InitializeAsync() =>
        // A failure no code path expects (a bug), behind the Api's own exception handling: a
        // middleware at the end of its pipeline, which only requests no endpoint takes reach.
        _api = await fixture.StartApiAsync(configure: builder => builder.Services.AddSingleton<IStartupFilter>(new FailingPathFilter()));

    public async Task DisposeAsync() => await _api.DisposeAsync();

    [Fact]
    public async Task Unexpected_failure_is_a_500_problem_that_shows_no_internals()
    {
        using var response = await _api.Client.GetAsync(new Uri(FailingPath, UriKind.Relative));

        await response.AssertProblemAsync(StatusCodes.Status500InternalServerError);
        var body = await response.Content.ReadAsStringAsync();
        Assert.DoesNotContain("Npgsql", body, StringComparison.OrdinalIgnoreCase);
        Assert.DoesNotContain("Password", body, StringComparison.OrdinalIgnoreCase);
        Assert.DoesNotContain(nameof(InvalidOperationException), body, StringComparison.Ordinal);
        Assert.DoesNotContain(" at ", body, StringComparison.Ordinal);
    }

    private sealed class FailingPathFilter : IStartupFilter
    {
        public Action<IApplicationBuilder> Configure(Action<IApplicationBuilder> next) => app =>
        {
            next(app);
            app.Use((HttpContext context, RequestDelegate rest) => context.Request.Path == FailingPath
                ? throw new InvalidOperationException(Internals)
                : rest(context));
        };
    }
}
