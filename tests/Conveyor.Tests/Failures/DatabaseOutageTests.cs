using Conveyor.Contracts;
using Conveyor.Contracts.Payments;
using Conveyor.Contracts.Webhooks;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Api;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.Http;
using Microsoft.EntityFrameworkCore;
using Npgsql;
using System.Text.Json;

namespace Conveyor.Tests.Failures;

/// <summary>
/// PostgreSQL becoming unreachable (behind a relay the test cuts, so the shared server keeps
/// running) is an outage of the service's own store: nothing may be dead-lettered or lost for it.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class DatabaseOutageTests(ConveyorFixture fixture) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task While_the_database_is_unreachable_messages_go_back_to_their_queue_not_to_error_and_each_is_applied_once_after()
    {
        const int payments = 30;
        await using var gateway = await FakePaymentGateway.StartAsync();
        await using var database = await ProxiedDatabaseAsync();
        var settings = WorkerSettings.With(gateway);
        settings["ConnectionStrings:Conveyor"] = database.ConnectionString;
        settings["Consumers:ChargePayment:PrefetchCount"] = "8";
        settings["Consumers:ChargePayment:ConcurrentMessageLimit"] = "4";
        settings["Consumers:ChargePayment:RetryLimit"] = "1";
        // One redelivery left at most: without the requeue, the outage would use it up and dead-letter.
        settings["Consumers:ChargePayment:RedeliveryLimit"] = "1";
        settings["Consumers:ChargePayment:KillSwitchActivationThreshold"] = "5";
        settings["Consumers:ChargePayment:KillSwitchTripPercent"] = "20";
        settings["Consumers:ChargePayment:KillSwitchTrackingPeriodSeconds"] = "30";
        settings["Consumers:ChargePayment:KillSwitchRestartSeconds"] = "15";
        await using var worker = await fixture.StartWorkerAsync(settings);
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var sent = Enumerable.Range(0, payments).Select(i => new ChargePayment
        {
            PaymentId = Guid.NewGuid(),
            AccountId = "acct-db-outage",
            AmountMinor = 500 + i,
            Currency = "EUR",
        }).ToList();

        // Declared now, as MassTransit would on the first dead-letter, so that "nothing in it" is a count.
        await fixture.DeclareAsync("charge-payment_error");
        await Eventually.AssertAsync(async () => Assert.Equal(1u, await fixture.ConsumersAsync("charge-payment")), TimeSpan.FromSeconds(30));
        database.Proxy.Cut();
        await Task.WhenAll(sent.Select(p => publisher.PublishAsync(p)));

        // The worker tries, fails on its own database, and the kill switch pauses the endpoint: every
        // message is back in the queue, none dead-lettered.
        await Eventually.AssertAsync(async () =>
        {
            Assert.True(database.Proxy.Refused > 0, "the worker never tried the database");
            Assert.Equal(0u, await fixture.ConsumersAsync("charge-payment"));
            Assert.Equal((uint)payments, await fixture.ReadyAsync("charge-payment"));
        }, TimeSpan.FromSeconds(60));
        Assert.Equal(0u, await fixture.ReadyAsync("charge-payment_error"));
        Assert.Equal(0, gateway.DistinctKeysRequested);

        database.Proxy.Restore();

        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(payments, await db.Jobs.CountAsync(j => j.Status == JobStatus.Succeeded));
        }, TimeSpan.FromMinutes(2));
        await using var check = fixture.CreateDbContext();
        Assert.Equal(0, await check.Jobs.CountAsync(j => j.Status == JobStatus.DeadLettered));
        Assert.Equal(payments, await check.Ledger.CountAsync());
        // Restored before any charge was asked for: each payment charged by one successful request.
        Assert.All(sent, p => Assert.Equal(1, gateway.SuccessfulRequestsFor(p.PaymentId.ToString())));
        Assert.Equal(0u, await fixture.ReadyAsync("charge-payment_error"));
    }

    /// <summary>
    /// The webhook endpoint's kill switch ignores its receivers' failures (one customer's receiver is no
    /// reason to pause the others'), but not the worker's own database: without the pause, every message
    /// would go back to the queue and come straight back, round after round, for the whole outage.
    /// </summary>
    [Fact]
    public async Task While_the_database_is_unreachable_the_webhook_endpoint_pauses_with_its_default_kill_switch()
    {
        const int webhooks = 30;
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        await using var database = await ProxiedDatabaseAsync();
        var settings = WorkerSettings.With();
        settings["ConnectionStrings:Conveyor"] = database.ConnectionString;
        settings["Consumers:DeliverWebhook:RetryLimit"] = "1";
        // Thresholds at their defaults; a shorter pause, so that the test sees the endpoint come back.
        settings["Consumers:DeliverWebhook:KillSwitchRestartSeconds"] = "15";
        await using var worker = await fixture.StartWorkerAsync(settings);
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var sent = Enumerable.Range(0, webhooks).Select(i => new DeliverWebhook
        {
            WebhookId = Guid.NewGuid(),
            Url = receiver.Url(),
            EventType = "invoice.created",
            Payload = JsonDocument.Parse($$"""{"invoice":{{i}}}""").RootElement,
        }).ToList();

        await fixture.DeclareAsync("deliver-webhook_error");
        await Eventually.AssertAsync(async () => Assert.Equal(1u, await fixture.ConsumersAsync("deliver-webhook")), TimeSpan.FromSeconds(30));
        database.Proxy.Cut();
        await Task.WhenAll(sent.Select(w => publisher.PublishAsync(w)));

        await Eventually.AssertAsync(async () =>
        {
            Assert.True(database.Proxy.Refused > 0, "the worker never tried the database");
            Assert.Equal(0u, await fixture.ConsumersAsync("deliver-webhook"));
            Assert.Equal((uint)webhooks, await fixture.ReadyAsync("deliver-webhook"));
        }, TimeSpan.FromSeconds(60));
        Assert.Equal(0u, await fixture.ReadyAsync("deliver-webhook_error"));
        Assert.Empty(receiver.Deliveries);

        database.Proxy.Restore();

        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(webhooks, await db.Jobs.CountAsync(j => j.Status == JobStatus.Succeeded));
        }, () => PipelineState.DescribeAsync(fixture), TimeSpan.FromMinutes(2));
        Assert.Equal(webhooks, receiver.Deliveries.Count);
        Assert.Equal(0u, await fixture.ReadyAsync("deliver-webhook_error"));
    }

    [Fact]
    public async Task The_api_answers_503_with_retry_after_while_the_database_is_unreachable_and_202_when_it_is_back()
    {
        await using var database = await ProxiedDatabaseAsync();
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings:Conveyor"] = database.ConnectionString,
        });
        var paymentId = Guid.NewGuid();

        database.Proxy.Cut();
        using (var refused = await api.Client.PostJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId), $"order-{paymentId}"))
        {
            await refused.AssertProblemAsync(StatusCodes.Status503ServiceUnavailable);
            Assert.Equal(TimeSpan.FromSeconds(5), refused.Headers.RetryAfter?.Delta);
        }

        using (var listing = await api.Client.GetAsync(new Uri("/api/jobs", UriKind.Relative)))
        {
            await listing.AssertProblemAsync(StatusCodes.Status503ServiceUnavailable);
        }

        database.Proxy.Restore();
        using var accepted = await api.Client.PostJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId), $"order-{paymentId}");
        Assert.Equal(StatusCodes.Status202Accepted, (int)accepted.StatusCode);
    }

    private async Task<ProxiedDatabase> ProxiedDatabaseAsync()
    {
        var connection = new NpgsqlConnectionStringBuilder(fixture.ConnectionString);
        var proxy = await OutageProxy.ToAsync(connection.Host!, connection.Port);
        connection.Port = proxy.Port;
        // Fail fast while cut, as a stopped server does (connection refused), instead of the default 15 s.
        connection.Timeout = 3;
        return new ProxiedDatabase(proxy, connection.ConnectionString);
    }

    private sealed record ProxiedDatabase(OutageProxy Proxy, string ConnectionString) : IAsyncDisposable
    {
        public ValueTask DisposeAsync() => Proxy.DisposeAsync();
    }
}
