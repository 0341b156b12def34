namespace Conveyor.Api.Hosting;

/// <summary>
/// Refuses a query string that gives a parameter more than once (<c>?queue=a&amp;queue=b</c>, in any
/// casing) with a 400 naming it. Minimal APIs bind such a parameter to a string as its values joined
/// with commas: a free-text filter would take <c>a,b</c> as one value and answer an empty list, as if
/// nothing matched, and a strict one (<c>GET /api/jobs?status=queued&amp;status=queued</c>) refuses
/// <c>queued,queued</c> as no status, though each value was one.
/// </summary>
internal static class SingleQueryValues
{
    private static readonly string[] GivenTwice = ["Must be given once."];

    public static TBuilder RefuseRepeatedQueryParameters<TBuilder>(this TBuilder builder)
        where TBuilder : IEndpointConventionBuilder =>
        builder.AddEndpointFilter((context, next) =>
        {
            var query = context.HttpContext.Request.Query;
            if (query.Count == 0)
            {
                return next(context);
            }

            var repeated = query
                .Where(parameter => parameter.Value.Count > 1)
                .ToDictionary(parameter => parameter.Key, _ => GivenTwice, StringComparer.Ordinal);
            return repeated.Count == 0 ? next(context) : ValueTask.FromResult<object?>(TypedResults.ValidationProblem(repeated));
        });
}
