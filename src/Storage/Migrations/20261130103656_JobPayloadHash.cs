using Microsoft.EntityFrameworkCore.Migrations;

#nullable disable

namespace Conveyor.Storage.Migrations
{
    /// <inheritdoc />
    public partial class JobPayloadHash : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            // Nullable without a default: a change to the catalogue only, jobs is not rewritten. Rows
            // written before it have no fingerprint, and a repeat of theirs is answered with the job (ADR 0011).
            migrationBuilder.AddColumn<byte[]>(
                name: "payload_hash",
                table: "jobs",
                type: "bytea",
                nullable: true);
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.DropColumn(
                name: "payload_hash",
                table: "jobs");
        }
    }
}
