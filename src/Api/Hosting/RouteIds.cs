using Microsoft.AspNetCore.Http.HttpResults;

namespace Conveyor.Api.Hosting;

/// <summary>
/// Ids in a route (<c>/api/jobs/{jobId}</c>): a malformed one is bad input, answered with a 400 that
/// names the field, not a 404 as if a well-formed id had found nothing.
/// </summary>
internal static class RouteIds
{
    public static bool TryParse(string text, string field, out Guid id, out ValidationProblem invalid)
    {
        if (Guid.TryParse(text, out id))
        {
            invalid = null!;
            return true;
        }

        invalid = TypedResults.ValidationProblem(new Dictionary<string, string[]>(StringComparer.Ordinal)
        {
            [field] = ["Must be a UUID, such as 0192f1c4-6f3a-7c6e-9b1d-2a4e5f607182."],
        });
        return false;
    }
}
