using System.Globalization;
using System.Net.Http.Headers;
using System.Text.Json;
using Conveyor.Storage.Payments;
using Conveyor.Worker.Failures;

namespace Conveyor.Worker.Payments;

/// <summary>
/// <c>POST {BaseUrl}/charges</c> with <c>Idempotency-Key</c>; a 2xx answer carries <c>{ "id": "..." }</c>, and may echo
/// the charge's <c>amountMinor</c> and <c>currency</c>, which must then be the ones asked (the currency in any casing).
/// 408, 409 (the key's first request still in progress), 421 (retried, mostly over another connection: <see cref="FailureClassifier.IsTransientIdempotentStatus"/>), 425, 429 and every 5xx (501, 505 and 510 included: <see cref="FailureClassifier.IsTransientGatewayStatus"/>)
/// are transient; other 4xx are permanent, and so is a redirect, which is not followed.
/// A 2xx whose body is too large, too slow or no charge is transient: the charge may have been made.
/// </summary>
public sealed class HttpPaymentGateway(HttpClient http, TimeProvider time) : IPaymentGateway
{
    /// <summary>
    /// Bytes of a charge's answer read at most, far above any real one (an id and a few fields). HttpClient
    /// would otherwise buffer whatever a misbehaving gateway, or a proxy in front of it, answers (up to
    /// 2 GB by default), in a worker that must stay under 200 MiB.
    /// </summary>
    public const int MaxAnswerBytes = 64 * 1024;

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

        // The whole charge, its answer's body included, within PaymentGateway:TimeoutSeconds: HttpClient.Timeout
        // ends at the response headers (ResponseHeadersRead).
        var started = time.GetTimestamp();
        HttpResponseMessage response;
        try
        {
            response = await http.SendAsync(message, HttpCompletionOption.ResponseHeadersRead, cancellationToken);
        }
        catch (TaskCanceledException exception) when (HttpFailures.IsTimeout(exception, cancellationToken))
        {
            throw HttpFailures.TimedOut("The payment gateway timed out", exception);
        }

        using (response)
        {
            // What is left for the body, an error's snippet or the charge's answer (only one is read).
            var timeLeft = http.Timeout - time.GetElapsedTime(started);
            await HttpFailures.EnsureSuccessAsync(
                response, "The payment gateway", timeLeft, FailureClassifier.IsTransientGatewayStatus, time, cancellationToken);
            await LoadAnswerAsync(response.Content, timeLeft, cancellationToken);
            var charge = await ReadChargeAsync(response, cancellationToken);
            var id = charge.Id!;

            // The ledger records the amount asked under the id answered: a charge the gateway says is of another
            // amount or currency would be recorded as one it is not. The gateway answers the key the same every
            // time, so trying again cannot help: dead-lettered, naming both, for the operator to settle.
            if ((charge.AmountMinor is { } amount && amount != request.AmountMinor)
                || (charge.Currency is { } currency && !string.Equals(currency, request.Currency, StringComparison.OrdinalIgnoreCase)))
            {
                throw new PermanentFailureException(
                    $"The payment gateway answered charge {HttpFailures.Printable(id, LedgerEntry.MaxGatewayChargeIdLength)} of {charge.AmountMinor?.ToString(CultureInfo.InvariantCulture) ?? "?"} {HttpFailures.Printable(charge.Currency ?? "?", 10)}, not the {request.AmountMinor.ToString(CultureInfo.InvariantCulture)} {request.Currency} asked; not recorded in the ledger");
            }

            // The charge is made, but an id the ledger cannot hold as it is would be recorded cut short
            // (or not at all): the job is dead-lettered saying so, and the gateway answers a move back
            // with the same charge and the same id.
            var controlCharacters = id.Any(char.IsControl);
            if (id.Length > LedgerEntry.MaxGatewayChargeIdLength || controlCharacters)
            {
                throw new PermanentFailureException(
                    $"The payment gateway answered a charge id the ledger cannot record ({id.Length} characters{(controlCharacters ? ", control characters among them" : "")}; at most {LedgerEntry.MaxGatewayChargeIdLength}, printable)");
            }

            return new ChargeResult(id);
        }
    }

    /// <summary>
    /// Buffers a 2xx answer's body, at most <see cref="MaxAnswerBytes"/> of it and within
    /// <paramref name="timeLeft"/>. Either limit reached is a transient failure: the charge may have been
    /// made, and a later attempt with the same Idempotency-Key gets it again (the gateway keeps the key's
    /// answer), so dead-lettering the job could leave a charge the ledger never records.
    /// </summary>
    private static async Task LoadAnswerAsync(HttpContent content, TimeSpan timeLeft, CancellationToken cancellationToken)
    {
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        limit.CancelAfter(timeLeft > TimeSpan.Zero ? timeLeft : TimeSpan.Zero);
        try
        {
            await content.LoadIntoBufferAsync(MaxAnswerBytes, limit.Token);
        }
        catch (HttpRequestException exception) when (exception.HttpRequestError == HttpRequestError.ConfigurationLimitExceeded)
        {
            // Not the client's limit on headers (permanent): the headers were read, this is the body's bound.
            throw new TransientFailureException(
                $"The payment gateway answered a charge with a body over {MaxAnswerBytes / 1024} KiB, not read further; the charge may have been made, and a later attempt asks for it again with the same Idempotency-Key",
                exception);
        }
        catch (OperationCanceledException exception) when (HttpFailures.IsTimeout(exception, cancellationToken))
        {
            throw HttpFailures.TimedOut("The payment gateway's answer was not read within its timeout", exception);
        }
    }

    /// <summary>
    /// The charge of a 2xx answer whose body <see cref="LoadAnswerAsync"/> buffered. A body that is no
    /// charge (a proxy's HTML page, JSON cut short, an id that is no string, an echoed amount that is no
    /// whole number or currency that is no string, a charset .NET does not know, no id at all) is a transient
    /// failure like a body too large: the 2xx says the charge may have been made, and only a later attempt
    /// with the same Idempotency-Key gets it. Left to the classifier, the JSON
    /// reader's exceptions read as a malformed message (permanent), which dead-lettered the job at once.
    /// </summary>
    private static async Task<GatewayCharge> ReadChargeAsync(HttpResponseMessage response, CancellationToken cancellationToken)
    {
        GatewayCharge? charge;
        try
        {
            charge = await response.Content.ReadFromJsonAsync<GatewayCharge>(cancellationToken);
        }
        catch (Exception exception) when (exception is JsonException or NotSupportedException or InvalidOperationException)
        {
            // InvalidOperationException: the answer's charset is unknown (the body is already buffered,
            // so no read of the connection is behind it).
            throw Unreadable(response, exception.Message, exception);
        }

        return string.IsNullOrWhiteSpace(charge?.Id) ? throw Unreadable(response, "no charge id", null) : charge;
    }

    private static TransientFailureException Unreadable(HttpResponseMessage response, string why, Exception? exception) => new(
        $"The payment gateway answered {(int)response.StatusCode} with a body that is not a charge ({response.Content.Headers.ContentType?.ToString() ?? "no content type"}: {why}); the charge may have been made, and a later attempt asks for it again with the same Idempotency-Key",
        null,
        exception);

    private sealed record GatewayCharge(string? Id, long? AmountMinor, string? Currency);
}
