using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using System.Text.Json;

namespace Conveyor.Cli;

/// <summary>Talks to the Conveyor Api; every error answer becomes a <see cref="CliFailureException"/> with the matching exit code.</summary>
public sealed class ConveyorClient : IDisposable
{
    /// <summary>
    /// The largest answer read (64 MiB): the Api's largest pages (500 messages with their stack traces and
    /// body previews) are a small part of it. A larger one is not a Conveyor Api's and is not read into memory.
    /// </summary>
    public const int MaxAnswerBytes = 64 * 1024 * 1024;

    private readonly HttpClient _http;

    public ConveyorClient(Uri baseAddress, string apiKey, HttpMessageHandler? handler = null)
    {
        // The Api never redirects: following one would send the key's requests (and a move's body) to
        // whatever host the answer names, and print that host's answer as the Api's.
        _http = handler is null
            ? new HttpClient(new SocketsHttpHandler { AllowAutoRedirect = false })
            : new HttpClient(handler, disposeHandler: false);
        _http.BaseAddress = baseAddress;
        _http.Timeout = TimeSpan.FromSeconds(100);
        _http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", apiKey);
        _http.DefaultRequestHeaders.Accept.Add(new MediaTypeWithQualityHeaderValue("application/json"));
    }

    /// <summary>How long a read refused with 429, 502, 503 or 504 is tried again, from its first refusal (<see cref="CliContext.PollFailureBudget"/>).</summary>
    public TimeSpan ReadRetryBudget { get; init; } = TimeSpan.FromMinutes(2);

    /// <summary>The first pause before a refused read without a Retry-After is tried again, and the shortest of any.</summary>
    public TimeSpan ReadRetryPause { get; init; } = TimeSpan.FromMilliseconds(500);

    /// <summary>Told, as one line of text, each time a refused read is about to be tried again.</summary>
    public Action<string>? Retrying { get; init; }

    /// <summary>
    /// A read. An answer that says "try later" asks to come back: a 429 (a rate limit of the Api or of a gateway in front
    /// of it, not a key lockout), or a 502, 503 or 504 (a gateway that cannot reach the Api, or the Api that cannot reach its
    /// broker or database). A GET changes nothing, so it is read again after the answer's Retry-After, or after a pause that
    /// doubles, for <see cref="ReadRetryBudget"/>, as an operation's progress is; one still refused then, or asking for a
    /// longer wait than is left, ends with <see cref="ExitCodes.Unreachable"/> (try later). An Api that cannot be reached at
    /// all is not tried again: a mistyped address would otherwise keep the user waiting two minutes to hear of it.
    /// </summary>
    /// <param name="describeField">Rewrites a field name of a refused read's errors, such as the query parameter <c>cursor</c> as the option <c>--after</c>.</param>
    public Task<JsonElement> GetAsync(string path, CancellationToken cancellationToken, Func<string, string>? describeField = null) =>
        RetriedAsReads(
            $"read {path}",
            (wait, tried) => "The Api, or a gateway in front of it, is refusing reads for now (the next try would be in "
                + $"{wait.TotalSeconds:0.#} s; tried for {tried.TotalSeconds:0} s of at most {ReadRetryBudget.TotalSeconds:0}): try again later.",
            describeField,
            alsoTryAgain: null).ReadAsync(token => GetAnswerAsync(path, token), cancellationToken);

    /// <summary>
    /// A request that the Api makes idempotent (a job cancelled twice is answered as cancelled, a job made
    /// due now twice is due now): tried again as a read is (<see cref="GetAsync"/>), and also after an answer
    /// <paramref name="alsoTryAgain"/> picks, for the same budget.
    /// </summary>
    /// <param name="what">What the request does, for the line that says it is tried again ("cancel job …").</param>
    /// <param name="json">The body, sent as it is; null for none.</param>
    /// <param name="triedAgain">Told each "try later" answer that is about to be tried again (such as a gateway's 504, which the Api may have acted on).</param>
    public Task<JsonElement> SendIdempotentAsync(
        HttpMethod method, string path, string what, Func<Answer, bool> alsoTryAgain, CancellationToken cancellationToken, string? json = null,
        Action<Answer>? triedAgain = null) =>
        RetriedAsReads(
            what,
            (wait, tried) => $"Still refused after {tried.TotalSeconds:0} s of at most {ReadRetryBudget.TotalSeconds:0} "
                + $"(the next try would be in {wait.TotalSeconds:0.#} s): try again later.",
            describeField: null,
            alsoTryAgain,
            mayPass: answer =>
            {
                if (answer is { } refused)
                {
                    triedAgain?.Invoke(refused);
                }

                return answer is not null;
            }).ReadAsync(token => AnswerAsync(new HttpRequestMessage(method, Relative(path))
            {
                Content = json is null ? null : new StringContent(json, System.Text.Encoding.UTF8, "application/json"),
            }, token), cancellationToken);

    /// <summary>
    /// A request that does its work again each time the Api acts on it (<c>run-now --kind</c> makes up to its limit more
    /// jobs due now): tried again as a read is only after an answer that says the Api did nothing (a 429, a 503), never
    /// after a gateway's 502 or 504, which may follow a request the Api took (the gateway stopped waiting, or the answer
    /// broke off), nor after no answer. Such a failure ends at once with <see cref="CliFailureException.RequestSent"/>
    /// set when the request had gone out.
    /// </summary>
    /// <param name="what">What the request does, for the line that says it is tried again ("run charge-payment jobs now").</param>
    /// <param name="json">The body, sent as it is.</param>
    public async Task<JsonElement> SendUnlessTakenAsync(HttpMethod method, string path, string what, string json, CancellationToken cancellationToken)
    {
        var mayHaveBeenTaken = false;
        try
        {
            return await RetriedAsReads(
                what,
                (wait, tried) => $"Still refused after {tried.TotalSeconds:0} s of at most {ReadRetryBudget.TotalSeconds:0} "
                    + $"(the next try would be in {wait.TotalSeconds:0.#} s): try again later.",
                describeField: null,
                alsoTryAgain: null,
                mayPass: answer =>
                {
                    mayHaveBeenTaken = answer is { Status: HttpStatusCode.BadGateway or HttpStatusCode.GatewayTimeout };
                    return answer is not null && !mayHaveBeenTaken;
                }).ReadAsync(token => AnswerAsync(new HttpRequestMessage(method, Relative(path))
                {
                    Content = new WatchedContent(new StringContent(json, System.Text.Encoding.UTF8, "application/json")),
                }, token), cancellationToken);
        }
        catch (CliFailureException failure) when (mayHaveBeenTaken && failure.ExitCode == ExitCodes.Unreachable)
        {
            throw new CliFailureException(failure.ExitCode, failure.Message) { RequestSent = true };
        }
    }

    /// <summary>
    /// The retries of a request that changes nothing, or changes it once however often it is sent: after an answer that
    /// says "try later" (never after no answer: a mistyped address would keep the user waiting), for <see cref="ReadRetryBudget"/>.
    /// </summary>
    /// <param name="what">What the request does, for the line that says it is tried again ("read …", "cancel job …").</param>
    /// <param name="givingUp">The line added to the last failure, given the next wait and the time tried.</param>
    /// <param name="mayPass">Which "try later" answers are tried again; null: every one that came (none when no answer came).</param>
    private ReadRetry RetriedAsReads(
        string what, Func<TimeSpan, TimeSpan, string> givingUp, Func<string, string>? describeField, Func<Answer, bool>? alsoTryAgain,
        Func<Answer?, bool>? mayPass = null) => new()
    {
        DescribeField = describeField,
        MayPass = mayPass ?? (answer => answer is not null),
        AlsoTryAgain = alsoTryAgain,
        Waits = new RetryBudget { Budget = ReadRetryBudget, ShortestPause = ReadRetryPause },
        Retrying = (failure, wait) =>
            Retrying?.Invoke($"Could not {what} ({failure.Message.ReplaceLineEndings(" ")}); trying again in {wait.TotalSeconds:0.#} s."),
        GiveUp = (failure, wait, tried) => new CliFailureException(failure.ExitCode, $"{failure.Message}{Environment.NewLine}{givingUp(wait, tried)}"),
    };

    /// <summary>Gets <paramref name="path"/> and returns the answer whatever its status, for a caller that retries some of them; only an Api that cannot be reached throws.</summary>
    public Task<Answer> GetAnswerAsync(string path, CancellationToken cancellationToken) =>
        AnswerAsync(new HttpRequestMessage(HttpMethod.Get, Relative(path)), cancellationToken);

    /// <summary>
    /// Posts <paramref name="body"/> as JSON. A failure without an answer says, by <see cref="CliFailureException.RequestSent"/>,
    /// whether the request had gone out, so that the Api may have acted on it.
    /// </summary>
    /// <param name="describeField">Rewrites a field name of a refused request's errors, such as the body's <c>filter.faultedAfter</c> as the option <c>--faulted-after</c>.</param>
    public Task<JsonElement> PostAsync(string path, object body, CancellationToken cancellationToken, Func<string, string>? describeField = null) =>
        SendAsync(new HttpRequestMessage(HttpMethod.Post, Relative(path)) { Content = new WatchedContent(JsonContent.Create(body)) }, describeField, cancellationToken);

    private async Task<JsonElement> SendAsync(HttpRequestMessage request, Func<string, string>? describeField, CancellationToken cancellationToken)
    {
        var answer = await AnswerAsync(request, cancellationToken);
        if (answer.IsSuccess)
        {
            return answer.Body;
        }

        var failure = answer.Failure(describeField);
        // A gateway's 504 (it forwarded the request and stopped waiting for the Api) or 502 (the Api's answer broke off,
        // or the gateway could not reach the Api: it does not say which) may follow a request the Api took.
        throw answer.Status is HttpStatusCode.BadGateway or HttpStatusCode.GatewayTimeout && failure.ExitCode == ExitCodes.Unreachable
            ? new CliFailureException(failure.ExitCode, failure.Message) { RequestSent = true }
            : failure;
    }

    /// <summary>
    /// Posts <paramref name="json"/> as it is and returns the answer whatever its status, for a caller
    /// that retries some of them; only an Api that cannot be reached throws.
    /// </summary>
    public Task<Answer> PostRawAsync(string path, string json, CancellationToken cancellationToken) =>
        AnswerAsync(new HttpRequestMessage(HttpMethod.Post, Relative(path)) { Content = new StringContent(json, System.Text.Encoding.UTF8, "application/json") }, cancellationToken);

    private async Task<Answer> AnswerAsync(HttpRequestMessage request, CancellationToken cancellationToken)
    {
        using (request)
        {
            HttpResponseMessage response;
            try
            {
                response = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancellationToken);
            }
            catch (HttpRequestException exception)
            {
                throw new CliFailureException(ExitCodes.Unreachable, $"Cannot reach the Api at {_http.BaseAddress}: {exception.Message}")
                {
                    RequestSent = request.Content is WatchedContent { Sent: true },
                };
            }
            catch (TaskCanceledException) when (!cancellationToken.IsCancellationRequested)
            {
                throw new CliFailureException(ExitCodes.Unreachable, $"The Api at {_http.BaseAddress} did not answer in time.")
                {
                    RequestSent = request.Content is WatchedContent { Sent: true },
                };
            }

            using (response)
            {
                byte[] body;
                try
                {
                    body = await ReadBodyAsync(response.Content, cancellationToken);
                }
                catch (CliFailureException broken) when (broken.ExitCode == ExitCodes.Unreachable)
                {
                    // Its status line came: the request had gone out, whatever its body would have said.
                    throw new CliFailureException(broken.ExitCode, broken.Message) { RequestSent = true };
                }

                return new Answer(
                    response.StatusCode, Parse(body), RetryAfter(response), response.Headers.Location, response.Content.Headers.ContentType?.MediaType);
            }
        }
    }

    /// <summary>
    /// The wait an answer asks for, in either form HTTP allows: seconds, as the Api sends it, or a date, as a gateway or
    /// load balancer in front of it may. A date is counted from the answer's own <c>Date</c>, so that the two clocks need
    /// not agree; without one, from this machine's. Null when the answer asks for none.
    /// </summary>
    private static TimeSpan? RetryAfter(HttpResponseMessage response) => response.Headers.RetryAfter switch
    {
        { Delta: { } delta } => delta,
        { Date: { } date } => TimeSpan.FromTicks(Math.Max(0, (date - (response.Headers.Date ?? DateTimeOffset.UtcNow)).Ticks)),
        _ => null,
    };

    /// <summary>The answer's bytes, at most <see cref="MaxAnswerBytes"/>, read within the client's timeout.</summary>
    private async Task<byte[]> ReadBodyAsync(HttpContent content, CancellationToken cancellationToken)
    {
        if (content.Headers.ContentLength > MaxAnswerBytes)
        {
            throw TooLarge();
        }

        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        timeout.CancelAfter(_http.Timeout);
        try
        {
            await using var stream = await content.ReadAsStreamAsync(timeout.Token);
            using var body = new MemoryStream();
            var buffer = new byte[81920];
            int read;
            while ((read = await stream.ReadAsync(buffer, timeout.Token)) > 0)
            {
                if (body.Length + read > MaxAnswerBytes)
                {
                    throw TooLarge();
                }

                body.Write(buffer, 0, read);
            }

            return body.ToArray();
        }
        catch (Exception exception) when (exception is IOException or HttpRequestException)
        {
            throw new CliFailureException(ExitCodes.Unreachable, $"The Api at {_http.BaseAddress} broke off its answer: {exception.Message}");
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            throw new CliFailureException(ExitCodes.Unreachable, $"The Api at {_http.BaseAddress} did not answer in time.");
        }
    }

    private static CliFailureException TooLarge() =>
        Answers.Unexpected($"an answer larger than {MaxAnswerBytes / (1024 * 1024)} MiB");

    /// <summary>An answer of the Api: its status, its JSON (or its text as a JSON string), its Retry-After, its Location and its media type.</summary>
    public readonly record struct Answer(HttpStatusCode Status, JsonElement Body, TimeSpan? RetryAfter, Uri? Location = null, string? MediaType = null)
    {
        public bool IsSuccess => (int)Status is >= 200 and <= 299;

        /// <summary>
        /// The failure this answer is, with the matching exit code and the problem's words. The Api answers every
        /// error with a problem document (401 and 403 included, and 404 for a path it does not know), so an error
        /// without one comes from another server at that address and its status says nothing of the Api: a web
        /// server's HTML 404 is no missing queue. A 502, 503 or 504 without one is a gateway in front of the Api
        /// saying that it cannot reach it, a 429 without one a gateway's rate limit.
        /// </summary>
        /// <param name="describeField">Rewrites a field name of a 400's errors, such as a batch's <c>jobs[3]</c>.</param>
        public CliFailureException Failure(Func<string, string>? describeField = null) =>
            IsRedirect(Status)
                ? Answers.Unexpected(
                    $"a redirect ({(int)Status}) to {Location?.OriginalString ?? "(no Location)"}, which is not followed; "
                    + "if the Api has moved, use its new address")
                : !IsProblem && ExitCodeFor(Status) != ExitCodes.Unreachable
                    ? Answers.Unexpected($"{(int)Status} with {(MediaType is null ? "no body type" : $"a {MediaType} body")}, not the problem document the Api answers errors with")
                    : new(IsKeyLockout ? ExitCodes.Auth : ExitCodeFor(Status), Describe(Status, Body, describeField ?? (name => name)));

        /// <summary>
        /// The Api's 429 for an unknown key from an address locked out for sending too many: the key is wrong,
        /// and sending it again after the wait would only be refused again.
        /// </summary>
        public bool IsKeyLockout =>
            Status == HttpStatusCode.TooManyRequests && IsProblem && Text(Body, "type") == KeyLockoutProblemType;

        /// <summary>Whether the answer is a problem document, as the Api answers every error.</summary>
        public bool IsProblem =>
            string.Equals(MediaType, ProblemMediaType, StringComparison.OrdinalIgnoreCase) && Body.ValueKind == JsonValueKind.Object;
    }

    /// <summary>The problem type of the Api's lockout 429 (<c>ApiKeyAuthenticationHandler.LockoutProblemType</c>).</summary>
    public const string KeyLockoutProblemType = "urn:conveyor:problem:unknown-key-lockout";

    private const string ProblemMediaType = "application/problem+json";

    private static bool IsRedirect(HttpStatusCode status) => (int)status is >= 300 and <= 399;

    public static int ExitCodeFor(HttpStatusCode status) => status switch
    {
        _ when IsRedirect(status) => ExitCodes.UnexpectedAnswer,
        HttpStatusCode.Unauthorized or HttpStatusCode.Forbidden => ExitCodes.Auth,
        HttpStatusCode.NotFound or HttpStatusCode.Conflict => ExitCodes.NotFoundOrConflict,
        // Try later: a gateway that cannot reach the Api, or a rate limit (of the Api or of a gateway) still refusing.
        HttpStatusCode.BadGateway or HttpStatusCode.ServiceUnavailable or HttpStatusCode.GatewayTimeout or HttpStatusCode.TooManyRequests
            => ExitCodes.Unreachable,
        >= HttpStatusCode.InternalServerError => ExitCodes.OperationFailed,
        _ => ExitCodes.Usage,
    };

    /// <summary>The problem document's title, detail and field errors, as one readable message.</summary>
    private static string Describe(HttpStatusCode status, JsonElement problem, Func<string, string> describeField)
    {
        var lines = new List<string> { $"{(int)status} {Text(problem, "title") ?? status.ToString()}" };
        if (Text(problem, "detail") is { } detail)
        {
            lines.Add(detail);
        }

        if (problem.ValueKind == JsonValueKind.Object && problem.TryGetProperty("errors", out var errors) && errors.ValueKind == JsonValueKind.Object)
        {
            foreach (var field in errors.EnumerateObject())
            {
                // A Conveyor problem lists strings per field; show whatever another server sent as it is.
                var messages = field.Value.ValueKind == JsonValueKind.Array ? [.. field.Value.EnumerateArray()] : new[] { field.Value };
                foreach (var message in messages)
                {
                    lines.Add($"  {describeField(field.Name)}: {(message.ValueKind == JsonValueKind.String ? message.GetString() : message.GetRawText())}");
                }
            }
        }

        if (status == HttpStatusCode.Unauthorized || Text(problem, "type") == KeyLockoutProblemType)
        {
            lines.Add($"Check {CliContext.ApiKeyVariable}.");
        }

        return string.Join(Environment.NewLine, lines);
    }

    private static JsonElement Parse(byte[] body)
    {
        var text = System.Text.Encoding.UTF8.GetString(body).TrimStart('\uFEFF');
        if (string.IsNullOrWhiteSpace(text))
        {
            return default;
        }

        try
        {
            return JsonSerializer.Deserialize<JsonElement>(text);
        }
        catch (JsonException)
        {
            return JsonSerializer.SerializeToElement(text);
        }
    }

    public static string? Text(JsonElement json, string name) =>
        json.ValueKind == JsonValueKind.Object && json.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.String
            ? value.GetString()
            : null;

    private static Uri Relative(string path) => new(path, UriKind.Relative);

    /// <summary>
    /// A request's body that notes when it begins to be written: the connection was made and the request is going out,
    /// so the Api may act on it even if no answer comes. A refused connection, an unknown name or a failed TLS handshake
    /// never gets that far.
    /// </summary>
    private sealed class WatchedContent : HttpContent
    {
        private readonly HttpContent _inner;

        public WatchedContent(HttpContent inner)
        {
            _inner = inner;
            foreach (var header in inner.Headers)
            {
                Headers.TryAddWithoutValidation(header.Key, header.Value);
            }
        }

        public bool Sent { get; private set; }

        protected override Task SerializeToStreamAsync(Stream stream, TransportContext? context) =>
            SerializeToStreamAsync(stream, context, CancellationToken.None);

        protected override async Task SerializeToStreamAsync(Stream stream, TransportContext? context, CancellationToken cancellationToken)
        {
            Sent = true;
            await _inner.CopyToAsync(stream, context, cancellationToken);
        }

        protected override bool TryComputeLength(out long length)
        {
            length = 0;
            return false;
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                _inner.Dispose();
            }

            base.Dispose(disposing);
        }
    }

    public void Dispose() => _http.Dispose();
}
