using System.Data.Common;
using Conveyor.Storage;
using Microsoft.EntityFrameworkCore;
using Microsoft.EntityFrameworkCore.Storage;
using Npgsql;

namespace Conveyor.Worker.Reports;

public sealed record CurrencyTotal(string Currency, long Count, long TotalMinor);

/// <summary>
/// Walks the ledger in keyset pages and sums amounts per currency. A report of one account pages in
/// (currency, payment id) order through the (account_id, currency, payment_id) index, one range per
/// page, reading only the rows it returns whatever the planner's statistics (ADR 0010). A report of
/// every account walks the primary key once, in payment id order (with a currency, the other
/// currencies' rows are read on the way, once in all).
/// </summary>
public sealed class LedgerAggregator(ConveyorDbContext db)
{
    private const string AccountPage = """
        SELECT payment_id, currency, amount_minor FROM ledger_entries
         WHERE account_id = @account
           AND (currency, payment_id) > (CAST(@after_currency AS character(3)), @after)
         ORDER BY currency, payment_id
         LIMIT @limit
        """;

    private const string AccountCurrencyPage = """
        SELECT payment_id, currency, amount_minor FROM ledger_entries
         WHERE account_id = @account AND currency = CAST(@currency AS character(3))
           AND payment_id > @after
         ORDER BY payment_id
         LIMIT @limit
        """;

    private const string LedgerPage = """
        SELECT payment_id, currency, amount_minor FROM ledger_entries
         WHERE payment_id > @after
           AND (@currency::text IS NULL OR currency = @currency)
         ORDER BY payment_id
         LIMIT @limit
        """;

    private readonly SortedDictionary<string, (long Count, long Total)> _totals = new(StringComparer.Ordinal);
    private string _afterCurrency = "";
    private Guid _after = Guid.Empty;

    public long RowsScanned { get; private set; }

    public IReadOnlyList<CurrencyTotal> Totals =>
        [.. _totals.Select(t => new CurrencyTotal(t.Key, t.Value.Count, t.Value.Total))];

    public Task<int> CountAsync(string? accountId, string? currency, CancellationToken cancellationToken) =>
        db.Ledger.AsNoTracking()
            .Where(l => accountId == null || l.AccountId == accountId)
            .Where(l => currency == null || l.Currency == currency)
            .CountAsync(cancellationToken);

    /// <summary>Reads the next page; false when the ledger is exhausted.</summary>
    public async Task<bool> NextPageAsync(string? accountId, string? currency, int pageSize, CancellationToken cancellationToken)
    {
        await db.Database.OpenConnectionAsync(cancellationToken);
        await using var command = db.Database.GetDbConnection().CreateCommand();
        command.Transaction = db.Database.CurrentTransaction?.GetDbTransaction();
        command.CommandText = (accountId, currency) switch
        {
            (null, _) => LedgerPage,
            (_, null) => AccountPage,
            _ => AccountCurrencyPage,
        };
        Add(command, "account", (object?)accountId ?? DBNull.Value);
        Add(command, "currency", (object?)currency ?? DBNull.Value);
        Add(command, "after_currency", _afterCurrency);
        Add(command, "after", _after);
        Add(command, "limit", pageSize);

        var rows = 0;
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            _after = reader.GetGuid(0);
            var code = reader.GetString(1);
            _afterCurrency = code;
            var amount = reader.GetInt64(2);
            var (count, total) = _totals.GetValueOrDefault(code);
            _totals[code] = (count + 1, checked(total + amount));
            rows++;
        }

        RowsScanned += rows;
        return rows == pageSize;
    }

    private static void Add(DbCommand command, string name, object value) =>
        command.Parameters.Add(new NpgsqlParameter(name, value));
}
