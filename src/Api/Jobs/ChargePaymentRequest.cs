using Conveyor.Contracts;
using Conveyor.Contracts.Payments;

namespace Conveyor.Api.Jobs;

/// <summary>Body of <c>POST /api/jobs/charge-payment</c>: <c>{ paymentId, accountId, amountMinor, currency }</c>.</summary>
internal static class ChargePaymentRequest
{
    /// <summary>The business id: the job's unique key within its kind.</summary>
    public const string BusinessIdField = "paymentId";

    public static JobRequest? Read(JsonFields fields)
    {
        var paymentId = fields.RequiredId(BusinessIdField);
        var accountId = fields.RequiredString("accountId", FieldRules.AccountId);
        var amountMinor = fields.RequiredInt64("amountMinor", min: 1, max: ContractRules.MaxAmountMinor);
        var currency = fields.RequiredString("currency", FieldRules.Currency);

        return fields.HasErrors
            ? null
            : JobRequest.For(JobKinds.ChargePayment, paymentId, new ChargePayment
            {
                PaymentId = paymentId,
                AccountId = accountId,
                AmountMinor = amountMinor,
                Currency = currency,
            });
    }
}
