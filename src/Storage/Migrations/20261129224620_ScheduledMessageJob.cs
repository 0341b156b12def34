using System;
using Microsoft.EntityFrameworkCore.Migrations;

#nullable disable

namespace Conveyor.Storage.Migrations
{
    /// <inheritdoc />
    public partial class ScheduledMessageJob : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.AddColumn<int>(
                name: "job_attempts",
                table: "scheduled_messages",
                type: "integer",
                nullable: true);

            migrationBuilder.AddColumn<Guid>(
                name: "job_id",
                table: "scheduled_messages",
                type: "uuid",
                nullable: true);
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.DropColumn(
                name: "job_attempts",
                table: "scheduled_messages");

            migrationBuilder.DropColumn(
                name: "job_id",
                table: "scheduled_messages");
        }
    }
}
