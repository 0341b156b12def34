using System;
using Microsoft.EntityFrameworkCore.Migrations;

#nullable disable

namespace Conveyor.Storage.Migrations
{
    /// <inheritdoc />
    public partial class ErrorQueueOperations : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.CreateTable(
                name: "error_queue_operations",
                columns: table => new
                {
                    id = table.Column<Guid>(type: "uuid", nullable: false),
                    kind = table.Column<string>(type: "character varying(16)", maxLength: 16, nullable: false),
                    queue = table.Column<string>(type: "character varying(255)", maxLength: 255, nullable: false),
                    target = table.Column<string>(type: "character varying(255)", maxLength: 255, nullable: true),
                    filter = table.Column<string>(type: "jsonb", nullable: false),
                    limit = table.Column<int>(type: "integer", nullable: true),
                    dry_run = table.Column<bool>(type: "boolean", nullable: false),
                    state = table.Column<string>(type: "character varying(16)", maxLength: 16, nullable: false),
                    requested_by = table.Column<string>(type: "character varying(200)", maxLength: 200, nullable: false),
                    client_address = table.Column<string>(type: "character varying(100)", maxLength: 100, nullable: true),
                    owner = table.Column<string>(type: "character varying(200)", maxLength: 200, nullable: true),
                    queue_depth_at_start = table.Column<long>(type: "bigint", nullable: false),
                    examined = table.Column<long>(type: "bigint", nullable: false),
                    matched = table.Column<long>(type: "bigint", nullable: false),
                    moved = table.Column<long>(type: "bigint", nullable: false),
                    purged = table.Column<long>(type: "bigint", nullable: false),
                    failed = table.Column<long>(type: "bigint", nullable: false),
                    left = table.Column<long>(type: "bigint", nullable: true),
                    message_ids = table.Column<string>(type: "jsonb", nullable: false),
                    message_ids_truncated = table.Column<bool>(type: "boolean", nullable: false),
                    targets = table.Column<string>(type: "jsonb", nullable: false),
                    detail = table.Column<string>(type: "character varying(2000)", maxLength: 2000, nullable: true),
                    created_at = table.Column<DateTimeOffset>(type: "timestamp with time zone", nullable: false),
                    updated_at = table.Column<DateTimeOffset>(type: "timestamp with time zone", nullable: false),
                    finished_at = table.Column<DateTimeOffset>(type: "timestamp with time zone", nullable: true)
                },
                constraints: table =>
                {
                    table.PrimaryKey("pk_error_queue_operations", x => x.id);
                });

            migrationBuilder.CreateIndex(
                name: "ix_error_queue_operations_created_at",
                table: "error_queue_operations",
                column: "created_at");

            migrationBuilder.CreateIndex(
                name: "ix_error_queue_operations_one_running_per_queue",
                table: "error_queue_operations",
                column: "queue",
                unique: true,
                filter: "state = 'running'");
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.DropTable(
                name: "error_queue_operations");
        }
    }
}
