using System.Net;
using Conveyor.Api.Security;
using Conveyor.Tests.Infrastructure;
using Microsoft.Extensions.Logging;

namespace Conveyor.Tests.Security;

/// <summary>
/// Unknown keys are not logged one by one (ADR 0003 decision 11), even where the log level lets
/// Information through: anonymous clients must not be able to write the log at request rate. A lockout
/// is still logged, once.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class UnknownKeyLogTests(ConveyorFixture fixture)
{
    private const string WrongKey = "not-a-configured-key-0123456789abcdef";

    [Fact]
    public async Task Unknown_keys_write_no_information_line_each_while_the_lockout_warning_is_still_logged()
    {
        var logs = new CapturedLogs();
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            // As in production (appsettings.json): nothing filters the handler's category.
            ["Logging:LogLevel:Default"] = "Information",
            ["Auth:Throttling:ApiKeys:MaxFailures"] = "5",
        }, builder => builder.Logging.AddProvider(logs));
        using var anonymous = new HttpClient { BaseAddress = api.BaseAddress };

        var statuses = new List<HttpStatusCode>();
        for (var i = 0; i < 10; i++)
        {
            using var request = new HttpRequestMessage(HttpMethod.Get, new Uri("/api/jobs", UriKind.Relative));
            request.Headers.Add("X-Api-Key", WrongKey);
            using var response = await anonymous.SendAsync(request);
            statuses.Add(response.StatusCode);
        }

        // Five refused as unknown, then five during the lockout they started.
        Assert.Equal([.. Enumerable.Repeat(HttpStatusCode.Unauthorized, 5), .. Enumerable.Repeat(HttpStatusCode.TooManyRequests, 5)], statuses);
        Assert.DoesNotContain(logs.Entries, e => e.Category == typeof(ApiKeyAuthenticationHandler).FullName && e.Level < LogLevel.Warning);
        Assert.Single(logs.Of(LogLevel.Warning, typeof(AuthThrottle).FullName!));
    }
}
