using Microsoft.EntityFrameworkCore.Migrations;

#nullable disable

namespace Conveyor.Storage.Migrations
{
    /// <summary>
    /// Adds <c>((currency::text), payment_id)</c> on <c>ledger_entries</c>, so a report of one currency over
    /// every account reads one index range per page, and counts in that range, instead of walking the
    /// whole ledger: for a currency nobody pays in, it read every row to find none and ran into the
    /// statement timeout on a large ledger. On the text of the currency, not the <c>character(3)</c>
    /// column: the account pages compare the column, so they cannot be planned through this index. A
    /// plain <c>(currency, payment_id)</c> was tried and broke <c>LedgerPagingPlanTests</c>: under
    /// statistics that knew nothing of the account, the planner read an account's currency through it,
    /// every account's rows of that currency, instead of its range of <c>(account_id, currency,
    /// payment_id)</c>. EF Core's model cannot describe an expression index, so it is made here only.
    /// As in <see cref="LedgerAccountPaging"/>: CONCURRENTLY, outside the migration's transaction, so charges
    /// are written while it builds, and a run that stopped halfway (an invalid index left) completes when run again.
    /// </summary>
    public partial class LedgerCurrencyPaging : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.Sql("DROP INDEX CONCURRENTLY IF EXISTS ix_ledger_entries_currency_payment_id;", suppressTransaction: true);
            migrationBuilder.Sql("CREATE INDEX CONCURRENTLY ix_ledger_entries_currency_payment_id ON ledger_entries ((currency::text), payment_id);", suppressTransaction: true);
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.Sql("DROP INDEX CONCURRENTLY IF EXISTS ix_ledger_entries_currency_payment_id;", suppressTransaction: true);
        }
    }
}
