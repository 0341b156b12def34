using Conveyor.Contracts;
using Conveyor.Contracts.Payments;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Api;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker;
using Microsoft.AspNetCore.Http;
using Microsoft.EntityFrameworkCore;
using Npgsql;

namespace Conveyor.Tests.Failures;

/// <summary>
/// A server that is up but refuses this service (a wrong or rotated password, a database that does
/// not exist yet, a schema the migrations have not reached, a server that takes no writes) is an outage of the service's own store like an unreachable one: the worker keeps
/// its messages in their queue, the Api answers 503, and nothing is dead-lettered for it.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class DatabaseLoginFailureTests(ConveyorFixture fixture) : ScratchDatabaseTest(fixture, "no_schema")
{
    private static readonly string[] LoginRefusals = ["wrong password", "missing database", "database without its schema"];

    public static TheoryData<string> Refusals => [.. LoginRefusals];

    /// <summary>
    /// And a server that lets the worker in and read but takes no writes: a standby a failover or a pooler left it
    /// on, or a primary set read-only (by an operator, or by a managed service whose disk is nearly full). Not for
    /// the Api's test, whose listing only reads.
    /// </summary>
    public static TheoryData<string> WorkerRefusals => [.. LoginRefusals, "read-only database"];

    /// <summary>A database the migrations have not reached yet: a pod started before its migration Job ran.</summary>
    private string WithoutSchema => Database.Name;

    [Theory]
    [MemberData(nameof(WorkerRefusals))]
    public async Task A_worker_the_database_refuses_keeps_the_job_in_its_queue_and_a_worker_it_accepts_runs_it_once(string refusal)
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        var refused = WorkerSettings.With(gateway).Override(
            ("ConnectionStrings:Conveyor", Refused(refusal)),
            ("Consumers:ChargePayment:RetryLimit", "1"),
            ("Consumers:ChargePayment:RedeliveryLimit", "1"),
            // One failed message trips it: the endpoint then stays paused for the rest of the test.
            ("Consumers:ChargePayment:KillSwitchActivationThreshold", "1"),
            ("Consumers:ChargePayment:KillSwitchTripPercent", "1"),
            ("Consumers:ChargePayment:KillSwitchRestartSeconds", "600"));
        var payment = new ChargePayment { PaymentId = Guid.NewGuid(), AccountId = "acct-db-login", AmountMinor = 700, Currency = "EUR" };

        // Not Fixture.StartWorkerAsync: that waits for /health/ready, which a refused database never gives.
        await using (var worker = await RunningApp.StartAsync(args => WorkerApp.Build(args), Merged(refused)))
        {
            await Fixture.DeclareAsync("charge-payment_error");
            await Eventually.AssertAsync(async () => Assert.Equal(1u, await Fixture.ConsumersAsync("charge-payment")), TimeSpan.FromSeconds(30));
            await using (var publisher = await TestPublisher.StartAsync(Fixture))
            {
                await publisher.PublishAsync(payment);
            }

            // Tried, refused, given back: the kill switch paused the endpoint with the message ready again.
            await Eventually.AssertAsync(async () =>
            {
                Assert.Equal(0u, await Fixture.ConsumersAsync("charge-payment"));
                Assert.Equal(1u, await Fixture.ReadyAsync("charge-payment"));
            }, TimeSpan.FromSeconds(60));
            Assert.Equal(0u, await Fixture.ReadyAsync("charge-payment_error"));
            Assert.Equal(0, gateway.DistinctKeysRequested);
        }

        await using (var worker = await Fixture.StartWorkerAsync(WorkerSettings.With(gateway)))
        {
            await Eventually.AssertAsync(async () =>
            {
                await using var db = Fixture.CreateDbContext();
                Assert.Equal(JobStatus.Succeeded, (await db.Jobs.SingleAsync()).Status);
            });
            await Fixture.AssertDrainedAsync(worker, "charge-payment");
        }

        await using var check = Fixture.CreateDbContext();
        var job = await check.Jobs.SingleAsync();
        // The job ran once, in one attempt (the refused worker could not write to this database at all).
        Assert.Equal(1, job.Attempts);
        Assert.Equal(1, await check.Ledger.CountAsync());
        Assert.Equal(1, gateway.SuccessfulRequestsFor(payment.PaymentId.ToString()));
        Assert.Equal(0u, await Fixture.ReadyAsync("charge-payment_error"));
    }

    [Theory]
    [MemberData(nameof(Refusals))]
    public async Task The_api_answers_503_with_retry_after_when_the_database_refuses_it(string refusal)
    {
        await using var api = await Fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["ConnectionStrings:Conveyor"] = Refused(refusal),
        });
        var paymentId = Guid.NewGuid();

        using (var submitted = await api.Client.PostJobAsync(JobKinds.ChargePayment, JobRequests.ChargePayment(paymentId), $"order-{paymentId}"))
        {
            await submitted.AssertProblemAsync(StatusCodes.Status503ServiceUnavailable);
            Assert.Equal(TimeSpan.FromSeconds(5), submitted.Headers.RetryAfter?.Delta);
        }

        using var listing = await api.Client.GetAsync(new Uri("/api/jobs", UriKind.Relative));
        await listing.AssertProblemAsync(StatusCodes.Status503ServiceUnavailable);
    }

    private string Refused(string refusal)
    {
        var connection = new NpgsqlConnectionStringBuilder(Fixture.ConnectionString);
        switch (refusal)
        {
            case "wrong password":
                connection.Password = "not-the-password"; // 28P01
                break;
            case "missing database":
                connection.Database = $"{Fixture.DatabaseName}_missing"; // 3D000
                break;
            case "database without its schema":
                connection.Database = WithoutSchema; // 42P01
                break;
            case "read-only database":
                connection.Options = "-c default_transaction_read_only=on"; // 25006 at the first write
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(refusal), refusal, null);
        }

        return connection.ConnectionString;
    }

    private Dictionary<string, string?> Merged(Dictionary<string, string?> overrides)
    {
        var settings = new Dictionary<string, string?>(Fixture.BaseSettings);
        foreach (var (key, value) in overrides)
        {
            settings[key] = value;
        }

        return settings;
    }
}
