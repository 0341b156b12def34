using Conveyor.Storage;
using Microsoft.EntityFrameworkCore;

namespace Conveyor.Worker.Payments;

/// <summary>
/// The gateway's test mode for local runs: records each charge in its own table, outside any
/// inbox transaction (as a remote gateway would), and answers a repeated key with the first charge.
/// </summary>
public sealed class SimulatedPaymentGateway(IDbContextFactory<ConveyorDbContext> dbFactory, TimeProvider time) : IPaymentGateway
{
    public async Task<ChargeResult> ChargeAsync(ChargeRequest request, string idempotencyKey, CancellationToken cancellationToken)
    {
        await using var db = await dbFactory.CreateDbContextAsync(cancellationToken);
        var chargeId = $"sim_{Guid.NewGuid():N}";
        await db.Database.ExecuteSqlInterpolatedAsync($"""
            INSERT INTO simulated_gateway_charges (idempotency_key, charge_id, account_id, amount_minor, currency, created_at)
            VALUES ({idempotencyKey}, {chargeId}, {request.AccountId}, {request.AmountMinor}, {request.Currency}, {time.GetUtcNow()})
            ON CONFLICT (idempotency_key) DO NOTHING
            """, cancellationToken);
        var charged = await db.SimulatedCharges.AsNoTracking()
            .Where(c => c.IdempotencyKey == idempotencyKey)
            .Select(c => c.ChargeId)
            .SingleAsync(cancellationToken);
        return new ChargeResult(charged);
    }
}
