using Microsoft.EntityFrameworkCore.Migrations;

#nullable disable

namespace Conveyor.Storage.Migrations
{
    /// <inheritdoc />
    public partial class OperationJobsMissing : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.AddColumn<long>(
                name: "jobs_missing",
                table: "error_queue_operations",
                type: "bigint",
                nullable: true);
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.DropColumn(
                name: "jobs_missing",
                table: "error_queue_operations");
        }
    }
}
