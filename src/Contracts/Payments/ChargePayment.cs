namespace Conveyor.Contracts.Payments;

/// <summary>
/// Charge an account through the payment gateway. <see cref="PaymentId"/> is the business
/// idempotency key: the same PaymentId is charged at most once, however often it is sent.
/// </summary>
public sealed record ChargePayment
{
    public required Guid PaymentId { get; init; }

    public required string AccountId { get; init; }

    /// <summary>Amount in the currency's minor unit (cents); greater than zero.</summary>
    public required long AmountMinor { get; init; }

    /// <summary>ISO 4217 alphabetic code, upper case (EUR, USD).</summary>
    public required string Currency { get; init; }

    /// <summary>What breaks the rules of <see cref="ContractRules"/>; empty when the command is valid.</summary>
    public IReadOnlyList<ContractViolation> Validate() => ContractViolation.Collect(
        ("paymentId", ContractRules.Id(PaymentId)),
        ("accountId", ContractRules.AccountId(AccountId)),
        ("amountMinor", ContractRules.InRange(AmountMinor, 1, ContractRules.MaxAmountMinor)),
        ("currency", ContractRules.Currency(Currency)));
}
