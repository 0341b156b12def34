using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Xunit.Abstractions;

namespace Conveyor.Tests.Faults;

/// <summary>
/// A server goes away in the middle of a run while clients keep submitting: the Api refuses what it
/// cannot queue (503) and every job it accepted is processed once the server is back. These stop a
/// server, so they run only from bench/run.sh faults-disruptive.
/// </summary>
[Collection(AloneCollection.Name)]
[Trait("Category", "FaultsDisruptive")]
public sealed class ServerOutageTests(ConveyorFixture fixture, ITestOutputHelper output) : IAsyncLifetime
{
    private static readonly TimeSpan BeforeOutage = TimeSpan.FromSeconds(8);
    private static readonly TimeSpan AfterOutage = TimeSpan.FromSeconds(10);

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [DisruptiveFact]
    public Task RabbitMQ_restarted_mid_run_the_Api_answers_503_meanwhile_and_loses_nothing_it_accepted() =>
        RunOutageAsync("RabbitMQ stop_app/start_app mid-run", ServerControl.StopBrokerAsync, ServerControl.StartBrokerAsync, TimeSpan.FromSeconds(15), brokerDown: true);

    [DisruptiveFact]
    public Task PostgreSQL_stopped_for_20_seconds_mid_run_loses_nothing_the_Api_accepted() =>
        RunOutageAsync("PostgreSQL stopped for 20 s mid-run", ServerControl.StopDatabaseAsync, ServerControl.StartDatabaseAsync, TimeSpan.FromSeconds(20), brokerDown: false);

    private async Task RunOutageAsync(string scenario, Func<Task> stop, Func<Task> start, TimeSpan outage, bool brokerDown)
    {
        const double perSecond = 100;
        await using var gateway = await FakePaymentGateway.StartAsync();
        var settings = new Dictionary<string, string?>(fixture.BaseSettings);
        foreach (var (key, value) in WorkerSettings.With(gateway))
        {
            settings[key] = value;
        }

        await using var api = await fixture.StartApiAsync(FaultReport.ApiSettings);
        // Declared now (MassTransit would only at its first dead-letter), so it is counted exactly at the end.
        await fixture.DeclareAsync("charge-payment_error");
        await using var worker = await ServiceProcess.StartWorkerAsync(settings);
        var submissions = new JobSubmissions();
        using var stopSubmitting = new CancellationTokenSource();
        // Clients keep submitting before, during and after the outage, however long the server's
        // own stop and start commands take.
        var submitting = submissions.SubmitAsync(api.Client, int.MaxValue, clients: 16, perSecond, stopSubmitting.Token);

        await Task.Delay(BeforeOutage);
        var acceptedBefore = submissions.AcceptedCount;
        await stop();
        var atStop = submissions.Outcomes;
        IReadOnlyDictionary<string, int> atStart;
        IReadOnlyDictionary<string, int> atRestart;
        string duringOutage;
        try
        {
            await Task.Delay(outage);
        }
        finally
        {
            // The outage window ends when the start command is given; answers after it returned come
            // from a server that is back.
            atStart = submissions.Outcomes;
            await start();
            atRestart = submissions.Outcomes;
            duringOutage = Difference(submissions.Outcomes, atStop);
        }

        await Task.Delay(AfterOutage);
        await stopSubmitting.CancelAsync();
        await submitting;
        var afterRestart = Difference(submissions.Outcomes, atRestart);
        var audit = await PaymentAudit.SettleAsync(fixture, gateway, submissions.Accepted, TimeSpan.FromMinutes(2));
        var errorMessages = await fixture.ReadyAsync("charge-payment_error");
        FaultReport.Write(output, scenario, audit,
            $"submissions at {perSecond}/s from {BeforeOutage.TotalSeconds:0} s before to {AfterOutage.TotalSeconds:0} s after a {outage.TotalSeconds:0} s outage ({acceptedBefore} accepted before it); answers: {submissions.Describe()}; while the server was down: {duringOutage}; after it was back: {afterRestart}; {submissions.DescribeLatency()}; worker {(worker.HasExited ? "exited" : "kept running")}; {audit.DeadLettered} dead-lettered, {errorMessages} in charge-payment_error, {audit.ProcessedNotAccepted} processed though refused (confirm lost)");
        if (audit.Lost > 0)
        {
            output.WriteLine(worker.Output);
        }

        Assert.True(acceptedBefore > 0, $"nothing was accepted before the outage ({submissions.Describe()})");
        // Without its broker or its database the Api refuses with 503 rather than failing: an outage
        // that left no 503 did not reach the Api, and the test would prove nothing.
        Assert.True(Since(atStop, atStart, "503") > 0, $"the Api never answered 503 while the server was down ({duringOutage})");
        Assert.Equal(0, submissions.Count("500"));
        // The Api recovers by itself: it accepts again once the server is back.
        Assert.True(Since(atRestart, submissions.Outcomes, "202") > 0, $"no 202 after the server was back ({afterRestart})");
        Assert.Equal(0, audit.Lost);
        Assert.Equal(0, audit.AppliedTwice);
        Assert.Equal(0, audit.DeadLettered);
    }

    private static int Since(IReadOnlyDictionary<string, int> before, IReadOnlyDictionary<string, int> now, string outcome) =>
        now.GetValueOrDefault(outcome) - before.GetValueOrDefault(outcome);

    private static string Difference(IReadOnlyDictionary<string, int> now, IReadOnlyDictionary<string, int> before) =>
        string.Join(", ", now.Select(o => (o.Key, Count: o.Value - before.GetValueOrDefault(o.Key)))
            .Where(o => o.Count > 0)
            .OrderBy(o => o.Key, StringComparer.Ordinal)
            .Select(o => $"{o.Key}: {o.Count}"));
}
