namespace Conveyor.Storage.Payments;

/// <summary>
/// What the built-in simulated gateway (test mode, used when no gateway URL is configured)
/// has charged, keyed by the Idempotency-Key it was sent. Written outside any inbox
/// transaction, as a real gateway would be.
/// </summary>
public sealed class SimulatedCharge
{
    public required string IdempotencyKey { get; set; }

    public required string ChargeId { get; set; }

    public required string AccountId { get; set; }

    public long AmountMinor { get; set; }

    public required string Currency { get; set; }

    public DateTimeOffset CreatedAt { get; set; }
}
