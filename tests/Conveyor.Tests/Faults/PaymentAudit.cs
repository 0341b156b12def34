using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Faults;

/// <summary>
/// What became of the accepted payments: processed (ledger row and succeeded job), lost (accepted,
/// not processed) and applied twice (more than one ledger row, or a ledger row naming a charge
/// other than the gateway's single charge for that Idempotency-Key).
/// </summary>
public sealed record PaymentAudit(int Accepted, int Processed, int Lost, int AppliedTwice, int ProcessedNotAccepted, int DeadLettered, int GatewayRequests)
{
    public static async Task<PaymentAudit> TakeAsync(ConveyorFixture fixture, FakePaymentGateway gateway, IReadOnlyCollection<Guid> accepted)
    {
        await using var db = fixture.CreateDbContext();
        var ledger = await db.Ledger.AsNoTracking().Select(l => new { l.PaymentId, l.GatewayChargeId }).ToListAsync();
        var succeeded = (await db.Jobs.AsNoTracking()
            .Where(j => j.Kind == JobKinds.ChargePayment && j.Status == JobStatus.Succeeded)
            .Select(j => j.BusinessKey)
            .ToListAsync()).ToHashSet(StringComparer.Ordinal);
        var deadLettered = await db.Jobs.CountAsync(j => j.Kind == JobKinds.ChargePayment && j.Status == JobStatus.DeadLettered);
        var ledgerRows = ledger.GroupBy(l => l.PaymentId).ToDictionary(g => g.Key, g => g.ToList());
        var charges = gateway.Charges.ToDictionary(c => c.IdempotencyKey, c => c.Id, StringComparer.Ordinal);

        var processed = accepted.Count(id => ledgerRows.ContainsKey(id) && succeeded.Contains(id.ToString()));
        var appliedTwice = ledgerRows.Count(rows =>
            rows.Value.Count > 1
            || !charges.TryGetValue(rows.Key.ToString(), out var charge)
            || rows.Value.Any(r => r.GatewayChargeId != charge));
        var acceptedSet = accepted.ToHashSet();
        return new PaymentAudit(
            accepted.Count,
            processed,
            accepted.Count - processed,
            appliedTwice,
            ledgerRows.Keys.Count(id => !acceptedSet.Contains(id)),
            deadLettered,
            gateway.TotalRequests);
    }

    /// <summary>Waits (bounded) until every accepted payment is processed; returns the audit either way.</summary>
    public static async Task<PaymentAudit> SettleAsync(ConveyorFixture fixture, FakePaymentGateway gateway, IReadOnlyCollection<Guid> accepted, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            PaymentAudit? audit = null;
            try
            {
                audit = await TakeAsync(fixture, gateway, accepted);
            }
            catch (Exception exception) when (exception is Npgsql.NpgsqlException or InvalidOperationException && DateTime.UtcNow < deadline)
            {
                // The database may still be coming back.
                Npgsql.NpgsqlConnection.ClearAllPools();
            }

            if (audit is not null && (audit.Lost == 0 || DateTime.UtcNow > deadline))
            {
                return audit;
            }

            await Task.Delay(250);
        }
    }
}
