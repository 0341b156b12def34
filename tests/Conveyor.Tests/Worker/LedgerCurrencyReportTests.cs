using System.Text.Json;
using Conveyor.Contracts.Reports;
using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Reports;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Worker;

/// <summary>
/// A report of one currency over every account reads about that currency's rows, however large the
/// rest of the ledger and whatever the planner believes of it (statistics from a quiet spell, ADR 0010):
/// for a currency nobody pays in, an empty report after a probe or two. Its pages walked the primary key
/// comparing every row's currency as text, and its count scanned the table, so on a large ledger the
/// report ran into the statement timeout without finding a row. A worker on a database of the test's own.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class LedgerCurrencyReportTests(ConveyorFixture fixture) : ScratchDatabaseTest(fixture, "ledgercurrency")
{
    private const int LedgerRows = 60_000;

    /// <summary>One charge in this many is in GBP: a rare currency, its rows spread over the whole table, as over time.</summary>
    private const int GbpEvery = 200;

    public override async Task InitializeAsync()
    {
        await base.InitializeAsync();
        await Database.MigrateAsync();
        await Database.ExecuteAsync($"""
            ALTER TABLE ledger_entries SET (autovacuum_enabled = false);
            INSERT INTO ledger_entries (payment_id, account_id, amount_minor, currency, gateway_charge_id, charged_at)
            SELECT gen_random_uuid(), 'acct-quiet', 100, 'EUR', 'ch', now() FROM generate_series(1, 500);
            ANALYZE ledger_entries;
            INSERT INTO ledger_entries (payment_id, account_id, amount_minor, currency, gateway_charge_id, charged_at)
            SELECT gen_random_uuid(), 'acct-' || (g % 1000), g,
                   CASE WHEN g % {GbpEvery} = 0 THEN 'GBP' WHEN g % 3 = 0 THEN 'USD' ELSE 'EUR' END, 'ch', now()
              FROM generate_series(1, {LedgerRows}) g;
            """);
    }

    [Theory]
    [InlineData("JPY")] // nobody pays in it
    [InlineData("GBP")] // a few charges, spread through the ledger
    public async Task A_report_of_one_currency_reads_about_its_rows(string currency)
    {
        var report = new GenerateReport { ReportId = Guid.NewGuid(), Currency = currency, PageSize = 100 };
        var before = await Database.PagesReadAsync("ledger_entries");

        await using (await Fixture.StartWorkerAsync(WorkerSettings.With().Override(("ConnectionStrings:Conveyor", Database.ConnectionString))))
        await using (var publisher = await TestPublisher.StartAsync(Fixture))
        {
            await publisher.PublishAsync(report);
            await Eventually.AssertAsync(async () =>
            {
                await using var db = Database.CreateDbContext();
                Assert.True(await db.Reports.AnyAsync(r => r.ReportId == report.ReportId), "no report yet");
            });
        }

        var read = await Database.PagesReadAsync("ledger_entries") - before;
        await using var check = Database.CreateDbContext();
        var sums = await check.Ledger.Where(l => l.Currency == currency)
            .GroupBy(l => l.Currency).Select(g => new { Currency = g.Key, Count = g.LongCount(), Total = g.Sum(l => l.AmountMinor) })
            .ToListAsync();
        var expected = sums.Select(t => new CurrencyTotal(t.Currency, t.Count, t.Total)).ToList();
        var stored = await check.Reports.SingleAsync(r => r.ReportId == report.ReportId);
        Assert.Equal(expected, JsonSerializer.Deserialize<List<CurrencyTotal>>(stored.Totals, JsonSerializerOptions.Web));
        Assert.Equal(expected.Sum(t => t.Count), stored.RowsScanned);
        Assert.Equal(currency == "JPY" ? 0 : LedgerRows / GbpEvery, stored.RowsScanned);
        // Each of its rows' heap pages twice (the count, then the page that reads the row) and a few index
        // pages: 0 and about 630 pages. Walking the ledger (the count a sequential scan, each page the
        // primary key on from the last row, comparing each row's currency as text) read 1,244 and 2,877.
        var allowed = 3 * stored.RowsScanned + 20;
        Assert.True(read < allowed, $"the report read {read} pages of ledger_entries and its indexes, more than {allowed}");
    }
}
