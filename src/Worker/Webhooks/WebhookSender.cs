using System.Net.Http.Headers;
using System.Reflection;
using System.Security.Authentication;
using Conveyor.ServiceDefaults;
using Conveyor.Worker.Failures;
using Microsoft.Extensions.Options;

namespace Conveyor.Worker.Webhooks;

public sealed record WebhookResult(int StatusCode);

/// <summary>
/// POSTs a payload signed with its receiver's secrets (<see cref="WebhookSigningKeys"/>). 2xx is delivered; 408, 409 (the key's first delivery still in progress at the
/// receiver), 421 (retried, mostly over another connection: <see cref="FailureClassifier.IsTransientIdempotentStatus"/>), 425, 429, 5xx (501, 505 and 510 aside), timeouts, connection errors and a certificate refused are transient; other 4xx,
/// 501, 505, 510, an answer that is not HTTP and https to a port that does not speak TLS are permanent.
/// </summary>
public sealed partial class WebhookSender(
    HttpClient http, IOptions<WebhookOptions> options, WebhookSigningKeys signingKeys, TimeProvider time, ILogger<WebhookSender> logger)
{
    public const string WebhookIdHeader = "Conveyor-Webhook-Id";
    public const string EventTypeHeader = "Conveyor-Event-Type";

    /// <summary>
    /// Sent with every delivery: the bot protection in front of many receivers answers 403 to a request
    /// without one, which is permanent. Fixed and honest, the worker's version and the product's name,
    /// nothing about the machine or its settings.
    /// </summary>
    public static readonly string UserAgent = $"Conveyor-Webhooks/{Version()} (+Conveyor)";

    /// <param name="idempotencyKey">The webhook id, or for a corrected command the key <see cref="Jobs.RemoteIdempotencyKeys"/> gives it.</param>
    public async Task<WebhookResult> SendAsync(
        Guid webhookId, string idempotencyKey, Uri url, string eventType, ReadOnlyMemory<byte> body, CancellationToken cancellationToken)
    {
        // Before anything else: a delivery refused for its receiver makes no request.
        var secrets = signingKeys.For(url);
        var content = new ByteArrayContent(body.ToArray());
        content.Headers.ContentType = new MediaTypeHeaderValue("application/json");
        using var request = new HttpRequestMessage(HttpMethod.Post, url) { Content = content };
        request.Options.Set(TelemetryExtensions.OriginOnlyInTraces, true);
        request.Headers.TryAddWithoutValidation("User-Agent", UserAgent);
        request.Headers.Add(WebhookIdHeader, webhookId.ToString());
        request.Headers.Add("Idempotency-Key", idempotencyKey);
        request.Headers.Add(EventTypeHeader, eventType);
        request.Headers.Add(WebhookSignature.HeaderName,
            WebhookSignature.Create(secrets, time.GetUtcNow().ToUnixTimeSeconds(), webhookId.ToString(), idempotencyKey, eventType, body.Span));

        // The whole delivery, error body included, within Webhooks:TimeoutSeconds: HttpClient.Timeout
        // ends at the response headers (ResponseHeadersRead).
        var timeout = TimeSpan.FromSeconds(options.Value.TimeoutSeconds);
        var started = time.GetTimestamp();
        HttpResponseMessage response;
        var answer = AnswerStart.Begin();
        var certificate = ReceiverCertificate.Begin();
        try
        {
            response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancellationToken);
        }
        catch (TaskCanceledException exception) when (HttpFailures.IsTimeout(exception, cancellationToken))
        {
            throw HttpFailures.TimedOut($"The webhook receiver at {url.Host} timed out", exception);
        }
        catch (HttpRequestException exception) when (exception.InnerException is WebhookDestinationRefusedException refused)
        {
            // Not a network failure: retrying cannot change where the URL points.
            throw new PermanentFailureException(refused.Message, refused);
        }
        catch (HttpRequestException exception) when (DeliveredDespiteHeaders(exception, answer) is { } status)
        {
            // The receiver said it took the delivery; what follows its status line is not this worker's
            // to judge. Sent again, it would be a duplicate its receiver answers the same way. Its operator
            // is told, so that a receiver answering badly can be found and told.
            LogDeliveredDespiteHeaders(logger, url.Host, status, exception.HttpRequestError, HttpFailures.Printable(exception.Message, HttpFailures.MaxSnippetChars));
            return new WebhookResult(status);
        }
        catch (HttpRequestException exception) when (CertificateRefused(exception, url, certificate) is { } transient)
        {
            throw transient;
        }
        catch (HttpRequestException exception) when (NeverAnswersOtherwise(exception, url, answer) is { } permanent)
        {
            throw permanent;
        }

        using (response)
        {
            // The delivery carries an Idempotency-Key, and a receiver that keeps them answers 409 while an
            // earlier delivery with the key is still in progress (one this worker gave up on): a later
            // attempt gets the answer, where dead-lettering it would report a webhook that was delivered.
            await HttpFailures.EnsureSuccessAsync(
                response, $"The webhook receiver at {url.Host}", timeout - time.GetElapsedTime(started), FailureClassifier.IsTransientIdempotentStatus, time, cancellationToken);
            return new WebhookResult((int)response.StatusCode);
        }
    }

    /// <summary>
    /// A TLS handshake that failed because the receiver's certificate was refused (expired, not yet valid,
    /// for another host, from no trusted authority, a chain cut short), with the problem in words
    /// (<see cref="ReceiverCertificate"/>). Transient: its receiver may renew or correct it, as Stripe and Svix
    /// keep retrying such an endpoint, so the delivery is retried and redelivered on the usual schedule and
    /// dead-lettered when they are spent, instead of dead-lettered at once, every webhook to a receiver
    /// whose certificate lapsed then moved back by hand. The certificate is still refused as before.
    /// </summary>
    private static TransientFailureException? CertificateRefused(HttpRequestException exception, Uri url, ReceiverCertificate certificate) =>
        exception is { HttpRequestError: HttpRequestError.SecureConnectionError, InnerException: AuthenticationException } && certificate.Problem is { } problem
            ? new(
                $"The webhook receiver at {url.Host} presented a TLS certificate that is refused ({problem}); the delivery is retried, as its receiver may renew or correct it",
                null,
                exception)
            : null;

    /// <summary>
    /// A request error that the receiver's URL causes, not the network: its port answers with something
    /// that is not HTTP (another protocol's banner or reply, a malformed status or header line:
    /// <see cref="HttpRequestError.InvalidResponse"/>; bytes that cannot begin an HTTP answer, which
    /// HttpClient reports as an answer cut off when no line break follows: <see cref="AnswerStart.NotHttp"/>), or the TLS handshake fails
    /// before any certificate is judged (https to a port that speaks plain HTTP or another protocol, whose
    /// bytes are no TLS, or a server refusing every handshake: an <see cref="AuthenticationException"/>; a
    /// certificate refused is <see cref="CertificateRefused"/>, transient). It fails the same way
    /// on every attempt, so the delivery is dead-lettered at once, naming why, as Svix and Stripe stop on
    /// such an endpoint, instead of retried and redelivered for an hour. A handshake cut off (a reset, the
    /// connection closed: an <see cref="IOException"/> under the same error) stays transient, as do a
    /// connection refused or reset and a response cut off. The payment gateway keeps all of these
    /// transient: it is one remote side, configured by the operator, whose outage the kill switch pauses,
    /// and an invalid answer there may follow a charge that was made.
    /// </summary>
    private static PermanentFailureException? NeverAnswersOtherwise(HttpRequestException exception, Uri url, AnswerStart answer) => exception switch
    {
        // Another protocol's bytes without a line break end as an answer cut off would (ResponseEnded).
        _ when answer.NotHttp is { } start => new(
            $"The webhook receiver at {url.Host} answered with something that is not valid HTTP (it began \"{start}\"); a port that speaks another protocol answers so every time: correct the webhook's URL",
            exception),
        { HttpRequestError: HttpRequestError.InvalidResponse } => new(
            $"The webhook receiver at {url.Host} answered with something that is not valid HTTP ({HttpFailures.Printable(exception.Message, HttpFailures.MaxSnippetChars)}); a port that speaks another protocol answers so every time: correct the webhook's URL",
            exception),
        { HttpRequestError: HttpRequestError.SecureConnectionError, InnerException: AuthenticationException tls } => new(
            $"The TLS handshake with the webhook receiver at {url.Host} failed before any certificate was presented ({HttpFailures.Printable(tls.Message, HttpFailures.MaxSnippetChars)}): an https URL to a port that does not speak TLS fails so every time",
            exception),
        _ => null,
    };

    /// <summary>
    /// The status of a delivery whose answer's status line said 2xx, where HttpClient then failed on the
    /// headers after it: a header block over its limit (<see cref="HttpRequestError.ConfigurationLimitExceeded"/>,
    /// 64 KiB) or a malformed header line (<see cref="HttpRequestError.InvalidResponse"/>). The receiver took
    /// the delivery and said so; dead-lettered, the job would read undelivered, and redelivered it would be
    /// a duplicate. Null for any other failure, and for those after another status (judged as before).
    /// </summary>
    private static int? DeliveredDespiteHeaders(HttpRequestException exception, AnswerStart answer) =>
        exception.HttpRequestError is HttpRequestError.ConfigurationLimitExceeded or HttpRequestError.InvalidResponse
        && answer.StatusCode is >= 200 and < 300 and var status ? status : null;

    [LoggerMessage(Level = LogLevel.Warning, Message = "The webhook receiver at {Host} answered {StatusCode} followed by headers the HTTP client refuses ({Error}: {Reason}); "
        + "the delivery is recorded as delivered, as the status says, but the receiver's answer should be corrected")]
    private static partial void LogDeliveredDespiteHeaders(ILogger logger, string host, int statusCode, HttpRequestError error, string reason);

    /// <summary>The worker's informational version (a build's commit after a '+' included), as a User-Agent product version may hold it; else 1.0.</summary>
    private static string Version()
    {
        var version = typeof(WebhookSender).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion;
        return version is { Length: > 0 and <= 100 } && version.All(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '-' or '+') ? version : "1.0";
    }
}
