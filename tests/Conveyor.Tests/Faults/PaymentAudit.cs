using Conveyor.Contracts;
using Conveyor.Storage.Jobs;
using Conveyor.Tests.Fakes;
using Conveyor.Tests.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Tests.Faults;

/// <summary>
/// What became of the accepted payments: processed (ledger row and succeeded job), lost (accepted,
/// not processed), applied twice, and charged again.
/// </summary>
/// <remarks>
/// The ledger's primary key is the payment id, and the gateway charges once per Idempotency-Key (the
/// payment id): neither can ever hold one payment twice. So <see cref="AppliedTwice"/> counts what can
/// still show it: a ledger row naming a charge other than the gateway's charge for its payment (its
/// charge id came from somewhere else), or one for a payment the gateway never charged.
/// <see cref="ChargedAgain"/> counts the payments whose charge the gateway was asked for again after it
/// had succeeded: their message ran again, which the key kept from costing money, and which only a lost
/// result justifies (a killed worker, a commit cut off).
/// </remarks>
public sealed record PaymentAudit(int Accepted, int Processed, int Lost, int AppliedTwice, int ChargedAgain, int ProcessedNotAccepted, int DeadLettered, int GatewayRequests)
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
        var ledgerRows = ledger.ToDictionary(l => l.PaymentId, l => l.GatewayChargeId);
        var charges = gateway.Charges.ToDictionary(c => c.IdempotencyKey, c => c.Id, StringComparer.Ordinal);

        var processed = accepted.Count(id => ledgerRows.ContainsKey(id) && succeeded.Contains(id.ToString()));
        var appliedTwice = ledgerRows.Count(row => !charges.TryGetValue(row.Key.ToString(), out var charge) || row.Value != charge);
        var chargedAgain = charges.Keys.Count(key => gateway.SuccessfulRequestsFor(key) > 1);
        var acceptedSet = accepted.ToHashSet();
        return new PaymentAudit(
            accepted.Count,
            processed,
            accepted.Count - processed,
            appliedTwice,
            chargedAgain,
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
