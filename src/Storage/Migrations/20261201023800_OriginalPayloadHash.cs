using Microsoft.EntityFrameworkCore.Migrations;

#nullable disable

namespace Conveyor.Storage.Migrations
{
    /// <inheritdoc />
    public partial class OriginalPayloadHash : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            // Nullable without a default: a change to the catalogue only, jobs is not rewritten. Set only
            // when a corrected command takes a dead-lettered job over (ADR 0011, amendment).
            migrationBuilder.AddColumn<byte[]>(
                name: "original_payload_hash",
                table: "jobs",
                type: "bytea",
                nullable: true);
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.DropColumn(
                name: "original_payload_hash",
                table: "jobs");
        }
    }
}
