using Conveyor.Contracts;
using Conveyor.Contracts.Payments;
using Conveyor.Storage;
using Conveyor.Storage.Payments;
using Conveyor.Worker.Failures;
using Conveyor.Worker.Jobs;
using MassTransit;

namespace Conveyor.Worker.Payments;

/// <summary>
/// Charges through the gateway with the PaymentId as its idempotency key (a corrected command under
/// a dead-lettered payment's id adds its fingerprint: <see cref="RemoteIdempotencyKeys"/>), then records
/// the ledger row in the inbox transaction. A retry after a crash charges nothing new: the gateway dedupes.
/// </summary>
public sealed class ChargePaymentConsumer(IPaymentGateway gateway, RemoteIdempotencyKeys keys, ConveyorDbContext db, TimeProvider time)
    : IConsumer<ChargePayment>
{
    public async Task Consume(ConsumeContext<ChargePayment> context)
    {
        var payment = context.Message;
        PermanentFailureException.ThrowIfInvalid(context, payment.Validate());

        var charge = await gateway.ChargeAsync(
            new ChargeRequest(payment.AccountId, payment.AmountMinor, payment.Currency),
            await keys.ForAsync(context, JobKinds.ChargePayment, payment.PaymentId.ToString()),
            context.CancellationToken);

        db.Ledger.Add(new LedgerEntry
        {
            PaymentId = payment.PaymentId,
            AccountId = payment.AccountId,
            AmountMinor = payment.AmountMinor,
            Currency = payment.Currency,
            GatewayChargeId = charge.ChargeId,
            ChargedAt = time.GetUtcNow(),
        });
        // Staged, not saved: the inbox saves it in its transaction (and applies it with its batch).
    }
}
