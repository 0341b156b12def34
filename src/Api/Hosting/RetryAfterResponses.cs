using System.Globalization;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.AspNetCore.OpenApi;
using Microsoft.Net.Http.Headers;
using Microsoft.OpenApi;

namespace Conveyor.Api.Hosting;

/// <summary>
/// Problems that may come with a <c>Retry-After</c> header, the header on an answer (<see cref="Set"/>, the one place
/// it is written), and the header in the OpenAPI document. An endpoint
/// declares such a problem with <see cref="ProducesProblemWithRetryAfter"/>; the document's operation transformer
/// (<see cref="DeclareRetryAfterHeaders"/>) then declares the header on that response of that operation, and on
/// no other, so a client generated from the document can read it where the Api sends it.
/// </summary>
internal static class RetryAfterResponses
{
    /// <summary>
    /// Declares a problem of <paramref name="statusCode"/> whose answer may carry <c>Retry-After</c>: not
    /// necessarily every answer of that status does (a job's 409 "Job cannot be cancelled" does not, say).
    /// </summary>
    public static TBuilder ProducesProblemWithRetryAfter<TBuilder>(this TBuilder builder, int statusCode)
        where TBuilder : IEndpointConventionBuilder => builder
        .ProducesProblem(statusCode)
        .WithMetadata(new RetryAfterMetadata(statusCode));

    /// <summary>
    /// <paramref name="problem"/>, its answer carrying <c>Retry-After</c> of <paramref name="seconds"/>: a handler's
    /// problem that says "retry" says when.
    /// </summary>
    public static ProblemHttpResult RetryLater(HttpContext http, int seconds, ProblemHttpResult problem)
    {
        Set(http.Response, seconds);
        return problem;
    }

    /// <summary>
    /// The 429 of a client over its allowance (<see cref="Backpressure.ClientBuckets"/>): <c>Retry-After</c> is
    /// <paramref name="wait"/> in whole seconds, and the detail says the client <paramref name="does"/> faster than it may.
    /// </summary>
    public static ProblemHttpResult TooManyRequests(HttpContext http, TimeSpan wait, string does)
    {
        var seconds = SecondsOf(wait);
        return RetryLater(http, seconds, TypedResults.Problem(statusCode: StatusCodes.Status429TooManyRequests, title: "Too many requests",
            detail: $"This client {does} faster than it may. Retry after {seconds} s."));
    }

    /// <summary>
    /// Sets <c>Retry-After</c> on <paramref name="response"/>: <paramref name="seconds"/> as a whole number, at least 1
    /// (see <see cref="Header"/>). Every answer of the Api that carries the header has it written here.
    /// </summary>
    public static void Set(HttpResponse response, int seconds) =>
        response.Headers.RetryAfter = Math.Max(1, seconds).ToString(CultureInfo.InvariantCulture);

    /// <summary><paramref name="wait"/> in the whole seconds <c>Retry-After</c> is given in: rounded up, at least 1.</summary>
    public static int SecondsOf(TimeSpan wait) => Math.Max(1, (int)Math.Ceiling(wait.TotalSeconds));

    /// <summary>Adds the header to each response an endpoint declared with <see cref="ProducesProblemWithRetryAfter"/>.</summary>
    public static OpenApiOptions DeclareRetryAfterHeaders(this OpenApiOptions options) =>
        options.AddOperationTransformer((operation, context, _) =>
        {
            var statuses = context.Description.ActionDescriptor.EndpointMetadata
                .OfType<RetryAfterMetadata>()
                .Select(metadata => metadata.StatusCode.ToString(CultureInfo.InvariantCulture));
            foreach (var status in statuses)
            {
                if (operation.Responses?.GetValueOrDefault(status) is OpenApiResponse response)
                {
                    response.Headers ??= new Dictionary<string, IOpenApiHeader>(StringComparer.OrdinalIgnoreCase);
                    response.Headers[HeaderNames.RetryAfter] = Header();
                }
            }

            return Task.CompletedTask;
        });

    // Every Retry-After the Api sends is a whole number of seconds, at least 1; never an HTTP date.
    private static OpenApiHeader Header() => new()
    {
        Description = "Seconds to wait before sending the request again: a whole number, at least 1, never an HTTP date. "
            + "Not every answer of this status carries it; one that does asks the client to wait that long and retry.",
        Schema = new OpenApiSchema { Type = JsonSchemaType.Integer, Format = "int32", Minimum = "1" },
    };

    /// <summary>Endpoint metadata: a problem of this status may carry <c>Retry-After</c>.</summary>
    private sealed record RetryAfterMetadata(int StatusCode);
}
