using System.Net.Http.Json;
using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Conveyor.Tests.Observability;
using Microsoft.EntityFrameworkCore;
using Xunit.Abstractions;

namespace Conveyor.Tests.Faults;

/// <summary>
/// The Api killed with SIGKILL while clients submit. A kill between a job row's commit and the
/// broker's confirm leaves a job whose client got no answer, and perhaps no command: the Api
/// publishes it again from the stored request once it counts as stranded (ADR 0007). A kill lands
/// in that gap only by chance, so the first is made to: the Api's AMQP connection goes through a
/// relay that holds its traffic while one more submission's row commits, and drops it with the connection.
/// </summary>
[Collection(SecondLaneCollection.Name)]
[Trait("Category", "Faults")]
public sealed class ApiKillTests(ConveyorFixture fixture, ITestOutputHelper output) : IAsyncLifetime
{
    /// <summary>
    /// The Api's publish budget (<c>RabbitMq:ConnectTimeoutSeconds</c>): how long the held submission's publish
    /// waits for its confirm before the Api gives up, removes the row and answers 503. The kill has to come within
    /// it, on a machine that may stall for seconds, so it is three times the default 5 s; kept under the 20 s
    /// MassTransit gives a channel operation, so nothing else times the held publish out first.
    /// </summary>
    private const int PublishBudgetSeconds = 15;

    /// <summary>
    /// Just over the shortest threshold the Api accepts (its publish budget plus 10 s to remove an
    /// unconfirmed row); the test waits that long for the strandings.
    /// </summary>
    private const int StrandedAfterSeconds = PublishBudgetSeconds + 15;

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    /// <param name="batchSize">Jobs per request: 1 for single submissions, more for batches (ADR 0009).</param>
    [Theory]
    [InlineData(1)]
    [InlineData(10)]
    public async Task An_api_killed_with_sigkill_three_times_mid_run_leaves_every_job_it_recorded_run_once(int batchSize)
    {
        var jobs = FaultReport.Jobs(normalRun: 2_000);
        await using var gateway = await FakePaymentGateway.StartAsync();
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With(gateway));

        await using var broker = await OutageProxy.ToAsync(fixture.Servers.RabbitHost, fixture.Servers.RabbitPort);
        var settings = new Dictionary<string, string?>(fixture.BaseSettings);
        foreach (var (key, value) in TestKeys.Settings.Concat(FaultReport.ApiSettings))
        {
            settings[key] = value;
        }

        settings["RabbitMq:Port"] = broker.Port.ToString(System.Globalization.CultureInfo.InvariantCulture);
        settings["RabbitMq:ConnectTimeoutSeconds"] = PublishBudgetSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture);

        settings["Jobs:StrandedAfterSeconds"] = StrandedAfterSeconds.ToString(System.Globalization.CultureInfo.InvariantCulture);
        settings["Jobs:StrandedCheckSeconds"] = "2";

        // Restarts listen on the same port, so the clients find the next Api where the last one was.
        var api = await ServiceProcess.StartApiAsync(settings);
        var port = api.BaseAddress.Port;
        using var http = new HttpClient { BaseAddress = api.BaseAddress, Timeout = TimeSpan.FromSeconds(30) };
        http.DefaultRequestHeaders.Add("X-Api-Key", TestKeys.Admin);
        var kills = new List<string>();
        // Summed over every Api: a stranded job may be published again by any Api alive a threshold later.
        var republished = 0.0;
        using var heldClient = new HttpClient { BaseAddress = api.BaseAddress, Timeout = TimeSpan.FromSeconds(30) };
        heldClient.DefaultRequestHeaders.Add("X-Api-Key", TestKeys.Admin);
        var heldPayment = Guid.NewGuid();
        Task<HttpResponseMessage>? held = null;
        try
        {
            var submissions = new JobSubmissions(batchSize);
            using var stopSubmitting = new CancellationTokenSource();
            // Clients keep submitting, paced, before, during and after each kill, however long a
            // restart takes; fast enough that a few requests are between their row's commit and
            // their confirm at each kill. Requests refused while an Api is down are not retried.
            // Batches go faster (in jobs), so that a kill lands inside one as often as inside a single submission.
            var submitting = submissions.SubmitAsync(http, int.MaxValue, clients: 16, perSecond: batchSize == 1 ? 300 : 1_500, stopSubmitting.Token);
            Task AcceptedAsync(int count) =>
                Eventually.AssertAsync(() => Assert.True(submissions.AcceptedCount >= count), TimeSpan.FromMinutes(2));

            // Each Api accepts a quarter of the jobs; the first three are then killed.
            for (var quarter = 1; quarter <= 3; quarter++)
            {
                await AcceptedAsync(jobs * quarter / 4);
                // Read before the stall, so that nothing but the kill comes between the held row's commit and
                // the end of its publish budget: while the stall lasts, no publish is confirmed to count.
                republished += await RepublishedAsync(api);
                if (quarter == 1)
                {
                    held = await StrandAsync(broker, heldClient, heldPayment);
                }

                await api.KillAsync();
                kills.Add($"pid {api.Id} at {submissions.AcceptedCount} accepted");
                if (held is not null && quarter == 1)
                {
                    // The held publish goes with the connection: that row has no command anywhere.
                    broker.Cut();
                    broker.Resume();
                    broker.Restore();
                    await AssertNoAnswerAsync(held);
                }

                await api.DisposeAsync();
                api = await ServiceProcess.StartApiAsync(settings, port);
            }

            await AcceptedAsync(jobs);
            await stopSubmitting.CancelAsync();
            await submitting;

            // Every job that has a row runs: those the clients heard of, and those whose answer
            // the kills cut off, whether or not their command reached the broker.
            await Eventually.AssertAsync(
                async () =>
                {
                    await using var db = fixture.CreateDbContext();
                    Assert.Equal(0, await db.Jobs.CountAsync(j => j.Kind == JobKinds.ChargePayment && j.Status != JobStatus.Succeeded));
                },
                async () =>
                {
                    await using var db = fixture.CreateDbContext();
                    var statuses = await db.Jobs.GroupBy(j => j.Status).Select(g => $"{g.Key}: {g.Count()}").ToListAsync();
                    return $"jobs by status: {string.Join(", ", statuses)}";
                },
                TimeSpan.FromSeconds(StrandedAfterSeconds + 120));

            var audit = await PaymentAudit.SettleAsync(fixture, gateway, submissions.Accepted, TimeSpan.FromMinutes(1));
            republished += await RepublishedAsync(api);
            await using (var db = fixture.CreateDbContext())
            {
                var rows = await db.Jobs.CountAsync();
                FaultReport.Write(output, batchSize == 1 ? "kill -9 the Api ×3" : $"kill -9 the Api ×3, batches of {batchSize}", audit,
                    $"submissions until {jobs} were accepted (answers per request: {submissions.Describe()}); killed {string.Join("; ", kills)}; {rows} job rows, all succeeded: " +
                    $"payment {heldPayment} committed while the first Api's publishes were held; {audit.ProcessedNotAccepted} processed whose answer a kill cut off, {republished} published again as stranded; " +
                    $"{audit.GatewayRequests} gateway requests");
                Assert.Equal(rows, audit.Accepted + audit.ProcessedNotAccepted);
                Assert.True(await db.Ledger.AnyAsync(l => l.PaymentId == heldPayment), "the job whose publish the kill dropped never ran");
            }

            Assert.Equal(3, kills.Count);
            // The rows committed while the publishes were held had no command but the stored request.
            // The held payment's row had no command but its stored request.
            Assert.True(republished >= 1, "no stranded job was published again");
            Assert.Equal(0, audit.Lost);
            Assert.Equal(0, audit.AppliedTwice);
            Assert.Equal(audit.Accepted + audit.ProcessedNotAccepted, gateway.Charges.Count);
        }
        catch (Exception)
        {
            output.WriteLine(api.Output);
            throw;
        }
        finally
        {
            await api.DisposeAsync();
        }
    }

    /// <summary>
    /// Holds the Api's traffic to the broker, then submits <paramref name="paymentId"/> and waits until its
    /// row has committed: its publish, made after the row's commit, is held, so its request stays unanswered.
    /// </summary>
    private async Task<Task<HttpResponseMessage>> StrandAsync(OutageProxy broker, HttpClient api, Guid paymentId)
    {
        broker.Stall();
        var submitting = api.PostAsJsonAsync(
            new Uri("/api/jobs/charge-payment", UriKind.Relative),
            new { paymentId, accountId = "acct-held", amountMinor = 4_200, currency = "EUR" });
        // The publish budget (PublishBudgetSeconds), after which the Api would remove the row itself and answer
        // 503, starts only once the row has committed (JobSubmitter publishes after the insert), and the kill
        // follows as soon as this sees the row. So the wait for the commit itself, which a busy database may
        // hold up, needs no bound tied to that budget.
        await Eventually.AssertAsync(
            async () =>
            {
                await using var db = fixture.CreateDbContext();
                Assert.True(await db.Jobs.AnyAsync(j => j.Kind == JobKinds.ChargePayment && j.BusinessKey == paymentId.ToString()), "the held submission's row was not committed");
            });
        return submitting;
    }

    /// <summary>The held submission was cut off by the kill: an answer would mean its row was published or removed.</summary>
    private static async Task AssertNoAnswerAsync(Task<HttpResponseMessage> held)
    {
        try
        {
            using var response = await held;
            Assert.Fail($"the held submission was answered {(int)response.StatusCode}: its row was not left without a command");
        }
        catch (Exception exception) when (HttpNoAnswer.Is(exception))
        {
            // Killed before its publish was confirmed.
        }
    }

    /// <summary>An Api's <c>conveyor_jobs_republished_total</c>, summed over kinds (0 when it published none).</summary>
    private static async Task<double> RepublishedAsync(ServiceProcess api)
    {
        using var http = new HttpClient { BaseAddress = api.BaseAddress };
        return PrometheusText.Sum(await http.GetStringAsync(new Uri("/metrics", UriKind.Relative)), "conveyor_jobs_republished_total");
    }
}
