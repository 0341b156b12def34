namespace Conveyor.Storage.Payments;

/// <summary>A charge the gateway accepted; written in the inbox transaction.</summary>
public sealed class LedgerEntry
{
    /// <summary>The column's length: a longer value would be cut to it on the way in, not refused.</summary>
    public const int MaxGatewayChargeIdLength = 100;

    public Guid PaymentId { get; set; }

    public required string AccountId { get; set; }

    public long AmountMinor { get; set; }

    public required string Currency { get; set; }

    /// <summary>The gateway's id for the charge, at most <see cref="MaxGatewayChargeIdLength"/> characters.</summary>
    public required string GatewayChargeId { get; set; }

    public DateTimeOffset ChargedAt { get; set; }
}
