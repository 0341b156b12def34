using System.Net.Http.Headers;
using Conveyor.Storage.Payments;
using Conveyor.Worker.Failures;

namespace Conveyor.Worker.Payments;

/// <summary>
/// <c>POST {BaseUrl}/charges</c> with <c>Idempotency-Key</c>; a 2xx answer carries <c>{ "id": "..." }</c>.
/// 408, 409 (the key's first request still in progress), 429 and 5xx are transient; other 4xx are permanent.
/// </summary>
public sealed class HttpPaymentGateway(HttpClient http) : IPaymentGateway
{
    public async Task<ChargeResult> ChargeAsync(ChargeRequest request, string idempotencyKey, CancellationToken cancellationToken)
    {
        using var message = new HttpRequestMessage(HttpMethod.Post, "charges")
        {
            Content = JsonContent.Create(new
            {
                accountId = request.AccountId,
                amountMinor = request.AmountMinor,
                currency = request.Currency,
            }),
        };
        message.Headers.Add("Idempotency-Key", idempotencyKey);
        message.Headers.Accept.Add(new MediaTypeWithQualityHeaderValue("application/json"));

        HttpResponseMessage response;
        try
        {
            response = await http.SendAsync(message, cancellationToken);
        }
        catch (TaskCanceledException exception) when (HttpFailures.IsTimeout(exception, cancellationToken))
        {
            throw HttpFailures.TimedOut("The payment gateway timed out", exception);
        }

        using (response)
        {
            // Read with ResponseContentRead: the body is already buffered, within HttpClient.Timeout.
            await HttpFailures.EnsureSuccessAsync(
                response, "The payment gateway", http.Timeout, FailureClassifier.IsTransientIdempotentStatus, cancellationToken);
            var body = await response.Content.ReadFromJsonAsync<GatewayCharge>(cancellationToken);
            if (string.IsNullOrEmpty(body?.Id))
            {
                throw new TransientFailureException("The payment gateway answered without a charge id");
            }

            // The charge is made, but an id the ledger cannot hold as it is would be recorded cut short
            // (or not at all): the job is dead-lettered saying so, and the gateway answers a move back
            // with the same charge and the same id.
            var controlCharacters = body.Id.Any(char.IsControl);
            if (body.Id.Length > LedgerEntry.MaxGatewayChargeIdLength || controlCharacters)
            {
                throw new PermanentFailureException(
                    $"The payment gateway answered a charge id the ledger cannot record ({body.Id.Length} characters{(controlCharacters ? ", control characters among them" : "")}; at most {LedgerEntry.MaxGatewayChargeIdLength}, printable)");
            }

            return new ChargeResult(body.Id);
        }
    }

    private sealed record GatewayCharge(string? Id);
}
