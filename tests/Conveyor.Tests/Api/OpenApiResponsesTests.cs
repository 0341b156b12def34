using Conveyor.Tests.Infrastructure;
using System.Text.Json;

namespace Conveyor.Tests.Api;

/// <summary>
/// The served OpenAPI document declares, for each operation, every error status its handler (or the access
/// control and error handling in front of it) can answer, each as a problem document: a client generated
/// from the document otherwise has no type for the answer it gets.
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
        // 400 bad filter, limit or cursor.
        ["GET /api/jobs"] = [400],
        // 400 malformed id or waitSeconds, 404 no such job.
        ["GET /api/jobs/{jobId}"] = [400, 404],
        // 400 malformed id (or a session's missing anti-forgery token), 404 no such job, 409 too late or "Job busy".
        ["DELETE /api/jobs/{jobId}"] = [400, 404, 409],
        // 503 broker unavailable.
        ["GET /api/error-queues"] = [],
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

    private RunningApp _api = null!;

    public async Task InitializeAsync() => _api = await fixture.StartApiAsync();

    public async Task DisposeAsync() => await _api.DisposeAsync();

    [Fact]
    public async Task Every_operation_declares_each_problem_it_can_answer()
    {
        using var document = JsonDocument.Parse(await _api.Client.GetStringAsync(new Uri("/openapi/v1.json", UriKind.Relative)));
        var operations = new Dictionary<string, JsonElement>(StringComparer.Ordinal);
        foreach (var path in document.RootElement.GetProperty("paths").EnumerateObject())
        {
            foreach (var operation in path.Value.EnumerateObject().Where(o => o.Name != "parameters"))
            {
                operations[$"{operation.Name.ToUpperInvariant()} {path.Name}"] = operation.Value;
            }
        }

        Assert.True(operations.Keys.Order(StringComparer.Ordinal).SequenceEqual(Expected.Keys.Order(StringComparer.Ordinal)),
            $"Described: {string.Join(", ", operations.Keys.Order(StringComparer.Ordinal))}; expected: {string.Join(", ", Expected.Keys.Order(StringComparer.Ordinal))}");

        var missing = new List<string>();
        foreach (var (name, statuses) in Expected)
        {
            var responses = operations[name].GetProperty("responses");
            foreach (var status in AnyCall.Concat(statuses).Distinct().Order())
            {
                if (!responses.TryGetProperty(status.ToString(System.Globalization.CultureInfo.InvariantCulture), out var response))
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
}
