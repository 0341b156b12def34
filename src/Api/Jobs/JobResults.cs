using System.Text.Json;
using System.Text.Json.Serialization;
using Conveyor.Contracts;
using Conveyor.ServiceDefaults;
using Conveyor.Storage;
using Conveyor.Storage.Jobs;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Api.Jobs;

/// <summary>
/// Body of <c>GET /api/jobs/{jobId}/result</c>: what a succeeded job did, read from the rows its effect wrote in the
/// worker's inbox transaction. Exactly one of <see cref="Charge"/>, <see cref="Webhook"/> and <see cref="Report"/>
/// is present, the one of the job's <see cref="Kind"/>.
/// </summary>
public sealed record JobResult(
    Guid JobId,
    string Kind,
    string BusinessKey,
    DateTimeOffset? FinishedAt,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] ChargeResult? Charge = null,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] WebhookResult? Webhook = null,
    [property: JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] ReportResult? Report = null);

/// <summary>A <c>charge-payment</c> job's charge, as its ledger entry holds it.</summary>
/// <param name="GatewayChargeId">The payment gateway's id for the charge: what to quote to the gateway about it.</param>
public sealed record ChargeResult(
    Guid PaymentId, string AccountId, long AmountMinor, string Currency, string GatewayChargeId, DateTimeOffset ChargedAt);

/// <summary>
/// A <c>deliver-webhook</c> job's delivery: the 2xx the receiver answered. The receiver is named by its origin
/// (<c>scheme://host:port</c>) only: a delivery URL's path, query or user information often holds a secret, and this
/// is read with the jobs-read scope, not only by whoever submitted the URL.
/// </summary>
public sealed record WebhookResult(Guid WebhookId, string EventType, string ReceiverOrigin, int StatusCode, DateTimeOffset DeliveredAt);

/// <summary>
/// A <c>generate-report</c> job's report: the ledger's totals per currency as they were when it started.
/// <paramref name="AccountId"/> and <paramref name="Currency"/> are its filters, null for all.
/// </summary>
/// <param name="Totals">By currency, in the currency's order.</param>
public sealed record ReportResult(
    Guid ReportId, string? AccountId, string? Currency, long RowsScanned, IReadOnlyList<ReportTotal> Totals, DateTimeOffset CompletedAt);

/// <summary>
/// A currency's charges in a report: how many, and the sum of their amounts in minor units. <paramref name="TotalMinor"/>
/// is a whole number that can exceed a 64-bit integer (and the 2^53 a JavaScript number holds exactly): read it as a
/// decimal or a big integer.
/// </summary>
public sealed record ReportTotal(string Currency, long Count, decimal TotalMinor);

/// <summary>Reads a succeeded job's result from the table its kind's effect is recorded in, by the job's business key.</summary>
internal static class JobResults
{
    /// <summary>The result of <paramref name="job"/>, which has succeeded; null when its effect's row is not there.</summary>
    public static async Task<JobResult?> ReadAsync(ConveyorDbContext db, Job job, CancellationToken cancellationToken)
    {
        // The jobs table holds a business key as the Api wrote it (JobRequest.BusinessKey): a UUID, "D" format.
        if (!Guid.TryParse(job.BusinessKey, out var key))
        {
            return null;
        }

        var result = new JobResult(job.Id, job.Kind, job.BusinessKey, job.FinishedAt);
        switch (job.Kind)
        {
            case JobKinds.ChargePayment:
                var charge = await db.Ledger.AsNoTracking().FirstOrDefaultAsync(l => l.PaymentId == key, cancellationToken);
                return charge is null ? null : result with
                {
                    Charge = new ChargeResult(
                        charge.PaymentId, charge.AccountId, charge.AmountMinor, charge.Currency, charge.GatewayChargeId, charge.ChargedAt),
                };
            case JobKinds.DeliverWebhook:
                var delivery = await db.WebhookDeliveries.AsNoTracking().FirstOrDefaultAsync(d => d.WebhookId == key, cancellationToken);
                return delivery is null || !Uri.TryCreate(delivery.Url, UriKind.Absolute, out var url) ? null : result with
                {
                    Webhook = new WebhookResult(delivery.WebhookId, delivery.EventType, WebhookOrigin.Of(url), delivery.StatusCode, delivery.DeliveredAt),
                };
            case JobKinds.GenerateReport:
                var report = await db.Reports.AsNoTracking().FirstOrDefaultAsync(r => r.ReportId == key, cancellationToken);
                if (report is null)
                {
                    return null;
                }

                // Written by the worker from its own totals; jsonb keeps their values, not their members' order.
                var totals = JsonSerializer.Deserialize(report.Totals, JobsJson.Default.ReportTotalArray) ?? [];
                return result with
                {
                    Report = new ReportResult(report.ReportId, report.AccountId, report.Currency, report.RowsScanned, totals, report.CompletedAt),
                };

            default:
                return null;
        }
    }
}
