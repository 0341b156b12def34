using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.ErrorQueues;

/// <summary>
/// The Api process running a move is killed part-way, three times over. No message may be lost:
/// error queue plus target never hold fewer than the messages there were, and once consumed,
/// every charge has happened exactly once (copies left in both queues are absorbed by the inbox).
/// </summary>
[Collection(SecondLaneCollection.Name)]
public sealed class MoveCrashTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const int Messages = 1200;
    private const int Kills = 3;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        await ErrorQueueKit.ClearOperationsAsync(fixture);
    }

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task Killing_the_Api_mid_move_loses_nothing_and_every_charge_happens_once()
    {
        await using var broker = await TestBroker.ConnectAsync(fixture);
        var payments = new List<Guid>();
        for (var i = 0; i < Messages; i++)
        {
            var payment = Guid.NewGuid();
            payments.Add(payment);
            await broker.DeadLetterChargeAsync("System.TimeoutException", "The payment gateway timed out", paymentId: payment);
        }

        // Throttled, so that each kill lands in the middle of a move.
        var settings = new Dictionary<string, string?>(fixture.BaseSettings);
        foreach (var (key, value) in ErrorQueueKit.ApiSettings(maxMessagesPerSecond: 100))
        {
            settings[key] = value;
        }

        var errorsBefore = (uint)Messages;
        for (var kill = 1; kill <= Kills; kill++)
        {
            await using var child = await ChildApi.StartAsync(settings);
            using var admin = ErrorQueueKit.Client(child.BaseAddress);
            using var started = await admin.PostJsonAsync($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/move", new { });
            var id = (await started.JsonAsync()).GetProperty("operationId").GetGuid();
            await Eventually.AssertAsync(async () =>
            {
                var progress = await admin.GetJsonAsync($"/api/operations/{id}");
                Assert.True(progress.GetProperty("state").GetString() == "running", $"kill {kill}: the move ended before the kill: {progress}\n{child.Output}");
                Assert.True(progress.GetProperty("moved").GetInt64() >= 30, $"kill {kill}: {progress}\n{child.Output}");
            });

            await child.KillAsync();

            // The broker requeues what the dead connection had not acknowledged; nothing may be missing.
            uint errors = 0;
            await Eventually.AssertAsync(async () =>
            {
                errors = await broker.CountAsync(ErrorQueueKit.ChargeErrors);
                var total = errors + await broker.CountAsync(ErrorQueueKit.ChargeQueue);
                Assert.True(total >= Messages, $"only {total} of {Messages} messages left after kill {kill}");
            }, TimeSpan.FromSeconds(30));
            Assert.InRange(errors, 1u, errorsBefore - 1);
            errorsBefore = errors;
        }

        // A healthy Api finishes the job; it finds the killed operations and marks them interrupted.
        await using (var api = await fixture.StartApiAsync(ErrorQueueKit.ApiSettings()))
        {
            using var admin = ErrorQueueKit.Client(api.BaseAddress);
            var last = await admin.RunOperationAsync($"/api/error-queues/{ErrorQueueKit.ChargeErrors}/move", new { });
            Assert.Equal("succeeded", last.GetProperty("state").GetString());
            var states = (await admin.GetJsonAsync("/api/operations")).EnumerateArray().Select(o => o.GetProperty("state").GetString()).ToList();
            Assert.Equal(Kills, states.Count(s => s == "interrupted"));
        }

        Assert.Equal(0u, await broker.CountAsync(ErrorQueueKit.ChargeErrors));
        Assert.True(await broker.CountAsync(ErrorQueueKit.ChargeQueue) >= Messages);

        await using var gateway = await FakePaymentGateway.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway));
        await Eventually.AssertAsync(async () =>
        {
            Assert.Equal(0u, await broker.CountAsync(ErrorQueueKit.ChargeQueue));
            await using var db = fixture.CreateDbContext();
            Assert.Equal(Messages, await db.Ledger.CountAsync());
        }, TimeSpan.FromMinutes(3));
        await fixture.AssertDrainedAsync(worker, ErrorQueueKit.ChargeQueue);
        Assert.Equal(Messages, gateway.Charges.Count);
        // The kills hit the Api, not the worker: copies moved twice are absorbed by the inbox before
        // the gateway, so each payment was asked for once.
        Assert.All(payments, payment => Assert.Equal(1, gateway.RequestsFor(payment.ToString())));
        Assert.Equal(0u, await broker.CountAsync(ErrorQueueKit.ChargeErrors));
    }
}
