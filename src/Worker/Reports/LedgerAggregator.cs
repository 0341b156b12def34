using System.Data.Common;
using Conveyor.Storage;
using Microsoft.EntityFrameworkCore;
using Microsoft.EntityFrameworkCore.Storage;
using Npgsql;

namespace Conveyor.Worker.Reports;

public sealed record CurrencyTotal(string Currency, long Count, long TotalMinor);

/// <summary>Walks the ledger in keyset pages (by payment id) and sums amounts per currency.</summary>
public sealed class LedgerAggregator(ConveyorDbContext db)
{
    private readonly SortedDictionary<string, (long Count, long Total)> _totals = new(StringComparer.Ordinal);
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
        command.CommandText = """
            SELECT payment_id, currency, amount_minor FROM ledger_entries
             WHERE payment_id > @after
               AND (@account::text IS NULL OR account_id = @account)
               AND (@currency::text IS NULL OR currency = @currency)
             ORDER BY payment_id
             LIMIT @limit
            """;
        Add(command, "after", _after);
        Add(command, "account", (object?)accountId ?? DBNull.Value);
        Add(command, "currency", (object?)currency ?? DBNull.Value);
        Add(command, "limit", pageSize);

        var rows = 0;
        await using var reader = await command.ExecuteReaderAsync(cancellationToken);
        while (await reader.ReadAsync(cancellationToken))
        {
            _after = reader.GetGuid(0);
            var code = reader.GetString(1);
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
