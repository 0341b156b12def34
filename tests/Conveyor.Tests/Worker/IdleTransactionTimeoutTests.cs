using System.Text.Json;
using Conveyor.Contracts.Webhooks;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Npgsql;

namespace Conveyor.Tests.Worker;

/// <summary>
/// A server that ends sessions idle in a transaction (<c>idle_in_transaction_session_timeout</c>, which many
/// DBAs and managed services set) ends an inbox transaction whose consumer waits longer than that on its remote
/// side. The server stopped the work for its time, as <c>statement_timeout</c> stops a statement: transient, so
/// the attempt is tried again. It was taken for a permanent failure (Npgsql does not count 25P03 as transient),
/// and the job was dead-lettered at its first attempt.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class IdleTransactionTimeoutTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string ApplicationName = "conveyor-idle-transaction-test";

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_delivery_whose_transaction_the_server_ended_for_idling_is_tried_again_not_dead_lettered()
    {
        await using var receiver = await FakeWebhookReceiver.StartAsync();
        var release = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        receiver.HoldDeliveries = release.Task;
        var connectionString = new NpgsqlConnectionStringBuilder(fixture.ConnectionString)
        {
            ApplicationName = ApplicationName,
            Options = "-c idle_in_transaction_session_timeout=3000",
        }.ConnectionString;
        // The receiver's answer is held for longer than the server lets a transaction idle, and the worker waits for it.
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("ConnectionStrings:Conveyor", connectionString), ("Webhooks:TimeoutSeconds", "60")));
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var webhook = new DeliverWebhook
        {
            WebhookId = Guid.NewGuid(),
            Url = receiver.Url(),
            EventType = "order.paid",
            Payload = JsonDocument.Parse("""{"invoice":8}""").RootElement,
        };

        await publisher.PublishAsync(webhook);

        // The consumer waits for the receiver inside its inbox transaction, until the server ends that session.
        await Eventually.AssertAsync(() => Assert.Single(receiver.Deliveries));
        var called = await DatabaseNowAsync();
        await Eventually.AssertAsync(async () => Assert.False(await IdleInTransactionSinceAsync(called), "the server has not ended the idle transaction yet"));
        release.SetResult();

        var job = await fixture.WaitForJobAsync(webhook.WebhookId, JobStatus.Succeeded);
        Assert.True(job.Attempts >= 2, $"attempts: {job.Attempts}");
        Assert.True(receiver.Deliveries.Count >= 2, $"deliveries: {receiver.Deliveries.Count}");
    }

    private async Task<DateTime> DatabaseNowAsync()
    {
        await using var connection = new NpgsqlConnection(fixture.ConnectionString);
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand("SELECT clock_timestamp()", connection);
        return (DateTime)(await command.ExecuteScalarAsync())!;
    }

    /// <summary>Whether a session of the worker is idle in a transaction it began before <paramref name="moment"/>.</summary>
    private async Task<bool> IdleInTransactionSinceAsync(DateTime moment)
    {
        await using var connection = new NpgsqlConnection(fixture.ConnectionString);
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand(
            """
            SELECT EXISTS (SELECT 1 FROM pg_stat_activity
                            WHERE application_name = @name AND state = 'idle in transaction' AND xact_start < @moment)
            """, connection);
        command.Parameters.AddWithValue("name", ApplicationName);
        command.Parameters.AddWithValue("moment", moment);
        return (bool)(await command.ExecuteScalarAsync())!;
    }
}
