using System.Globalization;
using System.Net;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Conveyor.Tests.Faults;

/// <summary>
/// RabbitMQ going away mid-run as its clients see a restart (every connection reset, new ones
/// refused) while clients keep submitting: the normal-run version of
/// <see cref="ServerOutageTests"/>' broker restart. The Api's and the worker's AMQP connections go
/// through relays the test cuts, so the shared broker keeps running.
/// </summary>
[Collection(SecondLaneCollection.Name)]
[Trait("Category", "Faults")]
public sealed class BrokerOutageTests(ConveyorFixture fixture, ITestOutputHelper output) : IAsyncLifetime
{
    private const double PerSecond = 50;
    private const int AcceptedBefore = 150;
    private const int AcceptedAfter = 150;
    private static readonly TimeSpan Outage = TimeSpan.FromSeconds(12);

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task RabbitMQ_cut_off_mid_run_the_Api_answers_503_meanwhile_both_reconnect_by_themselves_and_nothing_accepted_is_lost()
    {
        await using var gateway = await FakePaymentGateway.StartAsync();
        // Keeps charges in flight (delivered, not yet acknowledged) when the connections are cut.
        gateway.Latency = TimeSpan.FromMilliseconds(100);
        // One relay each, so that each side's reconnection attempts are counted apart.
        await using var apiBroker = await OutageProxy.ToAsync(fixture.Servers.RabbitHost, fixture.Servers.RabbitPort);
        await using var workerBroker = await OutageProxy.ToAsync(fixture.Servers.RabbitHost, fixture.Servers.RabbitPort);

        var apiSettings = FaultReport.ApiSettings;
        apiSettings["RabbitMq:Port"] = Port(apiBroker);
        await using var api = await fixture.StartApiAsync(apiSettings);
        await api.WaitUntilReadyAsync();
        var workerSettings = new Dictionary<string, string?>(fixture.BaseSettings);
        foreach (var (key, value) in WorkerSettings.With(gateway))
        {
            workerSettings[key] = value;
        }

        workerSettings["RabbitMq:Port"] = Port(workerBroker);
        // Declared now (MassTransit would only at its first dead-letter), so it is counted exactly at the end.
        await fixture.DeclareAsync("charge-payment_error");
        await using var worker = await ServiceProcess.StartWorkerAsync(workerSettings);

        using var answers = new RetryAfterCounter(new SocketsHttpHandler());
        using var client = new HttpClient(answers) { BaseAddress = api.BaseAddress, Timeout = TimeSpan.FromSeconds(30) };
        client.DefaultRequestHeaders.Add("X-Api-Key", TestKeys.Admin);
        var submissions = new JobSubmissions();
        using var stopSubmitting = new CancellationTokenSource();
        var submitting = submissions.SubmitAsync(client, int.MaxValue, clients: 16, PerSecond, stopSubmitting.Token);
        try
        {
            await Eventually.AssertAsync(
                () => Assert.True(submissions.AcceptedCount >= AcceptedBefore, $"{submissions.AcceptedCount} accepted before the outage ({submissions.Describe()})"),
                TimeSpan.FromSeconds(60));
            var atCut = submissions.Outcomes;
            apiBroker.Cut();
            workerBroker.Cut();
            // The fault's own length, as a broker restart takes; no work is waited for here.
            await Task.Delay(Outage);
            var atRestore = submissions.Outcomes;
            var acceptedAtRestore = submissions.AcceptedCount;
            apiBroker.Restore();
            workerBroker.Restore();

            // Neither is restarted: the Api accepts again and the worker consumes again by themselves.
            await Eventually.AssertAsync(
                () => Assert.True(submissions.AcceptedCount >= acceptedAtRestore + AcceptedAfter, $"{submissions.AcceptedCount - acceptedAtRestore} accepted after the restore ({submissions.Describe()})"),
                TimeSpan.FromSeconds(60));
            await stopSubmitting.CancelAsync();
            await submitting;
            await Eventually.AssertAsync(
                async () => Assert.Equal(1, (await fixture.Rabbit.QueueAsync(fixture.VirtualHost, "charge-payment"))?.Consumers),
                TimeSpan.FromSeconds(60));
            await AssertReadyAsync(api.BaseAddress);
            await AssertReadyAsync(worker.BaseAddress);

            var audit = await PaymentAudit.SettleAsync(fixture, gateway, submissions.Accepted, TimeSpan.FromMinutes(2));
            var errorMessages = await fixture.ReadyAsync("charge-payment_error");
            var whileCut = Difference(atRestore, atCut);
            var afterRestore = Difference(submissions.Outcomes, atRestore);
            FaultReport.Write(output, $"RabbitMQ connections cut for {Outage.TotalSeconds:0} s mid-run (relay)", audit,
                $"submissions at {PerSecond}/s from {AcceptedBefore} accepted before to {AcceptedAfter} accepted after the cut ({acceptedAtRestore} accepted before the restore); answers: {submissions.Describe()}; while cut: {whileCut}; after the restore: {afterRestore}; {answers.Describe()}; reconnection attempts refused while cut: Api {apiBroker.Refused}, worker {workerBroker.Refused}; {submissions.DescribeLatency()}; worker {(worker.HasExited ? "exited" : "kept running")}; {audit.DeadLettered} dead-lettered, {errorMessages} in charge-payment_error, {audit.ProcessedNotAccepted} processed though refused (confirm lost); {audit.GatewayRequests} gateway requests");

            // A client that kept its connection would never have tried again.
            Assert.True(apiBroker.Refused > 0, "the Api never reconnected while cut: its connection was not severed");
            Assert.True(workerBroker.Refused > 0, "the worker never reconnected while cut: its connection was not severed");
            Assert.True(Since(atCut, atRestore, "503") > 0, $"no 503 while the broker was cut ({whileCut})");
            Assert.Equal(0, answers.WithoutRetryAfter);
            Assert.True(submissions.Outcomes.Keys.All(o => o is "202" or "503"), $"answers other than 202 and 503 (a 500, or no answer in time): {submissions.Describe()}");
            Assert.True(Since(atRestore, submissions.Outcomes, "202") > 0, $"no 202 after the restore ({afterRestore})");
            Assert.False(worker.HasExited, "the worker exited");
            Assert.Equal(0, audit.Lost);
            Assert.Equal(0, audit.AppliedTwice);
            Assert.Equal(0, audit.DeadLettered);
            Assert.Equal(0u, errorMessages);
        }
        catch (Exception)
        {
            output.WriteLine(worker.Output);
            throw;
        }
        finally
        {
            await stopSubmitting.CancelAsync();
            await submitting;
        }
    }

    private static string Port(OutageProxy proxy) => proxy.Port.ToString(CultureInfo.InvariantCulture);

    private static async Task AssertReadyAsync(Uri service)
    {
        using var http = new HttpClient { BaseAddress = service, Timeout = TimeSpan.FromSeconds(10) };
        await Eventually.AssertAsync(async () =>
        {
            using var ready = await http.GetAsync(new Uri("/health/ready", UriKind.Relative));
            Assert.Equal(HttpStatusCode.OK, ready.StatusCode);
        }, TimeSpan.FromSeconds(60));
    }

    private static int Since(IReadOnlyDictionary<string, int> before, IReadOnlyDictionary<string, int> now, string outcome) =>
        now.GetValueOrDefault(outcome) - before.GetValueOrDefault(outcome);

    private static string Difference(IReadOnlyDictionary<string, int> now, IReadOnlyDictionary<string, int> before) =>
        string.Join(", ", now.Keys.Select(o => (Outcome: o, Count: Since(before, now, o)))
            .Where(o => o.Count > 0)
            .OrderBy(o => o.Outcome, StringComparer.Ordinal)
            .Select(o => $"{o.Outcome}: {o.Count}"));

    /// <summary>Counts the 503 answers with and without Retry-After (<see cref="JobSubmissions"/> keeps only the status).</summary>
    private sealed class RetryAfterCounter(HttpMessageHandler inner) : DelegatingHandler(inner)
    {
        private int _with;
        private int _without;

        public int WithoutRetryAfter => Volatile.Read(ref _without);

        public string Describe() => $"503s with Retry-After {Volatile.Read(ref _with)}, without {WithoutRetryAfter}";

        protected override async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, CancellationToken cancellationToken)
        {
            var response = await base.SendAsync(request, cancellationToken);
            if (response.StatusCode == HttpStatusCode.ServiceUnavailable)
            {
                Interlocked.Increment(ref response.Headers.RetryAfter is null ? ref _without : ref _with);
            }

            return response;
        }
    }
}
