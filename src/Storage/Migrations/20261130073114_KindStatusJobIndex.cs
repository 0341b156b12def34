using Microsoft.EntityFrameworkCore.Migrations;

#nullable disable

namespace Conveyor.Storage.Migrations
{
    /// <summary>
    /// Replaces <c>(created_at, id)</c> and <c>(status, created_at, id)</c> on <c>jobs</c> with
    /// <c>(kind, status, created_at, id)</c>, partial on every status so that lookups by kind and
    /// business key keep to their unique index (ADR 0010). Every statement runs outside the migration's
    /// transaction, CONCURRENTLY, so a large <c>jobs</c> table keeps taking writes while the index is
    /// built. A run that failed halfway can leave an invalid index of that name behind; the first
    /// statement drops it, so running the migration again completes it.
    /// </summary>
    public partial class KindStatusJobIndex : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.Sql("DROP INDEX CONCURRENTLY IF EXISTS ix_jobs_kind_status_created_at_id;", suppressTransaction: true);
            migrationBuilder.Sql("CREATE INDEX CONCURRENTLY ix_jobs_kind_status_created_at_id ON jobs (kind, status, created_at, id) " +
                "WHERE status IN ('scheduled', 'queued', 'running', 'retry-scheduled', 'succeeded', 'dead-lettered', 'cancelled');", suppressTransaction: true);
            migrationBuilder.Sql("DROP INDEX CONCURRENTLY IF EXISTS ix_jobs_created_at_id;", suppressTransaction: true);
            migrationBuilder.Sql("DROP INDEX CONCURRENTLY IF EXISTS ix_jobs_status_created_at_id;", suppressTransaction: true);
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.Sql("DROP INDEX CONCURRENTLY IF EXISTS ix_jobs_created_at_id;", suppressTransaction: true);
            migrationBuilder.Sql("CREATE INDEX CONCURRENTLY ix_jobs_created_at_id ON jobs (created_at, id);", suppressTransaction: true);
            migrationBuilder.Sql("DROP INDEX CONCURRENTLY IF EXISTS ix_jobs_status_created_at_id;", suppressTransaction: true);
            migrationBuilder.Sql("CREATE INDEX CONCURRENTLY ix_jobs_status_created_at_id ON jobs (status, created_at, id);", suppressTransaction: true);
            migrationBuilder.Sql("DROP INDEX CONCURRENTLY IF EXISTS ix_jobs_kind_status_created_at_id;", suppressTransaction: true);
        }
    }
}
