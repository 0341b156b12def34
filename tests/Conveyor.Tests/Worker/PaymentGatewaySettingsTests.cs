using Conveyor.Tests.Infrastructure;
using Microsoft.Extensions.Options;

namespace Conveyor.Tests.Worker;

/// <summary>
/// <c>PaymentGateway:BaseUrl</c> and <c>PaymentGateway:ApiKey</c> are checked when the worker starts. A URL that
/// is no absolute http or https URL (no scheme, ftp), or one with a query or a fragment (<c>charges</c> resolved
/// against it replaced its path: <c>https://gw/v1?x=1</c> sent charges to <c>https://gw/charges</c>), was taken,
/// and so was a key with a line break (a secret file's last newline) or a non-ASCII character: the worker started
/// and then failed every payment, dead-lettering each one at once or retrying each for hours.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class PaymentGatewaySettingsTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Secret = "sk_live_0123456789";

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Theory]
    [InlineData("gateway.example.com/v1")]
    [InlineData("/v1")]
    [InlineData("ftp://gateway.example.com/")]
    [InlineData("https://gateway.example.com/v1?account=main")]
    [InlineData("https://gateway.example.com/v1#charges")]
    [InlineData("https://ops:" + Secret + "@gateway.example.com/v1")]
    public async Task A_base_url_the_charges_cannot_be_sent_to_is_refused_at_start_naming_the_setting(string url)
    {
        var refused = await Assert.ThrowsAsync<OptionsValidationException>(() => fixture.StartWorkerAsync(
            WorkerSettings.With().Override(("PaymentGateway:BaseUrl", url))));

        Assert.Contains("PaymentGateway:BaseUrl", refused.Message, StringComparison.Ordinal);
        Assert.DoesNotContain(Secret, refused.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(Secret + "\n")]
    [InlineData(Secret + "\r\n")]
    [InlineData(" " + Secret)]
    [InlineData("sk_live_0123456789é")]
    public async Task An_api_key_that_cannot_be_sent_as_a_bearer_token_is_refused_at_start_without_showing_it(string key)
    {
        var refused = await Assert.ThrowsAsync<OptionsValidationException>(() => fixture.StartWorkerAsync(
            WorkerSettings.With().Override(("PaymentGateway:BaseUrl", "https://gateway.example.com/v1/"), ("PaymentGateway:ApiKey", key))));

        Assert.Contains("PaymentGateway:ApiKey", refused.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("0123456789", refused.Message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("https://gateway.example.com/v1")]
    [InlineData("https://gateway.example.com/v1/")]
    [InlineData("http://127.0.0.1:8443")]
    public async Task An_absolute_http_url_and_a_printable_key_are_accepted(string url)
    {
        await using var worker = await fixture.StartWorkerAsync(
            WorkerSettings.With().Override(("PaymentGateway:BaseUrl", url), ("PaymentGateway:ApiKey", Secret)));
    }
}
