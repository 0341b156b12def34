using Conveyor.Tests.Infrastructure;
using Microsoft.AspNetCore.Http;
using System.Globalization;
using System.Net;
using System.Text.Json;

namespace Conveyor.Tests.Api;

/// <summary>
/// The served OpenAPI document declares, for each operation, every error status its handler (or the access
/// control and error handling in front of it) can answer, each as a problem document: a client generated
/// from the document otherwise has no type for the answer it gets. Each response that can come with a
/// <c>Retry-After</c> declares that header, and no other does: a generated client otherwise cannot read it.
/// </summary>
[Collection(ConveyorCollection.Name)]
public sealed class OpenApiResponsesTests(ConveyorFixture fixture) : IAsyncLifetime
{
    private const string ProblemJson = "application/problem+json";

    /// <summary>
    /// Answered in front of every operation that needs a caller: 401 (no key, or an unknown one), 403 (a key
    /// without the scope), 429 (an unknown key from an address locked out for too many of them), and 503 (the
    /// database unavailable, answered by the exception handler; a dashboard session is checked against it too).
    /// </summary>
    private static readonly int[] AnyCall = [401, 403, 429, 503];

    /// <summary>
    /// Each operation of the document, by method and path, with the statuses its handler answers besides
    /// <see cref="AnyCall"/>. An operation missing here fails the test.
    /// </summary>
    private static readonly Dictionary<string, int[]> Expected = new(StringComparer.Ordinal)
    {
        // 400 invalid job, 404 unknown kind, 409 submission in progress, 413, 415, 422 key or business id reused,
        // 429 rate limit or queue full, 503 broker unavailable or blocking publishers.
        ["POST /api/jobs/{kind}"] = [400, 404, 409, 413, 415, 422],
        ["POST /api/jobs/{kind}/batch"] = [400, 404, 409, 413, 415, 422],
        // 400 bad filter, limit or cursor. Every operation here answers 400 for a query parameter it does not read (ADR 0012).
        ["GET /api/jobs"] = [400],
        // 400 malformed id or waitSeconds, 404 no such job.
        ["GET /api/jobs/{jobId}"] = [400, 404],
        // 400 malformed id, 404 no such job or no record of its effect, 409 not succeeded.
        ["GET /api/jobs/{jobId}/result"] = [400, 404, 409],
        // 400 malformed id (or a session's missing anti-forgery token), 404 no such job, 409 too late or "Job busy".
        ["DELETE /api/jobs/{jobId}"] = [400, 404, 409],
        // 400 malformed id, 404 no such job, 409 not waiting or "Job busy"; its 429 and 503 also for a full queue
        // or a broker blocking publishers.
        ["POST /api/jobs/{jobId}/run-now"] = [400, 404, 409],
        // 400 invalid request, 413, 415; its 429 and 503 also for a full queue or a broker blocking publishers.
        ["POST /api/jobs/run-now"] = [400, 413, 415],
        // 400 a query parameter (it reads none), 503 broker unavailable.
        ["GET /api/error-queues"] = [400],
        // 400 limit, 404 not an error queue or none such, 409 queue busy, 503 broker unavailable or lock lost.
        ["GET /api/error-queues/{queue}/messages"] = [400, 404, 409],
        ["GET /api/error-queues/{queue}/groups"] = [400, 404, 409],
        // As a read, and 400 invalid request, 413, 415.
        ["POST /api/error-queues/{queue}/move"] = [400, 404, 409, 413, 415],
        ["POST /api/error-queues/{queue}/purge"] = [400, 404, 409, 413, 415],
        // 400 bad filter, limit, before or a parameter given twice.
        ["GET /api/operations"] = [400],
        ["GET /api/operations/{operationId}"] = [400, 404],
        ["GET /api/audit"] = [400],
    };

    /// <summary>
    /// Of <see cref="AnyCall"/>, those that can come with Retry-After on every operation: the lockout's 429
    /// (<c>ApiKeyAuthenticationHandler</c>) and the unavailable database's 503 (<c>ErrorHandling</c>).
    /// </summary>
    private static readonly int[] AnyCallWithRetryAfter = [429, 503];

    /// <summary>
    /// Each operation's statuses besides <see cref="AnyCallWithRetryAfter"/> that can come with Retry-After. An
    /// operation not named here answers none. Its 429 and 503 may carry it for reasons of its own too (a
    /// submission's rate limit, full queue or unconfirmed publish), which changes nothing here.
    /// </summary>
    private static readonly Dictionary<string, int[]> RetryAfterBesidesAnyCall = new(StringComparer.Ordinal)
    {
        // 409 "Submission in progress" (a batch's answer when that is its worst job's).
        ["POST /api/jobs/{kind}"] = [409],
        ["POST /api/jobs/{kind}/batch"] = [409],
        // 409 "Job busy" (not "Job cannot be cancelled").
        ["DELETE /api/jobs/{jobId}"] = [409],
        // 409 "Job busy" (not "Job not waiting").
        ["POST /api/jobs/{jobId}/run-now"] = [409],
        // 409 "Queue busy" (another inspection or operation holds the queue).
        ["GET /api/error-queues/{queue}/messages"] = [409],
        ["GET /api/error-queues/{queue}/groups"] = [409],
        ["POST /api/error-queues/{queue}/move"] = [409],
        ["POST /api/error-queues/{queue}/purge"] = [409],
    };

    private RunningApp _api = null!;

    public async Task InitializeAsync() => _api = await fixture.StartApiAsync();

    public async Task DisposeAsync() => await _api.DisposeAsync();

    [Fact]
    public async Task Every_operation_declares_each_problem_it_can_answer()
    {
        var operations = await OperationsAsync(_api);
        Assert.True(operations.Keys.Order(StringComparer.Ordinal).SequenceEqual(Expected.Keys.Order(StringComparer.Ordinal)),
            $"Described: {string.Join(", ", operations.Keys.Order(StringComparer.Ordinal))}; expected: {string.Join(", ", Expected.Keys.Order(StringComparer.Ordinal))}");

        var missing = new List<string>();
        foreach (var (name, statuses) in Expected)
        {
            var responses = operations[name].GetProperty("responses");
            foreach (var status in AnyCall.Concat(statuses).Distinct().Order())
            {
                if (!responses.TryGetProperty(status.ToString(CultureInfo.InvariantCulture), out var response))
                {
                    missing.Add($"{name}: {status} not declared");
                }
                else if (!response.TryGetProperty("content", out var content) || !content.TryGetProperty(ProblemJson, out _))
                {
                    missing.Add($"{name}: {status} not declared as {ProblemJson}");
                }
            }
        }

        Assert.True(missing.Count == 0, string.Join(Environment.NewLine, missing));
    }

    [Fact]
    public async Task Every_response_that_can_carry_Retry_After_declares_it_and_no_other_does()
    {
        Assert.Empty(RetryAfterBesidesAnyCall.Keys.Except(Expected.Keys));
        var operations = await OperationsAsync(_api);

        var wrong = new List<string>();
        foreach (var (name, operation) in operations)
        {
            var carrying = AnyCallWithRetryAfter.Concat(RetryAfterBesidesAnyCall.GetValueOrDefault(name, [])).ToHashSet();
            var responses = operation.GetProperty("responses");
            foreach (var status in carrying.Where(s => !responses.TryGetProperty(s.ToString(CultureInfo.InvariantCulture), out _)))
            {
                wrong.Add($"{name}: {status} not declared at all");
            }

            foreach (var response in responses.EnumerateObject())
            {
                var header = RetryAfterHeaderOf(response.Value);
                var expected = int.TryParse(response.Name, NumberStyles.None, CultureInfo.InvariantCulture, out var status) && carrying.Contains(status);
                if (expected && header is null)
                {
                    wrong.Add($"{name}: {response.Name} does not declare Retry-After");
                }
                else if (!expected && header is not null)
                {
                    wrong.Add($"{name}: {response.Name} declares Retry-After, which it is never answered with");
                }
                else if (header is { } declared && HeaderProblem(declared) is { } problem)
                {
                    wrong.Add($"{name}: {response.Name}'s Retry-After {problem}");
                }
            }
        }

        Assert.True(wrong.Count == 0, string.Join(Environment.NewLine, wrong));
    }

    [Fact]
    public async Task A_rate_limited_submission_carries_the_Retry_After_its_declared_429_describes()
    {
        await using var api = await fixture.StartApiAsync(new Dictionary<string, string?>
        {
            ["RateLimiting:PermitsPerSecond"] = "1",
            ["RateLimiting:Burst"] = "1",
        });
        var operations = await OperationsAsync(api);
        var declared = RetryAfterHeaderOf(operations["POST /api/jobs/{kind}"].GetProperty("responses").GetProperty("429"));
        Assert.True(declared is not null, "POST /api/jobs/{kind}: 429 declares no Retry-After");
        Assert.Null(HeaderProblem(declared.Value));
        var minimum = declared.Value.GetProperty("schema").GetProperty("minimum").GetInt32();

        // A submission of an unknown kind takes its permit (and writes nothing): sent again until one finds
        // the bucket empty, which the second does unless the bucket refilled (once a second) in between.
        HttpResponseMessage? limited = null;
        for (var sent = 0; sent < 20 && limited is null; sent++)
        {
            var response = await api.Client.PostJobAsync("no-such-kind", "{}");
            if (response.StatusCode == HttpStatusCode.TooManyRequests)
            {
                limited = response;
                continue;
            }

            using (response)
            {
                await response.AssertProblemAsync(StatusCodes.Status404NotFound);
            }
        }

        Assert.True(limited is not null, "20 submissions in a row, with a burst of 1 and 1 a second, were never refused with 429");
        using (limited)
        {
            await limited.AssertProblemAsync(StatusCodes.Status429TooManyRequests);
            var value = Assert.Single(limited.Headers.GetValues("Retry-After"));
            // As declared: whole seconds, never an HTTP date, at least the declared minimum.
            Assert.True(int.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out var seconds) && seconds >= minimum,
                $"Retry-After: {value}; declared as an integer of at least {minimum}");
        }
    }

    /// <summary>
    /// The parameters a 400 for an unknown query parameter lists are read from each handler (<c>KnownQueryParameters</c>);
    /// they must be the query parameters the document declares, which ASP.NET reads from the same handler as it binds
    /// them. A read that declares some refuses any other, naming it and listing them; one that declares none refuses any.
    /// </summary>
    [Fact]
    public async Task Each_read_refuses_a_query_parameter_it_does_not_declare_listing_those_it_does()
    {
        const string Unknown = "no-such-parameter";
        const string Listing = "the parameters are: ";
        var wrong = new List<string>();
        foreach (var (name, operation) in (await OperationsAsync(_api)).Where(o => o.Key.StartsWith("GET ", StringComparison.Ordinal)))
        {
            var declared = operation.TryGetProperty("parameters", out var parameters)
                ? parameters.EnumerateArray().Where(p => p.GetProperty("in").GetString() == "query").Select(p => p.GetProperty("name").GetString()!).ToHashSet()
                : [];
            var path = name["GET ".Length..]
                .Replace("{jobId}", Guid.NewGuid().ToString(), StringComparison.Ordinal)
                .Replace("{operationId}", Guid.NewGuid().ToString(), StringComparison.Ordinal)
                .Replace("{queue}", "charge-payment_error", StringComparison.Ordinal);
            using var response = await _api.Client.GetAsync(new Uri($"{path}?{Unknown}=1", UriKind.Relative));
            var text = await response.Content.ReadAsStringAsync();
            if (declared.Count == 0)
            {
                if (response.StatusCode != HttpStatusCode.BadRequest || !text.Contains("it takes none in its query string", StringComparison.Ordinal))
                {
                    wrong.Add($"{name} declares no query parameter, yet answered {(int)response.StatusCode}: {text}");
                }

                continue;
            }

            var errors = response.StatusCode == HttpStatusCode.BadRequest ? (await response.ReadErrorFieldsAsync()) : new HashSet<string>();
            var listed = text.Contains(Listing, StringComparison.Ordinal)
                ? text[(text.IndexOf(Listing, StringComparison.Ordinal) + Listing.Length)..].Split('.')[0].Split(", ").ToHashSet()
                : [];
            if (!errors.SetEquals([Unknown]) || !listed.SetEquals(declared))
            {
                wrong.Add($"{name} declares {string.Join(", ", declared)}; answered {(int)response.StatusCode} {text}");
            }
        }

        Assert.True(wrong.Count == 0, string.Join(Environment.NewLine, wrong));
    }

    /// <summary>
    /// A report's <c>totalMinor</c> can pass 2^53 (and 64 bits): the document must not call it a double, which a client
    /// generated from it reads it as, dropping digits the Api wrote. It was declared <c>format: double</c>, ASP.NET's
    /// default for a decimal.
    /// </summary>
    [Fact]
    public async Task A_reports_total_is_declared_an_exact_decimal_not_a_double()
    {
        using var document = JsonDocument.Parse(await _api.Client.GetStringAsync(new Uri("/openapi/v1.json", UriKind.Relative)));
        var total = document.RootElement.GetProperty("components").GetProperty("schemas")
            .GetProperty("ReportTotal").GetProperty("properties").GetProperty("totalMinor");

        Assert.Equal("decimal", total.GetProperty("format").GetString());
    }

    /// <summary>
    /// The operations that read a JSON body declare it, though their handlers, not routing, refuse another media
    /// type (415 with a detail, after the permit and the kind's 404).
    /// </summary>
    [Theory]
    [InlineData("POST /api/jobs/{kind}")]
    [InlineData("POST /api/jobs/{kind}/batch")]
    [InlineData("POST /api/jobs/run-now")]
    public async Task An_operation_that_reads_json_declares_its_request_body(string operation)
    {
        var body = (await OperationsAsync(_api))[operation].GetProperty("requestBody");

        Assert.True(body.GetProperty("required").GetBoolean());
        Assert.Equal(["application/json"], body.GetProperty("content").EnumerateObject().Select(c => c.Name));
    }

    /// <summary>Each operation of the served document, by method and path.</summary>
    private static async Task<Dictionary<string, JsonElement>> OperationsAsync(RunningApp api)
    {
        using var document = JsonDocument.Parse(await api.Client.GetStringAsync(new Uri("/openapi/v1.json", UriKind.Relative)));
        var operations = new Dictionary<string, JsonElement>(StringComparer.Ordinal);
        foreach (var path in document.RootElement.GetProperty("paths").EnumerateObject())
        {
            foreach (var operation in path.Value.EnumerateObject().Where(o => o.Name != "parameters"))
            {
                operations[$"{operation.Name.ToUpperInvariant()} {path.Name}"] = operation.Value.Clone();
            }
        }

        return operations;
    }

    /// <summary>The response's Retry-After header (header names are case-insensitive); null when it declares none.</summary>
    private static JsonElement? RetryAfterHeaderOf(JsonElement response) =>
        response.TryGetProperty("headers", out var headers)
            ? headers.EnumerateObject().Where(h => h.Name.Equals("Retry-After", StringComparison.OrdinalIgnoreCase))
                .Select(h => (JsonElement?)h.Value).FirstOrDefault()
            : null;

    /// <summary>
    /// What is wrong with a declared Retry-After, null when nothing: it must be an integer of seconds (at least
    /// 1, as every answer sends), described, and not required, since not every answer of its status carries it.
    /// </summary>
    private static string? HeaderProblem(JsonElement header)
    {
        if (!header.TryGetProperty("description", out var description) || string.IsNullOrWhiteSpace(description.GetString()))
        {
            return "has no description";
        }

        if (header.TryGetProperty("required", out var required) && required.ValueKind == JsonValueKind.True)
        {
            return "is required, yet not every answer of this status carries it";
        }

        return header.TryGetProperty("schema", out var schema)
            && schema.TryGetProperty("type", out var type) && type.ValueKind == JsonValueKind.String && type.GetString() == "integer"
            && schema.TryGetProperty("minimum", out var minimum) && minimum.TryGetInt32(out var least) && least == 1
                ? null
                : $"is not declared as an integer of at least 1: {header.GetRawText()}";
    }
}
