using Microsoft.EntityFrameworkCore.Migrations;

#nullable disable

namespace Conveyor.Storage.Migrations
{
    /// <inheritdoc />
    public partial class InboxPayloadHash : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            // Nullable without a default: a change to the catalogue only, the inbox is not rewritten.
            // Rows written before it have no fingerprint and conflict with nothing (ADR 0011).
            migrationBuilder.AddColumn<byte[]>(
                name: "payload_hash",
                table: "inbox",
                type: "bytea",
                nullable: true);
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.DropColumn(
                name: "payload_hash",
                table: "inbox");
        }
    }
}
