namespace Conveyor.Api.Hosting;

/// <summary>The problems the OpenAPI document declares for every endpoint that needs a caller.</summary>
internal static class CallerProblems
{
    /// <summary>
    /// What is answered in front of the handler of any endpoint that needs a caller, whatever the handler does:
    /// 401 (no key, an unknown one, or no live session), 403 (a key without the endpoint's scope), 429 (an
    /// unknown key from an address locked out for too many of them, <see cref="Security.AuthThrottle"/>; a read over its
    /// client's allowance, <see cref="Backpressure.ReadRateLimiter"/>), and 503
    /// with Retry-After (the database unavailable, answered by <see cref="ErrorHandling"/>: the handlers read it,
    /// and a dashboard session is checked against it). Declared once here, so that no endpoint leaves one out; the
    /// 429 and the 503 with their Retry-After (<see cref="RetryAfterResponses"/>).
    /// </summary>
    public static TBuilder ProducesCallerProblems<TBuilder>(this TBuilder builder)
        where TBuilder : IEndpointConventionBuilder => builder
        .ProducesProblem(StatusCodes.Status401Unauthorized)
        .ProducesProblem(StatusCodes.Status403Forbidden)
        .ProducesProblemWithRetryAfter(StatusCodes.Status429TooManyRequests)
        .ProducesProblemWithRetryAfter(StatusCodes.Status503ServiceUnavailable);
}
