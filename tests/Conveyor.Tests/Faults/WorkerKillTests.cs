using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;
using Xunit.Abstractions;

namespace Conveyor.Tests.Faults;

[Collection(SecondLaneCollection.Name)]
[Trait("Category", "Faults")]
public sealed class WorkerKillTests(ConveyorFixture fixture, ITestOutputHelper output) : IAsyncLifetime
{
    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_worker_killed_with_sigkill_three_times_mid_run_loses_no_job_and_charges_none_twice()
    {
        var jobs = FaultReport.Jobs(normalRun: 1_500);
        await using var gateway = await FakePaymentGateway.StartAsync();
        // Keeps messages in flight (gateway calls, open inbox transactions) when the kill lands.
        gateway.Latency = TimeSpan.FromMilliseconds(2);
        var settings = new Dictionary<string, string?>(fixture.BaseSettings);
        foreach (var (key, value) in WorkerSettings.With(gateway))
        {
            settings[key] = value;
        }

        await using var api = await fixture.StartApiAsync(FaultReport.ApiSettings);
        var worker = await ServiceProcess.StartWorkerAsync(settings);
        var kills = new List<string>();
        try
        {
            var submissions = new JobSubmissions();
            var submitting = submissions.SubmitAsync(api.Client, jobs, clients: 16);
            foreach (var fraction in new[] { 0.2, 0.45, 0.7 })
            {
                var threshold = (int)(jobs * fraction);
                await Eventually.AssertAsync(async () => Assert.True(await LedgerCountAsync() >= threshold), TimeSpan.FromMinutes(2));
                await worker.KillAsync();
                kills.Add($"pid {worker.Id} at {await LedgerCountAsync()} processed");
                await worker.DisposeAsync();
                worker = await ServiceProcess.StartWorkerAsync(settings);
            }

            await submitting;
            var audit = await PaymentAudit.SettleAsync(fixture, gateway, submissions.Accepted, TimeSpan.FromMinutes(3));
            FaultReport.Write(output, "kill -9 the worker ×3", audit,
                $"{jobs} jobs submitted ({submissions.Describe()}); killed {string.Join("; ", kills)}; {audit.GatewayRequests} gateway requests for {audit.Accepted} payments");

            Assert.Equal(jobs, submissions.AcceptedCount);
            Assert.Equal(3, kills.Count);
            Assert.Equal(0, audit.Lost);
            Assert.Equal(0, audit.AppliedTwice);
            Assert.Equal(audit.Accepted, gateway.Charges.Count);
        }
        catch (Exception)
        {
            output.WriteLine(worker.Output);
            throw;
        }
        finally
        {
            await worker.DisposeAsync();
        }
    }

    private async Task<int> LedgerCountAsync()
    {
        await using var db = fixture.CreateDbContext();
        return await db.Ledger.CountAsync();
    }
}
