namespace Conveyor.Worker.Payments;

public sealed record ChargeRequest(string AccountId, long AmountMinor, string Currency);

public sealed record ChargeResult(string ChargeId);

/// <summary>
/// Charges an account. The same <c>idempotencyKey</c> must never charge twice: the gateway
/// answers a repeated key with the first charge.
/// </summary>
public interface IPaymentGateway
{
    Task<ChargeResult> ChargeAsync(ChargeRequest request, string idempotencyKey, CancellationToken cancellationToken);
}
