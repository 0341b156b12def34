using System.Globalization;
using System.Text.Json;
using Conveyor.Contracts;
using Conveyor.Contracts.Reports;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;
using Npgsql;
using NpgsqlTypes;

namespace Conveyor.Tests.Worker;

/// <summary>
/// A currency's total in a report can exceed a 64-bit integer: some 9,224 charges at the largest amount
/// a charge may have (<see cref="ContractRules.MaxAmountMinor"/>) already do. The report states it
/// exactly, a JSON integer as before. Summed in a long, the report overflowed at that charge, was
/// refused for good (an OverflowException is no transient failure) and could never be produced.
/// </summary>
[Collection(ThirdLaneCollection.Name)]
public sealed class ReportTotalBeyondInt64Tests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string Account = "acct-large";

    /// <summary>Charges near the largest amount in EUR: their sum passes <see cref="long.MaxValue"/> by about 76e15.</summary>
    private const int LargeCharges = 9_300;

    public async Task InitializeAsync()
    {
        await fixture.ResetAsync();
        await using var db = fixture.CreateDbContext();
        // Amounts a little apart, so a total rounded anywhere (a double on the way) shows in its last digits.
        await db.Database.ExecuteSqlRawAsync($"""
            INSERT INTO ledger_entries (payment_id, account_id, amount_minor, currency, gateway_charge_id, charged_at)
            SELECT gen_random_uuid(), '{Account}', {ContractRules.MaxAmountMinor} - g, 'EUR', 'ch', now()
              FROM generate_series(1, {LargeCharges}) g;
            INSERT INTO ledger_entries (payment_id, account_id, amount_minor, currency, gateway_charge_id, charged_at)
            SELECT gen_random_uuid(), CASE WHEN g % 2 = 0 THEN '{Account}' ELSE 'acct-other' END, 100 * g,
                   CASE WHEN g % 3 = 0 THEN 'USD' ELSE 'EUR' END, 'ch', now()
              FROM generate_series(1, 30) g;
            """);
    }

    public Task DisposeAsync() => Task.CompletedTask;

    [Theory]
    [InlineData(Account, null)]
    [InlineData(Account, "EUR")]
    [InlineData(null, "EUR")]
    [InlineData(null, null)]
    public async Task A_currency_total_beyond_a_64_bit_integer_is_reported_exactly(string? accountId, string? currency)
    {
        var expected = await TotalsAsync(accountId, currency);
        Assert.True(decimal.Parse(expected["EUR"].Total, CultureInfo.InvariantCulture) > long.MaxValue);

        await using (await fixture.StartWorkerAsync(WorkerSettings.With()))
        await using (var publisher = await TestPublisher.StartAsync(fixture))
        {
            var report = new GenerateReport { ReportId = Guid.NewGuid(), AccountId = accountId, Currency = currency, PageSize = 1_000 };
            await publisher.PublishAsync(report);

            var job = await fixture.WaitForSettledJobAsync(report.ReportId.ToString());
            Assert.True(job.Status == JobStatus.Succeeded, $"the report ended {job.Status}: {job.LastError}");

            await using var check = fixture.CreateDbContext();
            var stored = await check.Reports.SingleAsync(r => r.ReportId == report.ReportId);
            using var totals = JsonDocument.Parse(stored.Totals);
            // The total's own digits as the JSON holds them: an integer, no fraction, no exponent.
            var reported = totals.RootElement.EnumerateArray().ToDictionary(
                t => t.GetProperty("currency").GetString()!,
                t => (Count: t.GetProperty("count").GetInt64(), Total: t.GetProperty("totalMinor").GetRawText()));
            Assert.Equal(expected, reported);
            Assert.Equal(expected.Values.Sum(t => t.Count), stored.RowsScanned);
        }
    }

    /// <summary>The ledger's totals per currency as PostgreSQL sums them, exactly (its sum of bigint is a numeric).</summary>
    private async Task<Dictionary<string, (long Count, string Total)>> TotalsAsync(string? accountId, string? currency)
    {
        await using var connection = new NpgsqlConnection(fixture.ConnectionString);
        await connection.OpenAsync();
        await using var command = new NpgsqlCommand("""
            SELECT currency, count(*), sum(amount_minor)::text FROM ledger_entries
             WHERE (@account IS NULL OR account_id = @account) AND (@currency IS NULL OR currency = @currency)
             GROUP BY currency
            """, connection);
        command.Parameters.Add(new NpgsqlParameter("account", NpgsqlDbType.Text) { Value = (object?)accountId ?? DBNull.Value });
        command.Parameters.Add(new NpgsqlParameter("currency", NpgsqlDbType.Text) { Value = (object?)currency ?? DBNull.Value });
        var totals = new Dictionary<string, (long Count, string Total)>();
        await using var reader = await command.ExecuteReaderAsync();
        while (await reader.ReadAsync())
        {
            totals[reader.GetString(0)] = (reader.GetInt64(1), reader.GetString(2));
        }

        return totals;
    }
}
