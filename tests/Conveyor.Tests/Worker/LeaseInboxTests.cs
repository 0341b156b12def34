using Conveyor.Contracts.Reports;
using Conveyor.Storage.Inbox;
using Conveyor.Storage.Jobs;
using Conveyor.Storage.Payments;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;
using Npgsql;

namespace Conveyor.Tests.Worker;

/// <summary>
/// The lease inbox of long jobs (GenerateReport): a failed attempt never leaves its lease behind.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class LeaseInboxTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Account = "acct-lease";
    private const int LedgerRows = 200;

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Fact]
    public async Task A_failure_between_the_claim_and_the_run_releases_the_lease_so_the_retry_runs_at_once()
    {
        await SeedLedgerAsync();
        var report = NewReport(pageSize: 50);
        var key = report.ReportId.ToString();
        // The first write of the job's row, the attempt's start right after the claim, fails transiently;
        // nextval is not rolled back with the statement it fails, so later writes pass.
        await using var fault = await TestTrigger.CreateAsync(fixture, "lease_test_start_fails", "jobs", $"""
            CREATE SEQUENCE lease_test_start_fails;
            CREATE FUNCTION lease_test_start_fails() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF nextval('lease_test_start_fails') = 1 THEN
                RAISE EXCEPTION 'test: the job row cannot be written now' USING ERRCODE = '40001';
              END IF;
              RETURN NEW;
            END $$;
            CREATE TRIGGER lease_test_start_fails BEFORE INSERT OR UPDATE ON jobs
              FOR EACH ROW WHEN (NEW.business_key = '{key}') EXECUTE FUNCTION lease_test_start_fails();
            """);
        // A lease left behind would hold every copy of the message off for ten minutes.
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With().Override(
            ("Consumers:GenerateReport:LeaseSeconds", "600")));
        await using var publisher = await TestPublisher.StartAsync(fixture);

        await publisher.PublishAsync(report);

        await Eventually.AssertAsync(async () =>
        {
            await using var db = fixture.CreateDbContext();
            Assert.Equal(JobStatus.Succeeded, (await db.Jobs.SingleAsync(j => j.BusinessKey == key)).Status);
        }, DescribeAsync, TimeSpan.FromSeconds(30));
        Assert.True(await fault.FiredAsync() > 1, "the job row's first write did not fail");
        await using var check = fixture.CreateDbContext();
        // The in-memory retry ran it: no copy was deferred, and the start that failed counted nothing.
        Assert.Equal(1, (await check.Jobs.SingleAsync(j => j.BusinessKey == key)).Attempts);
        Assert.Equal(0, await check.ScheduledMessages.CountAsync());
        Assert.Equal(LedgerRows, (await check.Reports.SingleAsync(r => r.ReportId == report.ReportId)).RowsScanned);
        Assert.Equal(InboxStatus.Done, (await check.Inbox.SingleAsync(i => i.MessageKey == key)).Status);
    }

    private static GenerateReport NewReport(int pageSize) => new() { ReportId = Guid.NewGuid(), AccountId = Account, PageSize = pageSize };

    private async Task SeedLedgerAsync()
    {
        await using var db = fixture.CreateDbContext();
        db.Ledger.AddRange(Enumerable.Range(1, LedgerRows).Select(i => new LedgerEntry
        {
            PaymentId = Guid.NewGuid(),
            AccountId = Account,
            AmountMinor = i,
            Currency = "EUR",
            GatewayChargeId = $"ch_{i}",
            ChargedAt = DateTimeOffset.UtcNow,
        }));
        await db.SaveChangesAsync();
    }

    private async Task<string> DescribeAsync()
    {
        await using var db = fixture.CreateDbContext();
        var jobs = await db.Jobs.AsNoTracking().Select(j => $"job {j.Status} attempts {j.Attempts} progress {j.Progress} error {j.LastError}").ToListAsync();
        var inbox = await db.Inbox.AsNoTracking().Select(i => $"inbox {i.Status} owner {i.LeaseOwner} until {i.LeaseExpiresAt}").ToListAsync();
        var parked = await db.ScheduledMessages.AsNoTracking().Select(s => $"scheduled {s.DedupeKey} due {s.DueAt}").ToListAsync();
        return string.Join(Environment.NewLine, jobs.Concat(inbox).Concat(parked));
    }

    /// <summary>
    /// A trigger the test adds to a table of this run's database, with its function and a sequence
    /// (all named alike) that counts how often it fired; dropped when disposed.
    /// </summary>
    private sealed class TestTrigger(ConveyorFixture fixture, string name, string table) : IAsyncDisposable
    {
        private bool _dropped;

        public static async Task<TestTrigger> CreateAsync(ConveyorFixture fixture, string name, string table, string sql)
        {
            await ExecuteAsync(fixture, sql);
            return new TestTrigger(fixture, name, table);
        }

        public async Task<long> FiredAsync()
        {
            await using var connection = new NpgsqlConnection(fixture.ConnectionString);
            await connection.OpenAsync();
            await using var command = new NpgsqlCommand($"SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM {name}", connection);
            return (long)(await command.ExecuteScalarAsync() ?? 0L);
        }

        public async ValueTask DisposeAsync()
        {
            if (!_dropped)
            {
                _dropped = true;
                await ExecuteAsync(fixture, $"DROP TRIGGER IF EXISTS {name} ON {table}; DROP FUNCTION IF EXISTS {name}(); DROP SEQUENCE IF EXISTS {name}");
            }
        }

        private static async Task ExecuteAsync(ConveyorFixture fixture, string sql)
        {
            await using var connection = new NpgsqlConnection(fixture.ConnectionString);
            await connection.OpenAsync();
            await using var command = new NpgsqlCommand(sql, connection);
            await command.ExecuteNonQueryAsync();
        }
    }
}
