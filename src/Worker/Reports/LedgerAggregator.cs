using System.Data;
using System.Data.Common;
using System.Globalization;
using Conveyor.Storage;
using Microsoft.EntityFrameworkCore;
using Microsoft.EntityFrameworkCore.Storage;
using Npgsql;

namespace Conveyor.Worker.Reports;

/// <summary>
/// A currency's rows and the sum of their amounts. <see cref="TotalMinor"/> is a decimal, always a whole
/// number: a long overflows after some 9,224 charges at the largest amount a charge may have
/// (<c>ContractRules.MaxAmountMinor</c>), a decimal only after some 79 trillion (its 28 digits hold each
/// sum exactly), and it serializes as a JSON integer, as the long did.
/// </summary>
public sealed record CurrencyTotal(string Currency, long Count, decimal TotalMinor);

/// <summary>
/// Walks the ledger in keyset pages and sums amounts per currency. A report of one account pages in
/// (currency, payment id) order through the (account_id, currency, payment_id) index, one range per
/// page, reading only the rows it returns whatever the planner's statistics (ADR 0010). A report of
/// every account in one currency pages in payment id order through the (currency::text, payment_id)
/// index the same way, so a currency nobody pays in is a probe, not a walk of the whole ledger into the
/// statement timeout. A report of every account and currency walks the primary key once.
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

    /// <summary>
    /// Through the index on <c>(currency::text, payment_id)</c>, which only this expression matches
    /// (migration <c>LedgerCurrencyPaging</c>): the account pages compare the <c>character(3)</c> column
    /// itself, so they cannot be planned through it.
    /// </summary>
    private const string CurrencyPage = """
        SELECT payment_id, currency, amount_minor FROM ledger_entries
         WHERE currency::text = CAST(@currency AS text)
           AND payment_id > @after
         ORDER BY payment_id
         LIMIT @limit
        """;

    private const string LedgerPage = """
        SELECT payment_id, currency, amount_minor FROM ledger_entries
         WHERE payment_id > @after
         ORDER BY payment_id
         LIMIT @limit
        """;

    // The counts filter as the pages do, so each one reads the index its pages read.
    private const string AccountCount = "SELECT count(*) FROM ledger_entries WHERE account_id = @account";

    private const string AccountCurrencyCount = """
        SELECT count(*) FROM ledger_entries WHERE account_id = @account AND currency = CAST(@currency AS character(3))
        """;

    private const string CurrencyCount = "SELECT count(*) FROM ledger_entries WHERE currency::text = CAST(@currency AS text)";

    private const string LedgerCount = "SELECT count(*) FROM ledger_entries";

    private readonly SortedDictionary<string, (long Count, decimal Total)> _totals = new(StringComparer.Ordinal);
    private string _afterCurrency = "";
    private Guid _after = Guid.Empty;

    public long RowsScanned { get; private set; }

    public IReadOnlyList<CurrencyTotal> Totals =>
        [.. _totals.Select(t => new CurrencyTotal(t.Key, t.Value.Count, t.Value.Total))];

    /// <summary>
    /// Makes the count and every page after it read the ledger as it was at the first of them, until the
    /// returned transaction is disposed: a charge committed while the report runs is in none of its pages.
    /// Read page by page in statements of their own, such a charge was counted when its key fell ahead of
    /// the page boundary and missed when it fell behind, so the totals were those of no moment of the
    /// ledger, and the count disagreed with them.
    /// One read-only REPEATABLE READ transaction rather than a high-water mark taken at the start: the
    /// ledger has no key in commit order to take it on. Payment ids are the producers' (random); charged_at
    /// is a worker's clock, read before its transaction commits, and a sequence number is drawn before
    /// commit too, so a row below any such mark can still commit while the report runs, and be read or
    /// not depending on the page it falls in.
    /// Its cost: while the report runs, the database's oldest snapshot is its, so vacuum cannot remove the
    /// row versions that updates and deletes leave behind in any table, and schema changes wait for it
    /// (an ALTER of ledger_entries for its lock, CREATE INDEX CONCURRENTLY for its snapshot). Both last no
    /// longer than the run, which the lease inbox stops when its lease is lost or at its delivery's deadline
    /// (consumer_timeout less a margin; none when the broker has no consumer_timeout), and a stopped run
    /// rolls it back. It takes no row locks; the lease's heartbeat and the progress updates use
    /// connections of their own.
    /// </summary>
    public async Task<IDbContextTransaction> BeginSnapshotAsync(CancellationToken cancellationToken)
    {
        var transaction = await db.Database.BeginTransactionAsync(IsolationLevel.RepeatableRead, cancellationToken);
        try
        {
            await db.Database.ExecuteSqlRawAsync("SET TRANSACTION READ ONLY", cancellationToken);
            return transaction;
        }
        catch
        {
            await transaction.DisposeAsync();
            throw;
        }
    }

    /// <summary>The rows the report will read, for its progress.</summary>
    public async Task<long> CountAsync(string? accountId, string? currency, CancellationToken cancellationToken)
    {
        await using var command = await CommandAsync(QueriesFor(accountId, currency).Count, accountId, currency, cancellationToken);
        return Convert.ToInt64(await command.ExecuteScalarAsync(cancellationToken), CultureInfo.InvariantCulture);
    }

    /// <summary>Reads the next page; false when the ledger is exhausted.</summary>
    public async Task<bool> NextPageAsync(string? accountId, string? currency, int pageSize, CancellationToken cancellationToken)
    {
        await using var command = await CommandAsync(QueriesFor(accountId, currency).Page, accountId, currency, cancellationToken);
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
            _totals[code] = (count + 1, total + amount);
            rows++;
        }

        RowsScanned += rows;
        return rows == pageSize;
    }

    /// <summary>A report's count and its page, side by side: each count filters as its pages do, reading the same index.</summary>
    private static (string Count, string Page) QueriesFor(string? accountId, string? currency) => (accountId, currency) switch
    {
        (null, null) => (LedgerCount, LedgerPage),
        (null, _) => (CurrencyCount, CurrencyPage),
        (_, null) => (AccountCount, AccountPage),
        _ => (AccountCurrencyCount, AccountCurrencyPage),
    };

    private async Task<DbCommand> CommandAsync(string sql, string? accountId, string? currency, CancellationToken cancellationToken)
    {
        await db.Database.OpenConnectionAsync(cancellationToken);
        var command = db.Database.GetDbConnection().CreateCommand();
        command.Transaction = db.Database.CurrentTransaction?.GetDbTransaction();
        command.CommandText = sql;
        Add(command, "account", (object?)accountId ?? DBNull.Value);
        Add(command, "currency", (object?)currency ?? DBNull.Value);
        return command;
    }

    private static void Add(DbCommand command, string name, object value) =>
        command.Parameters.Add(new NpgsqlParameter(name, value));
}
