using Conveyor.Storage.Inbox;
using Conveyor.Storage.Jobs;
using Conveyor.Storage.Operations;
using Conveyor.Storage.Payments;
using Conveyor.Storage.Redelivery;
using Conveyor.Storage.Reports;
using Conveyor.Storage.Sessions;
using Conveyor.Storage.Webhooks;
using Microsoft.AspNetCore.DataProtection.EntityFrameworkCore;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Storage;

public sealed class ConveyorDbContext(DbContextOptions<ConveyorDbContext> options) : DbContext(options), IDataProtectionKeyContext
{
    public DbSet<Job> Jobs => Set<Job>();

    /// <summary>Idempotency-Keys answered with a job they did not create (<see cref="JobKeyAlias"/>).</summary>
    public DbSet<JobKeyAlias> JobKeyAliases => Set<JobKeyAlias>();

    public DbSet<InboxRecord> Inbox => Set<InboxRecord>();

    public DbSet<LedgerEntry> Ledger => Set<LedgerEntry>();

    public DbSet<SimulatedCharge> SimulatedCharges => Set<SimulatedCharge>();

    public DbSet<WebhookDelivery> WebhookDeliveries => Set<WebhookDelivery>();

    public DbSet<Report> Reports => Set<Report>();

    public DbSet<ScheduledMessage> ScheduledMessages => Set<ScheduledMessage>();

    public DbSet<ErrorQueueOperation> ErrorQueueOperations => Set<ErrorQueueOperation>();

    /// <summary>The Api's data-protection key ring (dashboard session cookies, anti-forgery tokens), shared by its replicas.</summary>
    public DbSet<DataProtectionKey> DataProtectionKeys => Set<DataProtectionKey>();

    /// <summary>The dashboard's live sessions (signing out deletes one).</summary>
    public DbSet<DashboardSessionRecord> DashboardSessions => Set<DashboardSessionRecord>();

    protected override void OnModelCreating(ModelBuilder modelBuilder)
    {
        modelBuilder.Entity<Job>(job =>
        {
            job.ToTable("jobs");
            job.HasKey(j => j.Id);
            job.Property(j => j.Kind).HasMaxLength(64);
            job.Property(j => j.BusinessKey).HasMaxLength(200);
            job.Property(j => j.Status).HasMaxLength(32);
            job.Property(j => j.IdempotencyKey).HasMaxLength(200);
            job.Property(j => j.RequestHash).HasMaxLength(64);
            job.HasIndex(j => new { j.Kind, j.BusinessKey }).IsUnique();
            // Only the Api's keyed submissions carry one: rows without a key stay out of the index.
            job.HasIndex(j => j.IdempotencyKey).IsUnique().HasFilter("idempotency_key IS NOT NULL");
            // One index for every read by time (ADR 0010): GET /api/jobs (keyset paging on (created_at,
            // id) within each kind and status, merged), the stranded-job check and the retention sweep
            // (created_at <= updated_at). Each reads one index range per kind and status, so what they
            // read follows what they return, not the table's size or its statistics. No (status,
            // updated_at) or (created_at, id) index: every job write would pay for them.
            // Partial on every status, so that lookups by kind and business key keep to the unique index.
            job.HasIndex(j => new { j.Kind, j.Status, j.CreatedAt, j.Id })
                .HasFilter("status IN " + JobIndexRanges.Statuses)
                .IsCreatedConcurrently();
        });

        modelBuilder.Entity<JobKeyAlias>(alias =>
        {
            alias.ToTable("job_key_aliases");
            alias.HasKey(a => a.IdempotencyKey);
            alias.Property(a => a.IdempotencyKey).HasMaxLength(200);
            alias.Property(a => a.RequestHash).HasMaxLength(64);
            // Removed with its job (an unpublished row taken back, the retention sweep); indexed for those deletes.
            alias.HasOne<Job>().WithMany().HasForeignKey(a => a.JobId).OnDelete(DeleteBehavior.Cascade);
        });

        modelBuilder.Entity<InboxRecord>(inbox =>
        {
            inbox.ToTable("inbox");
            inbox.HasKey(i => new { i.ConsumerId, i.MessageKey });
            inbox.Property(i => i.ConsumerId).HasMaxLength(200);
            inbox.Property(i => i.MessageKey).HasMaxLength(200);
            inbox.Property(i => i.Status).HasMaxLength(16).HasDefaultValue(InboxStatus.Done);
            inbox.Property(i => i.LeaseOwner).HasMaxLength(200);
            inbox.HasIndex(i => i.ReceivedAt);
        });

        modelBuilder.Entity<LedgerEntry>(ledger =>
        {
            ledger.ToTable("ledger_entries");
            ledger.HasKey(l => l.PaymentId);
            ledger.Property(l => l.AccountId).HasMaxLength(100);
            ledger.Property(l => l.Currency).HasMaxLength(3).IsFixedLength();
            ledger.Property(l => l.GatewayChargeId).HasMaxLength(LedgerEntry.MaxGatewayChargeIdLength);
            // A report of one account pages through this index in (currency, payment_id) order: one
            // range per page, whatever the statistics (ADR 0010); with only (account_id, currency) each
            // page sorted the account's remaining rows or walked the whole ledger.
            ledger.HasIndex(l => new { l.AccountId, l.Currency, l.PaymentId }).IsCreatedConcurrently();
            // A report of one currency over every account pages through ((currency::text), payment_id), an
            // expression index the model cannot hold: migration LedgerCurrencyPaging makes it.
        });

        modelBuilder.Entity<SimulatedCharge>(charge =>
        {
            charge.ToTable("simulated_gateway_charges");
            charge.HasKey(c => c.IdempotencyKey);
            charge.Property(c => c.IdempotencyKey).HasMaxLength(200);
            charge.Property(c => c.ChargeId).HasMaxLength(100);
            charge.Property(c => c.AccountId).HasMaxLength(100);
            charge.Property(c => c.Currency).HasMaxLength(3).IsFixedLength();
        });

        modelBuilder.Entity<WebhookDelivery>(delivery =>
        {
            delivery.ToTable("webhook_deliveries");
            delivery.HasKey(d => d.WebhookId);
            delivery.Property(d => d.Url).HasMaxLength(2048);
            delivery.Property(d => d.EventType).HasMaxLength(200);
        });

        modelBuilder.Entity<ScheduledMessage>(scheduled =>
        {
            scheduled.ToTable("scheduled_messages");
            scheduled.HasKey(s => s.Id);
            scheduled.Property(s => s.DedupeKey).HasMaxLength(400);
            scheduled.Property(s => s.Destination).HasMaxLength(255);
            scheduled.Property(s => s.ContentType).HasMaxLength(ScheduledMessage.MaxContentTypeLength);
            scheduled.Property(s => s.MessageId).HasMaxLength(100);
            scheduled.Property(s => s.Headers).HasColumnType("jsonb");
            scheduled.HasIndex(s => s.DedupeKey).IsUnique();
            scheduled.HasIndex(s => s.DueAt);
            scheduled.Property(s => s.Refusal).HasMaxLength(ScheduledMessage.MaxRefusalLength);
            // The retention sweep keeps a job while a stored command of it waits (it would run the job
            // again once its row is gone); partial: lease deferrals and older rows name no job.
            scheduled.HasIndex(s => s.JobId).HasFilter("job_id IS NOT NULL");
            // The backlog's reading of refused rows: few or none, so a partial index stays tiny.
            scheduled.HasIndex(s => s.FirstRefusedAt).HasFilter("first_refused_at IS NOT NULL");
        });

        modelBuilder.Entity<ErrorQueueOperation>(operation =>
        {
            operation.ToTable("error_queue_operations");
            operation.HasKey(o => o.Id);
            operation.Property(o => o.Kind).HasMaxLength(16);
            operation.Property(o => o.Queue).HasMaxLength(255);
            // AMQP carries a vhost's name in a short string: at most 255 bytes, so at most 255 characters.
            operation.Property(o => o.VirtualHost).HasMaxLength(255);
            operation.Property(o => o.Target).HasMaxLength(255);
            operation.Property(o => o.Filter).HasColumnType("jsonb");
            operation.Property(o => o.State).HasMaxLength(16);
            operation.Property(o => o.RequestedBy).HasMaxLength(200);
            operation.Property(o => o.ClientAddress).HasMaxLength(100);
            operation.Property(o => o.Owner).HasMaxLength(200);
            operation.Property(o => o.MessageIds).HasColumnType("jsonb");
            operation.Property(o => o.Targets).HasColumnType("jsonb");
            operation.Property(o => o.Detail).HasMaxLength(2000);
            // At most one running operation per queue of a vhost, whichever Api replica runs it.
            operation.HasIndex(o => new { o.VirtualHost, o.Queue }).IsUnique().HasFilter("state = 'running'")
                .HasDatabaseName("ix_error_queue_operations_one_running_per_vhost_queue");
            operation.HasIndex(o => o.CreatedAt);
        });

        modelBuilder.Entity<DataProtectionKey>(key =>
        {
            key.ToTable("data_protection_keys");
            key.HasKey(k => k.Id);
        });

        modelBuilder.Entity<DashboardSessionRecord>(session =>
        {
            session.ToTable("dashboard_sessions");
            session.HasKey(s => s.Id);
            session.Property(s => s.KeyName).HasMaxLength(200);
            // Sign-in deletes the expired rows.
            session.HasIndex(s => s.ExpiresAt);
        });

        modelBuilder.Entity<Report>(report =>
        {
            report.ToTable("reports");
            report.HasKey(r => r.ReportId);
            report.Property(r => r.AccountId).HasMaxLength(100);
            report.Property(r => r.Currency).HasMaxLength(3).IsFixedLength();
            report.Property(r => r.Totals).HasColumnType("jsonb");
        });
    }
}
