using System.Net;
using Conveyor.Tests.Infrastructure;
using Microsoft.Extensions.Options;

namespace Conveyor.Tests.Security;

/// <summary>
/// A key is configured with the whitespace its secret source left around it (a file's trailing newline, an
/// env file's trailing blanks); a request cannot carry that whitespace (HTTP drops it around a header value,
/// the Api trims the key it is given), so the key is what lies between.
/// </summary>
[Collection(SecondLaneCollection.Name)]
public sealed class PaddedKeyTests(ConveyorFixture fixture)
{
    private const string PaddedKey = "test-key-padded-0123456789abcdef";

    [Fact]
    public async Task A_key_configured_with_surrounding_whitespace_is_accepted_in_a_header_and_at_the_sign_in_form()
    {
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RateLimiting:Enabled"] = "false",
            ["Auth:ApiKeys:padded:Name"] = "padded-reader",
            ["Auth:ApiKeys:padded:Key"] = " " + PaddedKey + "\n",
            ["Auth:ApiKeys:padded:Scopes"] = "jobs:read",
        });

        using (var client = TestKeys.Client(api.BaseAddress, PaddedKey))
        using (var response = await client.GetAsync(new Uri("/api/jobs", UriKind.Relative)))
        {
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        }

        using var browser = DashboardBrowser.Open(api.BaseAddress, out _);
        await DashboardBrowser.SignInAsync(browser, PaddedKey);
        using var overview = await browser.GetAsync(new Uri("/dashboard/api/session", UriKind.Relative));
        Assert.Equal(HttpStatusCode.OK, overview.StatusCode);
    }

    [Fact]
    public async Task A_key_that_is_long_enough_only_with_its_whitespace_stops_the_Api_from_starting()
    {
        var refused = await Assert.ThrowsAsync<OptionsValidationException>(() => fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["Auth:ApiKeys:short:Name"] = "short",
            ["Auth:ApiKeys:short:Key"] = "short-key-0123456" + new string(' ', 10),
            ["Auth:ApiKeys:short:Scopes"] = "jobs:read",
        }));
        Assert.Contains("Auth:ApiKeys:short:Key must be at least 24 characters long", refused.Message, StringComparison.Ordinal);
    }
}
