namespace Conveyor.Tests.Deploy;

/// <summary>
/// In prod the ingress terminates TLS and the Api sees plain HTTP, so only
/// <c>Dashboard__Session__SecureCookies</c> keeps its session cookie Secure (ADR 0003).
/// </summary>
public sealed class SecureCookieOverlayTests
{
    [Fact]
    public void The_prod_Api_marks_its_dashboard_cookies_Secure()
    {
        var rendered = RenderedOverlay.Load("prod");

        var api = Assert.Single(rendered.DeploymentsOf("api")).Workload;
        var container = Assert.Single(api.Pod.Containers, c => rendered.EnvironmentOf(c).ContainsKey("Dashboard__Session__SecureCookies"));
        Assert.Equal("true", rendered.EnvironmentOf(container)["Dashboard__Session__SecureCookies"].Value, ignoreCase: true);
    }
}
