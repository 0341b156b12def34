using Conveyor.Tests.Infrastructure;
using Conveyor.Worker.Reports;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Worker;

/// <summary>
/// A report of one account reads about the account's rows, page by page, however large the rest of
/// the ledger and whatever the planner believes of it (statistics from before the account was busy).
/// By (account_id, currency) alone, each page either sorted the account's remaining rows again or
/// walked the ledger of every account. A database of the test's own (ADR 0010).
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class LedgerPagingPlanTests(ConveyorFixture fixture) : ScratchDatabaseTest(fixture, "ledger")
{
    private const string Account = "acct-busy";
    private const int AccountRows = 3_000;

    /// <summary>One charge in this many is the busy account's: its rows are spread over the whole table, as over time.</summary>
    private const int Every = 21;
    private const int PageSize = 100;

    public override async Task InitializeAsync()
    {
        await base.InitializeAsync();
        await Database.MigrateAsync();
        // Statistics from a quiet spell, then the ledger of many accounts and one busy one, in two currencies.
        await Database.ExecuteAsync($"""
            ALTER TABLE ledger_entries SET (autovacuum_enabled = false);
            INSERT INTO ledger_entries (payment_id, account_id, amount_minor, currency, gateway_charge_id, charged_at)
            SELECT gen_random_uuid(), 'acct-quiet', 100, 'EUR', 'ch', now() FROM generate_series(1, 500);
            ANALYZE ledger_entries;
            INSERT INTO ledger_entries (payment_id, account_id, amount_minor, currency, gateway_charge_id, charged_at)
            SELECT gen_random_uuid(), CASE WHEN g % {Every} = 0 THEN '{Account}' ELSE 'acct-' || (g % 1000) END,
                   g, CASE WHEN g % 3 = 0 THEN 'USD' ELSE 'EUR' END, 'ch', now()
              FROM generate_series(1, {AccountRows * Every}) g;
            """);
    }

    [Theory]
    [InlineData(null)]
    [InlineData("USD")]
    public async Task A_report_of_one_account_reads_about_its_rows(string? currency)
    {
        var before = await Database.PagesReadAsync("ledger_entries");

        LedgerAggregator aggregator;
        await using (var report = Database.CreateDbContext())
        {
            aggregator = new LedgerAggregator(report);
            while (await aggregator.NextPageAsync(Account, currency, PageSize, CancellationToken.None))
            {
            }
        }

        var read = await Database.PagesReadAsync("ledger_entries") - before;
        // Every row of the account, once, and the right sums per currency.
        await using var db = Database.CreateDbContext();
        var sums = await db.Ledger.Where(l => l.AccountId == Account && (currency == null || l.Currency == currency))
            .GroupBy(l => l.Currency).Select(g => new { Currency = g.Key, Count = g.LongCount(), Total = g.Sum(l => l.AmountMinor) })
            .ToListAsync();
        var expected = sums.OrderBy(t => t.Currency, StringComparer.Ordinal).Select(t => new CurrencyTotal(t.Currency, t.Count, t.Total)).ToList();
        Assert.Equal(expected, aggregator.Totals);
        Assert.Equal(expected.Sum(t => t.Count), aggregator.RowsScanned);
        // About 3,100 pages (heap and index) either way; walking the ledger, or reading the account's
        // remaining rows for every page, read 20,098 with the (account_id, currency) index.
        Assert.True(read < 2 * AccountRows, $"the report read {read} pages of ledger_entries and its indexes");
    }
}
