using Microsoft.EntityFrameworkCore.Migrations;

#nullable disable

namespace Conveyor.Storage.Migrations
{
    /// <inheritdoc />
    public partial class JobListing : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.CreateIndex(
                name: "ix_jobs_created_at_id",
                table: "jobs",
                columns: new[] { "created_at", "id" });

            migrationBuilder.CreateIndex(
                name: "ix_jobs_status_created_at_id",
                table: "jobs",
                columns: new[] { "status", "created_at", "id" });
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.DropIndex(
                name: "ix_jobs_created_at_id",
                table: "jobs");

            migrationBuilder.DropIndex(
                name: "ix_jobs_status_created_at_id",
                table: "jobs");
        }
    }
}
