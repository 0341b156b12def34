namespace Conveyor.Storage.Payments;

/// <summary>A charge the gateway accepted; written in the inbox transaction.</summary>
public sealed class LedgerEntry
{
    public Guid PaymentId { get; set; }

    public required string AccountId { get; set; }

    public long AmountMinor { get; set; }

    public required string Currency { get; set; }

    public required string GatewayChargeId { get; set; }

    public DateTimeOffset ChargedAt { get; set; }
}
