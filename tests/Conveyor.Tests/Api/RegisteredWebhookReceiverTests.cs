using Conveyor.Contracts;
using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.Http;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Options;
using System.Net;

namespace Conveyor.Tests.Api;

/// <summary>
/// With <c>Webhooks:RequireRegisteredReceivers</c>, the worker dead-letters a delivery to an origin not in
/// <c>Webhooks:Receivers</c>; the Api, given the same settings, refuses such a job at once (400 naming
/// <c>url</c>, or the batch item's <c>url</c>) instead of accepting a job that can only fail.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class RegisteredWebhookReceiverTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private static readonly Dictionary<string, string?> RequiringRegistration = new()
    {
        ["Webhooks:Receivers:0:Origin"] = "https://hooks.example.com",
        ["Webhooks:RequireRegisteredReceivers"] = "true",
    };

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_webhook_to_an_unregistered_origin_is_a_400_naming_url_and_one_to_a_registered_origin_is_accepted()
    {
        await using var api = await fixture.StartApiAsync(RequiringRegistration);
        await using var published = await ChargePaymentProbe.BindAsync(fixture, ChargePaymentProbe.DeliverWebhookExchange);

        // Another host, and the registered host on another scheme or port: each another receiver.
        foreach (var url in new[] { "https://other.example.com/orders", "http://hooks.example.com/orders", "https://hooks.example.com:8443/orders" })
        {
            using var refused = await api.Client.PostJobAsync(JobKinds.DeliverWebhook, WebhookBody(Guid.NewGuid(), url));

            await refused.AssertProblemAsync(StatusCodes.Status400BadRequest);
            Assert.Equal(new HashSet<string> { "url" }, await refused.ReadErrorFieldsAsync());
        }

        await AssertJobCountAsync(0);

        // The registered origin spelt otherwise: origins compare by scheme, host and port.
        using var accepted = await api.Client.PostJobAsync(JobKinds.DeliverWebhook, WebhookBody(Guid.NewGuid(), "https://HOOKS.example.com:443/orders?id=7"));

        Assert.Equal(HttpStatusCode.Accepted, accepted.StatusCode);
        await AssertJobCountAsync(1);
    }

    [Fact]
    public async Task A_batch_with_a_webhook_to_an_unregistered_origin_is_a_400_naming_its_url_and_one_of_registered_origins_is_accepted()
    {
        await using var api = await fixture.StartApiAsync(RequiringRegistration);
        await using var published = await ChargePaymentProbe.BindAsync(fixture, ChargePaymentProbe.DeliverWebhookExchange);

        using (var refused = await JobBatchTests.PostBatchAsync(api, JobKinds.DeliverWebhook, JobBatchTests.Batch(
        [
            WebhookBody(Guid.NewGuid(), "https://hooks.example.com/orders"),
            WebhookBody(Guid.NewGuid(), "https://other.example.com/orders"),
        ])))
        {
            await refused.AssertProblemAsync(StatusCodes.Status400BadRequest);
            Assert.Equal(new HashSet<string> { "jobs[1].url" }, await refused.ReadErrorFieldsAsync());
        }

        await AssertJobCountAsync(0);

        using (var accepted = await JobBatchTests.PostBatchAsync(api, JobKinds.DeliverWebhook, JobBatchTests.Batch(
        [
            WebhookBody(Guid.NewGuid(), "https://hooks.example.com/orders"),
            WebhookBody(Guid.NewGuid(), "https://hooks.example.com./refunds"),
        ])))
        {
            Assert.Equal(HttpStatusCode.Accepted, accepted.StatusCode);
        }

        await AssertJobCountAsync(2);
    }

    [Fact]
    public async Task Without_the_requirement_a_webhook_to_any_public_origin_is_accepted()
    {
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?> { ["Webhooks:Receivers:0:Origin"] = "https://hooks.example.com" });
        await using var published = await ChargePaymentProbe.BindAsync(fixture, ChargePaymentProbe.DeliverWebhookExchange);

        using var accepted = await api.Client.PostJobAsync(JobKinds.DeliverWebhook, WebhookBody(Guid.NewGuid(), "https://other.example.com/orders"));

        Assert.Equal(HttpStatusCode.Accepted, accepted.StatusCode);
    }

    [Fact]
    public async Task An_unreadable_or_repeated_receiver_origin_stops_the_Api_from_starting_naming_its_setting()
    {
        var refused = await Assert.ThrowsAsync<OptionsValidationException>(() => fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["Webhooks:Receivers:0:Origin"] = "https://hooks.example.com",
            ["Webhooks:Receivers:1:Origin"] = "https://hooks.example.com/customer-b",
            ["Webhooks:Receivers:2:Origin"] = "HTTPS://Hooks.Example.com:443",
        }));

        Assert.Contains("Webhooks:Receivers:1:Origin 'https://hooks.example.com/customer-b' has a path", refused.Message, StringComparison.Ordinal);
        Assert.Contains("Webhooks:Receivers:2:Origin is https://hooks.example.com:443, as Webhooks:Receivers:0:Origin", refused.Message, StringComparison.Ordinal);
    }

    [Fact]
    public async Task A_refused_receiver_origin_is_named_by_its_key_as_configured()
    {
        var refused = await Assert.ThrowsAsync<OptionsValidationException>(() => fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["Webhooks:Receivers:3:Origin"] = "https://hooks.example.com",
            ["Webhooks:Receivers:7:Origin"] = "HTTPS://Hooks.Example.com:443",
        }));

        // Before, entries 0 and 1: .NET binds the entries one after another, whatever their keys.
        Assert.Contains("Webhooks:Receivers:7:Origin is https://hooks.example.com:443, as Webhooks:Receivers:3:Origin", refused.Message, StringComparison.Ordinal);
    }

    private static string WebhookBody(Guid webhookId, string url) =>
        $$$"""{"webhookId":"{{{webhookId}}}","url":"{{{url}}}","eventType":"order.paid","payload":{"orderId":7}}""";

    private async Task AssertJobCountAsync(int expected)
    {
        await using var db = fixture.CreateDbContext();
        Assert.Equal(expected, await db.Jobs.CountAsync());
    }
}
