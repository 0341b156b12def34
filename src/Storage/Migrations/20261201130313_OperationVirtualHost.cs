using Microsoft.EntityFrameworkCore.Migrations;

#nullable disable

namespace Conveyor.Storage.Migrations
{
    /// <inheritdoc />
    public partial class OperationVirtualHost : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            // Nullable, no default: nothing here knows which vhost wrote the rows already there (the
            // migration Job has no broker settings), and '/' would hide them from a deployment on any
            // other vhost. Null rows stay visible to every deployment, as before (OfVirtualHost). One row
            // per move or purge, so both indexes are rebuilt in the migration's transaction at once.
            migrationBuilder.DropIndex(
                name: "ix_error_queue_operations_one_running_per_queue",
                table: "error_queue_operations");

            migrationBuilder.AddColumn<string>(
                name: "virtual_host",
                table: "error_queue_operations",
                type: "character varying(255)",
                maxLength: 255,
                nullable: true);

            migrationBuilder.CreateIndex(
                name: "ix_error_queue_operations_one_running_per_vhost_queue",
                table: "error_queue_operations",
                columns: new[] { "virtual_host", "queue" },
                unique: true,
                filter: "state = 'running'");
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.DropIndex(
                name: "ix_error_queue_operations_one_running_per_vhost_queue",
                table: "error_queue_operations");

            migrationBuilder.DropColumn(
                name: "virtual_host",
                table: "error_queue_operations");

            migrationBuilder.CreateIndex(
                name: "ix_error_queue_operations_one_running_per_queue",
                table: "error_queue_operations",
                column: "queue",
                unique: true,
                filter: "state = 'running'");
        }
    }
}
