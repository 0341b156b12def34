using Microsoft.EntityFrameworkCore.Migrations;

#nullable disable

namespace Conveyor.Storage.Migrations
{
    /// <summary>
    /// Replaces <c>(account_id, currency)</c> on <c>ledger_entries</c> with <c>(account_id, currency,
    /// payment_id)</c>, so a report of one account reads one index range per page (ADR 0010). As in
    /// <see cref="KindStatusJobIndex"/>: CONCURRENTLY, outside the migration's transaction, and a run
    /// that stopped halfway completes when run again.
    /// </summary>
    public partial class LedgerAccountPaging : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.Sql("DROP INDEX CONCURRENTLY IF EXISTS ix_ledger_entries_account_id_currency_payment_id;", suppressTransaction: true);
            migrationBuilder.Sql("CREATE INDEX CONCURRENTLY ix_ledger_entries_account_id_currency_payment_id ON ledger_entries (account_id, currency, payment_id);", suppressTransaction: true);
            migrationBuilder.Sql("DROP INDEX CONCURRENTLY IF EXISTS ix_ledger_entries_account_id_currency;", suppressTransaction: true);
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.Sql("DROP INDEX CONCURRENTLY IF EXISTS ix_ledger_entries_account_id_currency;", suppressTransaction: true);
            migrationBuilder.Sql("CREATE INDEX CONCURRENTLY ix_ledger_entries_account_id_currency ON ledger_entries (account_id, currency);", suppressTransaction: true);
            migrationBuilder.Sql("DROP INDEX CONCURRENTLY IF EXISTS ix_ledger_entries_account_id_currency_payment_id;", suppressTransaction: true);
        }
    }
}
