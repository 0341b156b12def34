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
[Collection(SecondLaneCollection.Name)]
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

    [Fact]
    public async Task The_sign_in_page_and_unreadable_anti_forgery_tokens_from_anonymous_clients_write_no_warning_or_error()
    {
        var logs = new CapturedLogs();
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            // As in production (appsettings.json, the pods' common.env).
            ["Logging:LogLevel:Default"] = "Information",
            ["Logging:LogLevel:Microsoft.AspNetCore"] = "Warning",
        }, builder => builder.Logging.AddProvider(logs));
        using var anonymous = new HttpClient(new HttpClientHandler { UseCookies = false, AllowAutoRedirect = false }) { BaseAddress = api.BaseAddress };

        var statuses = new List<HttpStatusCode>();
        for (var i = 0; i < 3; i++)
        {
            using (var page = await anonymous.GetAsync(new Uri("/dashboard/login", UriKind.Relative)))
            {
                statuses.Add(page.StatusCode);
            }

            using var forged = new HttpRequestMessage(HttpMethod.Get, new Uri("/dashboard/login", UriKind.Relative));
            forged.Headers.Add("Cookie", "conveyor.csrf=not-a-token");
            using (var page = await anonymous.SendAsync(forged))
            {
                statuses.Add(page.StatusCode);
            }

            using var post = new HttpRequestMessage(HttpMethod.Post, new Uri("/dashboard/login", UriKind.Relative))
            {
                Content = new FormUrlEncodedContent(new Dictionary<string, string> { ["apiKey"] = WrongKey, ["__RequestVerificationToken"] = "not-a-token" }),
            };
            post.Headers.Add("Cookie", "conveyor.csrf=not-a-token");
            using var refused = await anonymous.SendAsync(post);
            statuses.Add(refused.StatusCode);
        }

        Assert.Equal([.. Enumerable.Repeat<HttpStatusCode[]>([HttpStatusCode.OK, HttpStatusCode.OK, HttpStatusCode.BadRequest], 3).SelectMany(s => s)], statuses);
        var written = logs.Entries.Where(e => e.Level >= LogLevel.Warning && e.Category.StartsWith("Microsoft.AspNetCore.Antiforgery", StringComparison.Ordinal)).ToList();
        Assert.True(written.Count == 0, string.Join(Environment.NewLine, written.Select(e => $"{e.Level} {e.Category}[{e.EventId.Id}]: {e.Message}")));
    }
}
