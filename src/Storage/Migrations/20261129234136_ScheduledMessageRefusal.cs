using System;
using Microsoft.EntityFrameworkCore.Migrations;

#nullable disable

namespace Conveyor.Storage.Migrations
{
    /// <inheritdoc />
    public partial class ScheduledMessageRefusal : Migration
    {
        /// <inheritdoc />
        protected override void Up(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.AddColumn<DateTimeOffset>(
                name: "first_refused_at",
                table: "scheduled_messages",
                type: "timestamp with time zone",
                nullable: true);

            migrationBuilder.AddColumn<string>(
                name: "refusal",
                table: "scheduled_messages",
                type: "character varying(1000)",
                maxLength: 1000,
                nullable: true);

            migrationBuilder.CreateIndex(
                name: "ix_scheduled_messages_first_refused_at",
                table: "scheduled_messages",
                column: "first_refused_at",
                filter: "first_refused_at IS NOT NULL");

            migrationBuilder.CreateIndex(
                name: "ix_scheduled_messages_job_id",
                table: "scheduled_messages",
                column: "job_id",
                filter: "job_id IS NOT NULL");
        }

        /// <inheritdoc />
        protected override void Down(MigrationBuilder migrationBuilder)
        {
            migrationBuilder.DropIndex(
                name: "ix_scheduled_messages_first_refused_at",
                table: "scheduled_messages");

            migrationBuilder.DropIndex(
                name: "ix_scheduled_messages_job_id",
                table: "scheduled_messages");

            migrationBuilder.DropColumn(
                name: "first_refused_at",
                table: "scheduled_messages");

            migrationBuilder.DropColumn(
                name: "refusal",
                table: "scheduled_messages");
        }
    }
}
