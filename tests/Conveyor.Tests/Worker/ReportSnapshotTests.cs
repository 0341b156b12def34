using System.Text.Json;
using Conveyor.Contracts.Reports;
using Conveyor.Storage.Jobs;
using Conveyor.Storage.Payments;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Reports;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Worker;

/// <summary>
/// A report totals the ledger as it was when the report started. Charges committed while it pages
/// through the ledger are in none of its totals, whether their keys fall behind the page it has reached
/// or ahead of it: read in statements of their own, the pages counted those ahead and missed those
/// behind, totals of no moment of the ledger. The charges arrive between two pages for certain: a
/// trigger writes them with the report's first progress update after a page.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class ReportSnapshotTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Account = "acct-snapshot";
    private const int AccountRows = 20;

    public Task InitializeAsync() => fixture.ResetAsync();

    public Task DisposeAsync() => Task.CompletedTask;

    [Theory]
    [InlineData(Account, null)]
    [InlineData(Account, "EUR")]
    [InlineData(null, "EUR")]
    [InlineData(null, null)]
    public async Task Charges_committed_while_a_report_runs_are_not_in_it(string? accountId, string? currency)
    {
        await using (var db = fixture.CreateDbContext())
        {
            db.Ledger.AddRange(Enumerable.Range(1, AccountRows).Select(i => Charge(Account, "EUR", i)));
            db.Ledger.AddRange(Enumerable.Range(1, 5).Select(i => Charge("acct-other", i % 2 == 0 ? "EUR" : "USD", 100 * i)));
            await db.SaveChangesAsync();
        }

        var expected = await TotalsAsync(accountId, currency);
        // Charges of the report's account, in its currency and in another, with the lowest and the
        // highest payment ids there are: after the first page, behind the boundary of every kind of
        // page and ahead of it.
        await using var lateCharges = await TestTrigger.CreateAsync(fixture, "test_report_late_charges", "jobs", $"""
            CREATE SEQUENCE test_report_late_charges;
            CREATE FUNCTION test_report_late_charges() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
              IF nextval('test_report_late_charges') = 1 THEN
                INSERT INTO ledger_entries (payment_id, account_id, amount_minor, currency, gateway_charge_id, charged_at) VALUES
                  ('00000000-0000-0000-0000-000000000001', '{Account}', 1000000, 'EUR', 'ch_late_behind', now()),
                  ('00000000-0000-0000-0000-000000000002', '{Account}', 1000000, 'USD', 'ch_late_usd', now()),
                  ('ffffffff-ffff-ffff-ffff-ffffffffffff', '{Account}', 1000000, 'EUR', 'ch_late_ahead', now());
              END IF;
              RETURN NEW;
            END $$;
            CREATE TRIGGER test_report_late_charges AFTER UPDATE OF progress ON jobs
              FOR EACH ROW WHEN (NEW.progress > 0 AND NEW.status = '{JobStatus.Running}') EXECUTE FUNCTION test_report_late_charges();
            """);
        await using var worker = await fixture.StartWorkerAsync(WorkerSettings.With());
        await using var publisher = await TestPublisher.StartAsync(fixture);
        var report = new GenerateReport { ReportId = Guid.NewGuid(), AccountId = accountId, Currency = currency, PageSize = 1 };

        await publisher.PublishAsync(report);
        await fixture.WaitForJobAsync(report.ReportId, JobStatus.Succeeded);

        // It fires after each page; the charges went in at the first, so pages were read after them.
        Assert.True(await lateCharges.FiredAsync() > 1, "no page was read after the late charges");
        await using var check = fixture.CreateDbContext();
        Assert.Equal(3, await check.Ledger.CountAsync(l => l.GatewayChargeId.StartsWith("ch_late_")));
        var stored = await check.Reports.SingleAsync(r => r.ReportId == report.ReportId);
        Assert.Equal(expected, JsonSerializer.Deserialize<List<CurrencyTotal>>(stored.Totals, JsonSerializerOptions.Web));
        Assert.Equal(expected.Sum(t => t.Count), stored.RowsScanned);
    }

    private static LedgerEntry Charge(string accountId, string currency, long amountMinor) => new()
    {
        PaymentId = Guid.NewGuid(),
        AccountId = accountId,
        AmountMinor = amountMinor,
        Currency = currency,
        GatewayChargeId = $"ch_{Guid.NewGuid():N}",
        ChargedAt = DateTimeOffset.UtcNow,
    };

    /// <summary>The ledger's totals now, as a report with these filters states them.</summary>
    private async Task<List<CurrencyTotal>> TotalsAsync(string? accountId, string? currency)
    {
        await using var db = fixture.CreateDbContext();
        var sums = await db.Ledger
            .Where(l => (accountId == null || l.AccountId == accountId) && (currency == null || l.Currency == currency))
            .GroupBy(l => l.Currency).Select(g => new { Currency = g.Key, Count = g.LongCount(), Total = g.Sum(l => l.AmountMinor) })
            .ToListAsync();
        return [.. sums.OrderBy(t => t.Currency, StringComparer.Ordinal).Select(t => new CurrencyTotal(t.Currency, t.Count, t.Total))];
    }
}
