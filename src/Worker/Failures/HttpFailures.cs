using System.Buffers;
using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using System.Text;

namespace Conveyor.Worker.Failures;

/// <summary>Turns a remote side's non-success answer into a transient or permanent failure.</summary>
public static class HttpFailures
{
    /// <summary>Characters of an error body kept in the failure's message.</summary>
    public const int MaxSnippetChars = 500;

    /// <summary>
    /// Bytes of an error body read at most: enough for <see cref="MaxSnippetChars"/> characters in any
    /// UTF-8 text, so a remote side that answers with an endless or huge body costs no more than this.
    /// </summary>
    public const int MaxSnippetBytes = 4 * 1024;

    /// <summary>Characters of a redirect's <c>Location</c> kept in the failure's message, as many as of a body.</summary>
    public const int MaxLocationChars = MaxSnippetChars;

    /// <summary>
    /// Returns on a 2xx answer; otherwise throws a failure that the status code classifies, with the
    /// start of the body in its message. The body is only a clue for a person: at most
    /// <see cref="MaxSnippetBytes"/> of it are read, for at most <paramref name="bodyTimeout"/>
    /// (a response read with <see cref="HttpCompletionOption.ResponseHeadersRead"/> is no longer under
    /// <see cref="HttpClient.Timeout"/>), and a body that is slow, broken or missing changes nothing
    /// but the message.
    /// </summary>
    /// <param name="isTransient">
    /// Which statuses this remote side may answer otherwise later (<see cref="FailureClassifier.IsTransientStatus"/>,
    /// <see cref="FailureClassifier.IsTransientIdempotentStatus"/> for one sent an Idempotency-Key, or
    /// <see cref="FailureClassifier.IsTransientGatewayStatus"/> for the payment gateway).
    /// </param>
    /// <param name="time">The worker's clock, which a <c>Retry-After</c> given as a date is measured on.</param>
    public static async Task EnsureSuccessAsync(
        HttpResponseMessage response, string what, TimeSpan bodyTimeout, Func<HttpStatusCode, bool> isTransient, TimeProvider time, CancellationToken cancellationToken)
    {
        if (response.IsSuccessStatusCode)
        {
            return;
        }

        var status = response.StatusCode;
        var body = await ReadSnippetAsync(response.Content, bodyTimeout, cancellationToken);
        var redirect = (int)status is >= 300 and < 400 ? $" ({Redirect(response)}, not followed)" : "";
        // An empty body says so, rather than end the message on a colon that reads as if text were cut off.
        var message = $"{what} answered {StatusText(status)}{redirect}{(body.Length == 0 ? " with an empty body" : $": {body}")}";
        if (isTransient(status))
        {
            throw new TransientFailureException(message, RetryAfter(response.Headers.RetryAfter, time));
        }

        throw new PermanentFailureException(message);
    }

    /// <summary>
    /// The status's number and its name in <see cref="HttpStatusCode"/> ("404 NotFound"); 425 by the name
    /// <see cref="FailureClassifier.TooEarly"/> gives it, which the enum lacks. A status without a name
    /// (Cloudflare's 520, an nginx 499) is its number alone, where its name would have been the number again,
    /// and one beyond 599 says it is not valid HTTP. The answer's own reason phrase is left out: it is the
    /// remote side's text, and HTTP/2 has none.
    /// </summary>
    private static string StatusText(HttpStatusCode status)
    {
        var code = ((int)status).ToString(CultureInfo.InvariantCulture);
        return status switch
        {
            FailureClassifier.TooEarly => $"{code} {nameof(FailureClassifier.TooEarly)}",
            _ when (int)status > 599 => $"{code} (not a valid HTTP status)",
            _ when Enum.IsDefined(status) => $"{code} {status}",
            _ => code,
        };
    }

    /// <summary>
    /// A date is measured on the worker's clock (its <see cref="TimeProvider"/>), the one the redelivery's
    /// due time is set on: the system's clock would make it another wait wherever the two differ, as a
    /// test's clock does.
    /// </summary>
    private static TimeSpan? RetryAfter(RetryConditionHeaderValue? header, TimeProvider time) => header switch
    {
        { Delta: { } delta } => delta,
        { Date: { } date } => date - time.GetUtcNow() is { } wait && wait > TimeSpan.Zero ? wait : TimeSpan.Zero,
        _ => null,
    };

    /// <summary>
    /// Where a redirect points, for the person who corrects the URL: a relative <c>Location</c> as the
    /// absolute URL it names. It is the remote side's text, so it is made printable (a control or format
    /// character, which could rewrite a terminal or hide what is shown, as its <c>\uXXXX</c> escape) and cut
    /// to <see cref="MaxLocationChars"/>.
    /// </summary>
    private static string Redirect(HttpResponseMessage response)
    {
        // Not validated: a Location HttpClient cannot parse is still the receiver's answer.
        if (!response.Headers.NonValidated.TryGetValues("Location", out var values) || values.ToString() is not { Length: > 0 } location)
        {
            return "without a Location";
        }

        var isAbsolute = Uri.TryCreate(location, UriKind.Absolute, out var absolute) && (absolute.Scheme == Uri.UriSchemeHttp || absolute.Scheme == Uri.UriSchemeHttps);
        if (!isAbsolute && response.RequestMessage?.RequestUri is { } requested && Uri.TryCreate(requested, location, out var resolved))
        {
            location = resolved.AbsoluteUri;
        }

        return $"moved to {Printable(location, MaxLocationChars)}";
    }

    /// <summary>
    /// <paramref name="text"/> with each control or format character, line or paragraph separator and
    /// unpaired surrogate as its escape, at most <paramref name="maxLength"/> characters (an escape is not
    /// cut), ending in "…" when cut short.
    /// </summary>
    public static string Printable(string text, int maxLength)
    {
        var printable = new StringBuilder(Math.Min(text.Length, maxLength) + 1);
        for (var i = 0; i < text.Length;)
        {
            var decoded = Rune.DecodeFromUtf16(text.AsSpan(i), out var rune, out var length) == OperationStatus.Done;
            var piece = !decoded ? string.Create(CultureInfo.InvariantCulture, $"\\u{(int)text[i]:X4}")
                : Rune.GetUnicodeCategory(rune) is UnicodeCategory.Control or UnicodeCategory.Format or UnicodeCategory.LineSeparator or UnicodeCategory.ParagraphSeparator
                    ? (rune.IsBmp ? string.Create(CultureInfo.InvariantCulture, $"\\u{rune.Value:X4}") : string.Create(CultureInfo.InvariantCulture, $"\\U{rune.Value:X8}"))
                : text.Substring(i, length);
            if (printable.Length + piece.Length > maxLength)
            {
                return printable.Append('…').ToString();
            }

            printable.Append(piece);
            i += decoded ? length : 1;
        }

        return printable.ToString();
    }

    private static async Task<string> ReadSnippetAsync(HttpContent content, TimeSpan timeout, CancellationToken cancellationToken)
    {
        var buffer = new byte[MaxSnippetBytes];
        var read = 0;
        string? cutShort = null;
        var budget = timeout > TimeSpan.Zero ? timeout : TimeSpan.Zero;
        using var limit = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        limit.CancelAfter(budget);
        try
        {
            await using var stream = await content.ReadAsStreamAsync(limit.Token);
            int chunk;
            while (read < buffer.Length && (chunk = await stream.ReadAsync(buffer.AsMemory(read), limit.Token)) > 0)
            {
                read += chunk;
            }
        }
        catch (Exception exception)
            when ((exception is OperationCanceledException or HttpRequestException or IOException) && !cancellationToken.IsCancellationRequested)
        {
            // A shutdown (the caller's token) is not caught: it ends the attempt as a shutdown does.
            cutShort = limit.IsCancellationRequested ? $"(body not read within {budget.TotalSeconds:0.#} s)" : "(body unreadable)";
        }

        var text = Conveyor.Storage.StoredText.Clip(TextOf(content, buffer.AsSpan(0, read)), MaxSnippetChars);

        return cutShort is null ? text
            : text.Length == 0 ? cutShort
            : $"{text}… {cutShort}";
    }

    private static string TextOf(HttpContent content, ReadOnlySpan<byte> bytes)
    {
        var encoding = Encoding.UTF8;
        if (content.Headers.ContentType?.CharSet is { Length: > 0 } charset)
        {
            try
            {
                encoding = Encoding.GetEncoding(charset.Trim('"'));
            }
            catch (Exception exception) when (exception is ArgumentException or NotSupportedException)
            {
                // An unknown charset, or one .NET knows and refuses (UTF-7: NotSupportedException, which
                // escaping would have replaced the answer's failure, a 503's transient one included, with a
                // permanent one): UTF-8 shows ASCII, which most error bodies are, as it is.
            }
        }

        return encoding.GetString(bytes);
    }

    /// <summary>
    /// The failure of a request that ran out of <see cref="HttpClient.Timeout"/> (a remote that never
    /// answered, or never answered the connect). HttpClient's exception ends in its timer's
    /// cancellation, and MassTransit takes a consumer's exception whose innermost cause is a
    /// cancellation (while the delivery's token is not cancelled) for the consumer cancelling itself:
    /// it throws a <c>ConsumerCanceledException</c> without a cause in its place, which would be
    /// dead-lettered at once. So the timeout is kept as a cause without the cancellation below it.
    /// </summary>
    public static TransientFailureException TimedOut(string message, OperationCanceledException exception) =>
        new(message, null, new TimeoutException(exception.Message));

    public static bool IsTimeout(Exception exception, CancellationToken callerToken) =>
        exception is OperationCanceledException && !callerToken.IsCancellationRequested;
}
