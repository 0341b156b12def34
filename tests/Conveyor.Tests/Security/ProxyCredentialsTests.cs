using System.Net;
using Conveyor.Tests.Infrastructure;

namespace Conveyor.Tests.Security;

/// <summary>Only a key header (<c>Authorization: Bearer</c>, <c>X-Api-Key</c>) displaces the dashboard session; a proxy's own credentials do not.</summary>
[Collection(SecondLaneCollection.Name)]
public sealed class ProxyCredentialsTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private RunningApp _api = null!;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        _api = await fixture.StartApiAsync(new Dictionary<string, string?> { ["RateLimiting:Enabled"] = "false" });
    }

    public async Task DisposeAsync() => await _api.DisposeAsync();

    [Fact]
    public async Task A_proxys_basic_credentials_beside_the_session_cookie_leave_the_session_in_charge()
    {
        using var browser = DashboardBrowser.Open(_api.BaseAddress, out _);
        await DashboardBrowser.SignInAsync(browser, TestKeys.Admin);

        foreach (var path in new[] { "/dashboard/", "/dashboard/api/session" })
        {
            using var request = new HttpRequestMessage(HttpMethod.Get, new Uri(path, UriKind.Relative));
            request.Headers.TryAddWithoutValidation("Authorization", "Basic cHJveHk6c2VjcmV0");
            using var response = await browser.SendAsync(request);
            Assert.True(response.StatusCode == HttpStatusCode.OK, $"{path}: {response.StatusCode}");
        }
    }
}
