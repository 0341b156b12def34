using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Api;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Worker;

/// <summary>
/// A webhook URL as long as the contract allows is recorded as it was sent. .NET's canonical form of a
/// URL can be longer than the text (a <c>/</c> before a query with no path); recorded in that form, it
/// was cut to the column's length on the way in (the parameter takes the column's size), so the record
/// named a URL that was never called.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class WebhookUrlLengthTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_url_of_the_longest_length_whose_canonical_form_is_longer_is_delivered_and_recorded_as_sent()
    {
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With());
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?> { ["Webhooks:AllowPrivateNetworks"] = "true" });
        var origin = receiver.BaseAddress.GetLeftPart(UriPartial.Authority);
        var url = origin + "?q=" + new string('a', ContractRules.MaxUrlLength - origin.Length - 3);
        Assert.Equal(ContractRules.MaxUrlLength, url.Length);
        Assert.True(new Uri(url).ToString().Length > ContractRules.MaxUrlLength, "the canonical form is longer");
        var webhookId = Guid.NewGuid();

        var accepted = await api.Client.AcceptJobAsync(JobKinds.DeliverWebhook,
            $$"""{"webhookId":"{{webhookId}}","url":"{{url}}","eventType":"order.paid","payload":[1]}""");

        await Eventually.AssertAsync(async () => Assert.Equal(JobStatus.Succeeded, (await api.Client.GetJobAsync(accepted.JobId)).Status));
        Assert.Single(receiver.Deliveries);
        await using var db = fixture.CreateDbContext();
        var delivery = await db.WebhookDeliveries.SingleAsync(d => d.WebhookId == webhookId);
        Assert.Equal(url, delivery.Url);
    }
}
