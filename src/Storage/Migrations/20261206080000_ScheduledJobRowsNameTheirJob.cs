using Microsoft.EntityFrameworkCore.Migrations;

#nullable disable

namespace Conveyor.Storage.Migrations
{
    /// <summary>
    /// A <c>runAt</c> job's stored command names its job in <c>job_id</c> (and <c>job_attempts</c>) since
    /// <see cref="ScheduledMessageJob"/>; one stored before then names it only in its dedupe key
    /// (<c>job:&lt;id&gt;</c>), so what reads <c>job_id</c> alone passed it over: the many-jobs run-now
    /// (<c>POST /api/jobs/run-now</c>) never released it, and a refused publish of it could not dead-letter
    /// its job. Such rows are given their job's id and current attempts here, as the Api writes them now. A
    /// row whose job is gone keeps nulls, as before. The key is matched in full before it is cast, so
    /// no other key can fail the migration. Readers keep the dedupe-key fallback for a row written
    /// during a rolling upgrade by an Api older than the column.
    /// </summary>
    public partial class ScheduledJobRowsNameTheirJob : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.Sql("""
                UPDATE scheduled_messages s
                   SET job_id = j.id, job_attempts = j.attempts
                  FROM jobs j
                 WHERE s.job_id IS NULL
                   AND j.id = CASE WHEN s.dedupe_key ~ '^job:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$'
                                   THEN substr(s.dedupe_key, 5)::uuid END;
                """);
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            // Nothing to undo: the columns stay, and rows naming their job are what the Api writes.
        }
    }
}
